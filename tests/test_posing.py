"""A BodySequence placed in camera space lands on the synthetic renders' ground truth."""
import cv2
import numpy as np

from marionette.models.body.anny_model import sequence_from_actor
from marionette.models.body.loading import load_body_model
from marionette.models.body.posing import pose_sequence
from marionette.models.synthetic.actor import procedural_motion
from marionette.models.synthetic.clip import render_driving_clip


def test_posed_joints_project_onto_the_rendered_ground_truth():
    frames, fps, motion, seed = 6, 12.0, "walk+wave+turn", 4
    clip = render_driving_clip(frames=frames, width=384, height=384, fps=fps, motion=motion, seed=seed)
    seq = sequence_from_actor(clip.phenotype, procedural_motion(motion, frames, fps, seed), clip.camera)
    posed = pose_sequence(load_body_model("anny"), seq, chunk=4)  # chunking must not change anything
    assert posed.vertices.shape[0] == frames and posed.hands.shape == (frames, 2, 21, 3)
    xy = seq.camera.project(posed.body18)
    visible = clip.joints2d[..., 2] > 0
    visible[:, 1] = False  # the clip averages the shoulders after projection, the model before
    error = np.linalg.norm(xy - clip.joints2d[..., :2], axis=-1)[visible]
    assert error.max() < 0.05, error.max()
    # the silhouette: every projected vertex lies in the rendered person mask, up to edge pixels
    px = np.clip(seq.camera.project(posed.vertices).astype(int), 0, 383)
    for t in range(frames):
        outside = cv2.distanceTransform((~clip.masks[t]).astype(np.uint8), cv2.DIST_L2, 3)
        assert outside[px[t, :, 1], px[t, :, 0]].max() < 1.5
