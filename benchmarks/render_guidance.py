"""Guidance-map frames/s (models/render) on the real Anny mesh, each map alone and all together.

    python benchmarks/render_guidance.py [--frames 24] [--width 512] [--height 768]

The actor walks in place (the synthetic clip's procedural motion), seen by a camera 3 m away; part
labels are the vertices' dominant bones folded into 0..23 (the speed does not depend on them).
Timings include the vertex normals, the upload, the GL draw, the read-back and the encoding.
It also reports the depth map's flicker in both depth ranges: between consecutive frames, the grey
change of the pixels that are body in both (mean and 99th percentile; the walk itself moves the
limbs a little, the per-frame min-max re-greys the whole body whenever the nearest or farthest
point changes).
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import harness  # noqa: E402,F401  (the `marionette` library alias)

import numpy as np  # noqa: E402


def actor_sequence(frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Anny vertices in OpenCV camera space [T, V, 3], faces, per-vertex labels."""
    from marionette.models.synthetic.actor import REFERENCE, body_model, pose_actor, procedural_motion
    posed = pose_actor(REFERENCE, procedural_motion("walk", frames, 24.0, seed=0))
    world = posed.vertices.astype(np.float64)                  # z up, the actor faces -y
    centre = world.reshape(-1, 3).mean(axis=0)
    cam = np.stack([world[..., 0] - centre[0], -(world[..., 2] - centre[2]), world[..., 1] - centre[1] + 3.0], -1)
    labels = body_model().dominant_bone % 24
    return cam, posed.faces, labels


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--height", type=int, default=768)
    args = ap.parse_args()
    from marionette.models.body.types import Camera
    from marionette.models.render import MAPS, GuidanceRenderer, skeleton_frames

    verts, faces, labels = actor_sequence(args.frames)
    camera = Camera(1.2 * args.height, args.width, args.height)
    print(f"mesh {verts.shape[1]} vertices, {len(faces)} faces; {args.frames} frames at {args.width}×{args.height}")
    with GuidanceRenderer(args.width, args.height) as renderer:
        renderer.render(verts[0], faces, camera, labels)            # shader compile, first upload
        for maps in [(m,) for m in MAPS] + [MAPS]:
            t = time.perf_counter()
            renderer.render_sequence(verts, faces, camera, labels, maps=maps)
            seconds = time.perf_counter() - t
            print(f"{'+'.join(maps):36s} {args.frames / seconds:7.1f} frames/s")
        for depth_range in ("frame", "clip"):
            depth = renderer.render_sequence(verts, faces, camera, maps=("depth",),
                                             depth_range=depth_range)["depth"][..., 0].astype(int)
            both = (depth[1:] > 0) & (depth[:-1] > 0)
            change = np.abs(np.diff(depth, axis=0))[both]
            print(f"depth range {depth_range!r}: grey change between frames on the body mean {change.mean():.1f}, "
                  f"99th percentile {np.percentile(change, 99):.0f}, max {change.max()}")
    joints = verts[:, :18]  # any 18 camera-space points: drawing cost, not anatomy
    t = time.perf_counter()
    skeleton_frames(joints, None, None, camera)
    print(f"{'skeleton (mimicmotion)':36s} {args.frames / (time.perf_counter() - t):7.1f} frames/s")


if __name__ == "__main__":
    main()
