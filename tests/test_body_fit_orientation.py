"""The orientation pass's pieces (models/body/orientation.py) on hand-made numbers."""
import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from marionette.models.body import fit_losses as L
from marionette.models.body import orientation as O


def yaw_matrices(degrees) -> np.ndarray:
    return Rotation.from_euler("y", np.asarray(degrees, np.float64)[:, None], degrees=True).as_matrix()


def test_best_path_prefers_continuity_where_the_data_tie_and_the_data_where_they_do_not():
    # two hypotheses per frame: a smooth turn (0, 10, 20, 30°) and its mirror (180 - yaw); frame 2
    # slightly prefers the mirror, frame 3's data are decisive for it
    smooth, mirror = [0.0, 10.0, 20.0, 30.0], [180.0, 170.0, 160.0, 150.0]
    rotations = np.stack([yaw_matrices(smooth), yaw_matrices(mirror)])
    unary = np.array([[0.0, 0.0, 1e-4, 0.0], [1.0, 1.0, 0.0, 1.0]])
    gaps = np.ones(4)
    assert O.best_path(unary, rotations, gaps, turn_weight=3e-3).tolist() == [0, 0, 0, 0]
    unary[:, 2] = (1.0, 0.0)
    assert O.best_path(unary, rotations, gaps, turn_weight=3e-3).tolist() == [0, 0, 1, 0]
    assert O.best_path(unary, rotations, gaps, turn_weight=3e-3, groups=np.array([0, 1]),
                       switch_cost=10.0).tolist() == [0, 0, 0, 0]


def test_rotation_angle_is_the_geodesic_distance():
    a, b = yaw_matrices([0.0, 30.0])
    assert math.degrees(O.rotation_angle(a, b)) == pytest.approx(30.0, abs=1e-6)


def targets(points: dict) -> L.Targets:
    conf = np.zeros((1, L.KEYPOINTS), np.float32)
    for k in points:
        conf[0, k] = points[k]
    return L.Targets(np.zeros((1, L.KEYPOINTS, 2), np.float32), conf, np.ones(1, bool))


def test_face_cues():
    shoulders = {2: 0.9, 5: 0.9}
    assert O.face_cues(targets(shoulders | {0: 0.9, 14: 0.8})).tolist() == [1.0]    # the face seen
    assert O.face_cues(targets(shoulders)).tolist() == [-1.0]                      # shoulders, no head: the back
    assert O.face_cues(targets(shoulders | {16: 0.7})).tolist() == [0.0]           # an ear only: undecided
    assert O.face_cues(targets({0: 0.1, 2: 0.9})).tolist() == [0.0]                # one shoulder, a faint nose


def test_world_facing_of_a_torso_towards_and_away_from_the_camera():
    world = np.zeros((2, 18, 4), np.float32)
    # camera axes (x right, y down, z away); facing the camera, the person's left is on the image right
    for side, x in ((5, 0.2), (11, 0.15), (2, -0.2), (8, -0.15)):
        world[0, side, :3] = (x, -0.5 if side in (2, 5) else 0.0, 0.0)
    world[1] = world[0]
    world[1, :, 0] *= -1                                                          # mirrored: seen from behind
    world[..., 3] = 1.0
    value, conf = O.world_facing(world)
    assert value[0] > 0.99 and value[1] < -0.99 and (conf == 1).all()


def test_swap_targets_exchanges_sides_and_drops_the_face():
    xy = np.arange(L.KEYPOINTS * 2, dtype=np.float32).reshape(1, L.KEYPOINTS, 2)
    conf = np.ones((1, L.KEYPOINTS), np.float32)
    original = xy.copy()
    O.swap_targets(xy, conf, None, np.array([0]))
    assert (xy[0, 2] == original[0, 5]).all() and (xy[0, 14] == original[0, 15]).all()
    assert (xy[0, L.HANDS.start] == original[0, L.HANDS.start + 21]).all()        # left hand ↔ right hand
    assert not conf[0, L.FACE_POINTS].any() and conf[0, :L.BODY].all()
