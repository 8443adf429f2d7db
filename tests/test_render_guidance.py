"""Guidance maps (models/render): Champ's encodings checked against an analytic sphere, exact palette
colours, reproducible bytes, sequences, re-projected skeletons and clear errors for bad input."""
import cv2
import numpy as np
import pytest
import trimesh

from marionette.models.body.types import Camera
from marionette.models.errors import MarionetteError
from marionette.models.pose.draw import BODY_COLORS, draw_pose_openpose
from marionette.models.pose.types import PoseFrame
from marionette.models.render import MAPS, SEMANTIC_PALETTE, GuidanceRenderer, skeleton_frames
from marionette.models.render import gl as render_gl

W, H, FOCAL = 320, 240, 600.0
CENTRE, RADIUS = np.array([0.0, 0.0, 3.0]), 0.5
CAMERA = Camera(FOCAL, W, H)


@pytest.fixture(scope="module")
def sphere():
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=RADIUS)
    return np.asarray(mesh.vertices) + CENTRE, np.asarray(mesh.faces)


@pytest.fixture(scope="module")
def renderer():
    with GuidanceRenderer(W, H) as r:
        yield r


def side_labels(vertices):
    """Left third of the sphere (image left, x < -0.1) part 5, right third part 18, the middle part 12."""
    x = vertices[:, 0] - CENTRE[0]
    return np.where(x < -0.1, 5, np.where(x > 0.1, 18, 12))


def analytic_sphere(width=W, height=H, focal=FOCAL):
    """Per pixel centre: hit mask, camera z and the OpenGL-axes normal of the exact sphere."""
    u = (np.arange(width) + 0.5 - width / 2) / focal
    v = (np.arange(height) + 0.5 - height / 2) / focal
    d = np.stack(np.broadcast_arrays(u[None, :], v[:, None], np.ones((height, width))), axis=-1)
    dc, dd = d @ CENTRE, np.sum(d * d, axis=-1)
    disc = dc ** 2 - dd * (CENTRE @ CENTRE - RADIUS ** 2)
    t = (dc - np.sqrt(np.maximum(disc, 0))) / dd
    normal = (t[..., None] * d - CENTRE) / RADIUS * np.array([1.0, -1.0, -1.0])
    return disc > 0, t, normal, disc


@pytest.fixture(scope="module")
def maps(renderer, sphere):
    v, f = sphere
    return renderer.render(v, f, CAMERA, side_labels(v))


def interior(margin=0.02):
    hit, _, _, disc = analytic_sphere()
    return hit & (disc > margin * disc.max())


# ------------------------------------------------------------------------------------------- palette

def test_palette_is_champs_viridis():
    expected = cv2.applyColorMap((np.arange(24, dtype=np.uint8) * 10)[:, None], cv2.COLORMAP_VIRIDIS)[:, 0, ::-1]
    np.testing.assert_array_equal(SEMANTIC_PALETTE, expected)
    assert SEMANTIC_PALETTE.shape == (24, 3) and SEMANTIC_PALETTE.dtype == np.uint8


# --------------------------------------------------------------------------------------------- maps

def test_every_map_is_rgb_bytes_with_black_background(maps):
    assert set(maps) == set(MAPS)
    body = maps["mask"][..., 0] > 0
    assert 0.3 < body.mean() < 0.6
    for name, image in maps.items():
        assert image.shape == (H, W, 3) and image.dtype == np.uint8, name
        assert not image[~body].any(), f"{name} has non-black background pixels"


def test_mask_is_the_rendered_silhouette(maps):
    body = maps["mask"][..., 0] == 255
    assert set(np.unique(maps["mask"])) == {0, 255}
    np.testing.assert_array_equal(body, maps["normal"].any(axis=-1))
    assert np.all(body[maps["depth"][..., 0] > 0])
    hit = analytic_sphere()[0]
    assert np.mean(body != hit) < 0.01  # only silhouette pixels may differ (the icosphere is inscribed)


def test_depth_is_champs_per_frame_min_max(maps):
    depth = maps["depth"]
    assert np.array_equal(depth[..., 0], depth[..., 1]) and np.array_equal(depth[..., 0], depth[..., 2])
    assert depth[H // 2, W // 2, 0] >= 254                 # the pole facing the camera is the nearest point
    assert depth[..., 0].max() == 255
    _, z, _, _ = analytic_sphere()
    body = maps["mask"][..., 0] > 0
    lo, hi = z[body].min(), z[body].max()
    expected = np.clip(np.floor((1 - (z - lo) / (hi - lo)) * 255 + 0.5), 0, 255)
    inside = interior() & body
    err = np.abs(depth[..., 0].astype(float) - expected)[inside]
    assert err.max() <= 3, f"depth differs from the analytic sphere by up to {err.max()} levels"
    # far body pixels are darker: along the horizontal midline, brightness falls away from the centre
    row = depth[H // 2, W // 2:, 0].astype(int)
    row = row[row > 0]
    assert np.all(np.diff(row) <= 0) and row[-1] < 60


def test_normal_is_opengl_camera_space(maps):
    normal = maps["normal"].astype(int)
    assert np.all(np.abs(normal[H // 2, W // 2] - [128, 128, 255]) <= 1)
    dx = dy = 90
    top, bottom = normal[H // 2 - dy, W // 2], normal[H // 2 + dy, W // 2]
    left, right = normal[H // 2, W // 2 - dx], normal[H // 2, W // 2 + dx]
    assert top[1] > 200 and bottom[1] < 56 and abs(top[0] - 128) <= 2   # y up
    assert right[0] > 200 and left[0] < 56 and abs(right[1] - 128) <= 2  # x right
    assert min(top[2], bottom[2], left[2], right[2]) > 128               # z towards the viewer
    _, _, expected, _ = analytic_sphere()
    expected = np.clip(np.floor((expected * 0.5 + 0.5) * 255 + 0.5), 0, 255)
    inside = interior(0.05) & (maps["mask"][..., 0] > 0)
    err = np.abs(normal - expected)[inside]
    assert err.max() <= 4 and err.mean() < 1.0, (err.max(), err.mean())


def test_semantic_uses_exact_palette_colours_in_place(maps, renderer, sphere):
    sem = maps["semantic"]
    body = maps["mask"][..., 0] > 0
    colours = {tuple(c) for c in sem[body]}
    assert colours == {tuple(SEMANTIC_PALETTE[k]) for k in (5, 12, 18)}
    inside = interior(0.1)
    x = (np.arange(W) + 0.5 - W / 2) / FOCAL * 2.6  # camera-space x near the front of the sphere
    left = inside & (x[None, :] < -0.2)
    right = inside & (x[None, :] > 0.2)
    middle = inside & (np.abs(x[None, :]) < 0.03)
    assert np.all(sem[left] == SEMANTIC_PALETTE[5])
    assert np.all(sem[right] == SEMANTIC_PALETTE[18])
    assert np.all(sem[middle] == SEMANTIC_PALETTE[12])
    # random labels on every vertex: borders everywhere, still only palette colours
    v, f = sphere
    labels = np.random.default_rng(0).integers(0, 24, len(v))
    noisy = renderer.render(v, f, CAMERA, labels, maps=("semantic", "mask"))
    fg = noisy["mask"][..., 0] > 0
    palette = {tuple(c) for c in SEMANTIC_PALETTE}
    seen = {tuple(c) for c in np.unique(noisy["semantic"][fg], axis=0)}
    assert seen <= palette and len(seen) == 24


def test_dense_is_head_lit_grey(maps):
    dense = maps["dense"].astype(int)
    body = maps["mask"][..., 0] > 0
    assert np.array_equal(dense[..., 0], dense[..., 1]) and np.array_equal(dense[..., 0], dense[..., 2])
    assert dense[body, 0].min() >= 40                          # the body never merges with the background
    centre, rim = dense[H // 2, W // 2, 0], dense[H // 2, W // 2 + 95, 0]
    assert centre >= 240 and rim < centre - 60


def test_bytes_are_reproducible(maps, renderer, sphere):
    v, f = sphere
    again = renderer.render(v, f, CAMERA, side_labels(v))
    with GuidanceRenderer(W, H) as other:
        fresh = other.render(v, f, CAMERA, side_labels(v))
    for name in MAPS:
        assert again[name].tobytes() == maps[name].tobytes(), name
        assert fresh[name].tobytes() == maps[name].tobytes(), name


def test_camera_of_another_size_is_stretched(sphere, maps):
    v, f = sphere
    with GuidanceRenderer(2 * W, 2 * H) as big:
        mask = big.render(v, f, CAMERA, maps=("mask",))["mask"][..., 0] > 0
    small = cv2.resize(mask.astype(np.uint8), (W, H), interpolation=cv2.INTER_AREA) > 0
    ref = maps["mask"][..., 0] > 0
    assert np.mean(small != ref) < 0.01


# ----------------------------------------------------------------------------------------- sequence

def test_render_sequence_shapes_progress_and_frames(renderer, sphere):
    v, f = sphere
    shifts = np.array([[-0.3, 0, 0], [0, 0, 0], [0.3, 0.1, 0.5]])
    seq = v[None] + shifts[:, None]
    calls = []
    out = renderer.render_sequence(seq, f, CAMERA, side_labels(v), maps=("depth", "semantic", "mask"),
                                   on_progress=lambda done, total: calls.append((done, total)))
    assert set(out) == {"depth", "semantic", "mask"}
    assert all(a.shape == (3, H, W, 3) and a.dtype == np.uint8 for a in out.values())
    assert calls == [(1, 3), (2, 3), (3, 3)]
    single = renderer.render(seq[2], f, CAMERA, side_labels(v), maps=("depth", "semantic", "mask"))
    for name, image in single.items():
        assert out[name][2].tobytes() == image.tobytes()
    centres = [np.argwhere(out["mask"][t, ..., 0] > 0).mean(axis=0)[1] for t in range(3)]
    assert centres[0] < W / 2 - 20 < W / 2 + 20 < centres[2] or centres[0] < centres[1] < centres[2]


def test_render_sequence_cancel_propagates(renderer, sphere):
    v, f = sphere

    def cancel(done, total):
        if done == 2:
            raise InterruptedError("cancelled")

    with pytest.raises(InterruptedError):
        renderer.render_sequence(np.stack([v] * 4), f, CAMERA, None, maps=("mask",), on_progress=cancel)


# ----------------------------------------------------------------------------------------- skeleton

def skeleton_joints():
    """A standing OpenPose-18 figure 6 m in front of the camera (metres, OpenCV axes)."""
    xy = np.array([[0, -0.75], [0, -0.55], [-0.18, -0.55], [-0.25, -0.3], [-0.28, -0.05], [0.18, -0.55],
                   [0.25, -0.3], [0.28, -0.05], [-0.1, 0.0], [-0.1, 0.4], [-0.1, 0.8], [0.1, 0.0], [0.1, 0.4],
                   [0.1, 0.8], [-0.04, -0.79], [0.04, -0.79], [-0.08, -0.76], [0.08, -0.76]])
    return np.concatenate([xy, np.full((18, 1), 6.0)], axis=1)


def test_skeleton_frames_draw_joints_where_the_camera_projects_them():
    body = np.stack([skeleton_joints(), skeleton_joints() + [0.2, 0.0, 0.5]])
    hands = np.zeros((2, 2, 21, 3))
    hands[:, 0] = body[:, 7:8] + np.linspace(0, 0.1, 21)[:, None] * [0, 1, 0]
    hands[:, 1] = body[:, 4:5] + np.linspace(0, 0.1, 21)[:, None] * [0, 1, 0]
    out = skeleton_frames(body, hands, None, CAMERA, style="openpose")
    assert out.shape == (2, H, W, 3) and out.dtype == np.uint8
    for t in range(2):
        xy = CAMERA.project(body[t])
        frame = PoseFrame(W, H, np.concatenate([xy, np.ones((18, 1))], 1)[None],
                          np.concatenate([CAMERA.project(hands[t, 0]), np.ones((21, 1))], 1)[None],
                          np.concatenate([CAMERA.project(hands[t, 1]), np.ones((21, 1))], 1)[None],
                          np.zeros((1, 68, 3)))
        assert out[t].tobytes() == draw_pose_openpose(frame).tobytes()
        x, y = int(xy[1, 0]), int(xy[1, 1])                      # the neck joint's dot, in its colour
        assert tuple(out[t, y, x]) == BODY_COLORS[1]
    mimic = skeleton_frames(body, hands, None, CAMERA, style="mimicmotion", channel_order="stableanimator")
    assert mimic.shape == (2, H, W, 3) and mimic.any()


def test_skeleton_frames_drop_joints_behind_or_outside():
    joints = skeleton_joints()[None].copy()
    joints[0, 4, 2] = -1.0          # right wrist behind the camera
    joints[0, 7, 0] = 5.0           # left wrist far outside the image
    out = skeleton_frames(joints, None, None, CAMERA, style="openpose")[0]
    kept = joints[0].copy()
    xy = CAMERA.project(kept)
    score = np.ones((18, 1))
    score[[4, 7]] = 0
    frame = PoseFrame(W, H, np.concatenate([xy * score, score], 1)[None], np.zeros((1, 21, 3)),
                      np.zeros((1, 21, 3)), np.zeros((1, 68, 3)))
    assert out.tobytes() == draw_pose_openpose(frame).tobytes()


# --------------------------------------------------------------------------------------- bad input

def test_bad_input_gives_clear_errors(renderer, sphere):
    v, f = sphere
    labels = side_labels(v)
    cases = [
        (lambda: renderer.render(v, np.zeros((0, 3), int), CAMERA, labels), "faces"),
        (lambda: renderer.render(v, f, CAMERA, labels[:-5]), "part labels"),
        (lambda: renderer.render(np.where(np.arange(len(v))[:, None] == 7, np.nan, v), f, CAMERA, labels), "NaN"),
        (lambda: renderer.render(v, f + len(v), CAMERA, labels), "index"),
        (lambda: renderer.render(v, f, CAMERA, None, maps=("semantic",)), "part label"),
        (lambda: renderer.render(v, f, CAMERA, labels, maps=("albedo",)), "Unknown"),
        (lambda: renderer.render(v, f, CAMERA, labels + 30), "0..23"),
        (lambda: renderer.render(v, f, Camera(0.0, W, H), labels), "focal"),
        (lambda: renderer.render_sequence(v, f, CAMERA, labels), "[T, V, 3]"),
        (lambda: skeleton_frames(np.full((1, 18, 3), np.nan), None, None, CAMERA), "NaN"),
        (lambda: skeleton_frames(np.ones((1, 18, 3)), np.ones((1, 21, 3)), None, CAMERA), "hand"),
    ]
    for call, words in cases:
        with pytest.raises(MarionetteError) as err:
            call()
        assert words in str(err.value), (words, str(err.value))


def test_closed_renderer_says_so(sphere):
    v, f = sphere
    r = GuidanceRenderer(32, 24)
    r.close()
    r.close()
    with pytest.raises(MarionetteError, match="closed"):
        r.render(v, f, Camera(30.0, 32, 24), maps=("mask",))


def test_missing_gl_platform_names_the_fix(monkeypatch):
    pyrender = render_gl.import_pyrender()

    def no_context(*args, **kwargs):
        raise RuntimeError("eglInitialize failed")

    monkeypatch.setattr(pyrender, "OffscreenRenderer", no_context)
    monkeypatch.setattr(render_gl, "_SHARED", {})  # as in a fresh process: no context made yet
    with pytest.raises(MarionetteError) as err:
        GuidanceRenderer(64, 48)
    assert "PYOPENGL_PLATFORM=egl" in str(err.value) and "PYOPENGL_PLATFORM=osmesa" in str(err.value)


def test_clip_depth_keeps_a_still_body_grey_while_a_hand_moves_forward(renderer, sphere):
    """Champ's per-frame min-max re-greys the whole body when its nearest point changes (a hand
    coming forward); the clip-stable window follows the body's mean depth instead."""
    body, body_faces = sphere
    hand = trimesh.creation.icosphere(subdivisions=2, radius=0.1)
    frames = []
    for forward in (0.0, 0.05, 0.3):               # the hand 0, 5 and 30 cm nearer than the body's front
        centre = CENTRE + np.array([0.35, 0.0, -RADIUS - 0.1 - forward])
        frames.append(np.concatenate([body, np.asarray(hand.vertices) + centre]))
    faces = np.concatenate([body_faces, np.asarray(hand.faces) + len(body)])
    seq = np.stack(frames)
    per_frame = renderer.render_sequence(seq, faces, CAMERA, maps=("depth",))["depth"][..., 0].astype(int)
    clip = renderer.render_sequence(seq, faces, CAMERA, maps=("depth",), depth_range="clip")["depth"][..., 0]
    clip = clip.astype(int)
    torso = interior() & (np.arange(W)[None, :] < W / 2 - 20)     # the body's left half, never covered by the hand
    frame_jump = np.abs(np.diff(per_frame[:, torso], axis=0)).max(1)
    clip_jump = np.abs(np.diff(clip[:, torso], axis=0)).max(1)
    print(f"\nlargest grey change of the still body between frames: per-frame {frame_jump.tolist()}, "
          f"clip {clip_jump.tolist()}")
    assert frame_jump[1] > 35, frame_jump     # measured 43: the hand's 25 cm move re-greys the body
    assert clip_jump.max() <= 4, clip_jump    # measured 3 (the mean vertex depth follows the hand by 1.5 cm)
    assert (clip[:, torso] > 0).all() and (clip[2][per_frame[2] == 255] == clip[2].max()).all()  # nearest = whitest


def test_unknown_depth_range_is_named(renderer, sphere):
    v, f = sphere
    with pytest.raises(MarionetteError, match="depth range"):
        renderer.render_sequence(v[None], f, CAMERA, maps=("depth",), depth_range="global")
