"""DisPose's motion fields from body keypoints: the sparse trajectory field and the CMP dense field.

Input: a sequence of PoseFrames, frame 0 = the reference pose and frames 1..N = the driving poses
aligned onto the reference canvas (as `models.pose.align` produces them). Only the 18 OpenPose body
points of one person (index `person`, the official code takes the first) are used; a point is
visible when its score exceeds `min_score` (0.3, DWPose's threshold, by default).

Output of both fields: a float tensor [N, 2, H, W] at the generation size, channel 0 = dx (right
positive), channel 1 = dy (down positive), raw pixel displacements at that size (no normalisation).
This is what DisPose's ControlNet flow encoder takes (it prepends the zero map of the reference slot
itself); map i belongs to driving frame i+1.

- Sparse (trajectory) field, as the official `points_to_flows` + blur: map i holds, at the integer
  pixel of each keypoint in frame i, its displacement from frame i to frame i+1 (frame to frame;
  map 0 = reference -> first driving frame), then a normalised 199x199 Gaussian (sigma 20) filter with
  OpenCV's default reflect-101 border, so a single keypoint peaks at about 4e-4 of its displacement.
- Dense field, as the official `get_sparse_flow` + `get_cmp_flow`: reference -> frame t. The reference
  image is squashed (nearest) to 384x384, the reference keypoints scaled to that grid carry their
  displacement (in 384-grid pixels) with a 2-channel mask, CMP predicts a flow saturating near
  +-49.5 px, which is resized back (nearest) and scaled by W/384, H/384.

Documented deviation from the official code: a keypoint counts only when it is visible in BOTH frames
of a displacement. The official sparse field checks only the start frame, and its CMP input checks
neither, so missing points (stored at (0,0)) create vectors from or to the image corner.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import MarionetteError, NoPersonError
from ..pose.types import BODY, VISIBLE, PoseFrame
from .cmp import CMP_SIZE, CMPNet

TRAJ_KERNEL, TRAJ_SIGMA = 199, 20.0  # the official blur of the trajectory maps
ASPECT_TOLERANCE = 0.01


class BodyTracks(NamedTuple):
    """Body keypoints of one person over the frames, on the field's pixel grid."""
    xy: np.ndarray  # [F, 18, 2] float64 pixels, clamped to [0, W-1] x [0, H-1] like the official pose2track
    visible: np.ndarray  # [F, 18] bool
    width: int
    height: int

    def pairs_visible(self, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """[len(start), 18] bool: keypoints usable for the displacement start[i] -> end[i]."""
        return self.visible[start] & self.visible[end]


def body_tracks(frames: Sequence[PoseFrame], height: int | None = None, width: int | None = None, *,
                person: int = 0, min_score: float = VISIBLE) -> BodyTracks:
    """The body keypoints of `frames` scaled from their canvas to `height` x `width` (default: the
    canvas). All frames must share one canvas, whose aspect ratio must match the field's."""
    frames = list(frames)
    if len(frames) < 2:
        raise MarionetteError(
            f"A motion field needs the reference pose and at least one driving pose; got {len(frames)} frame(s).",
            "Pass the reference pose followed by the driving poses.")
    canvases = {(f.width, f.height) for f in frames}
    if len(canvases) > 1:
        raise MarionetteError(
            f"The poses are on different canvases ({', '.join(f'{w}x{h}' for w, h in sorted(canvases))}).",
            "Align the driving poses onto the reference canvas first (Pose Align).")
    cw, ch = frames[0].width, frames[0].height
    width, height = int(width or cw), int(height or ch)
    if width < 1 or height < 1:
        raise MarionetteError(f"Invalid motion field size {width}x{height}.", "Use a positive width and height.")
    if abs((width / height) / (cw / ch) - 1) > ASPECT_TOLERANCE:
        raise MarionetteError(
            f"The poses' canvas is {cw}x{ch} but the motion field is {width}x{height}, another aspect ratio.",
            "Detect the poses on the reference image at the generation size (or the same aspect ratio).")
    xy = np.zeros((len(frames), BODY, 2))
    visible = np.zeros((len(frames), BODY), bool)
    for i, frame in enumerate(frames):
        if person < frame.num_people:
            body = frame.body[person].astype(np.float64)
            xy[i] = body[:, :2] * (width / cw, height / ch)
            visible[i] = body[:, 2] > min_score
    xy[..., 0] = np.clip(xy[..., 0], 0, width - 1)
    xy[..., 1] = np.clip(xy[..., 1], 0, height - 1)
    return BodyTracks(xy, visible, width, height)


def require_keypoints(usable: np.ndarray, what: str) -> None:
    if not usable.any():
        raise NoPersonError(
            f"No body keypoint is visible in both frames of any {what}, so there is no motion to follow.",
            "Check that a person was detected in the reference and in the driving video (same person index).")


# ------------------------------------------------------------------------------------ sparse field
def gaussian_kernel_1d(size: int = TRAJ_KERNEL, sigma: float = TRAJ_SIGMA) -> np.ndarray:
    """The 1-D factor of the official normalised isotropic kernel (which is its outer product)."""
    offsets = np.arange(size, dtype=np.float64) - (size - 1) // 2
    g = np.exp(-0.5 * (offsets / sigma) ** 2)
    return g / g.sum()


def _reflect101(index: np.ndarray, n: int) -> np.ndarray:
    """OpenCV's BORDER_REFLECT_101 (mirror without repeating the edge), folded as often as needed."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    index = np.mod(index, period)
    return np.where(index >= n, period - index, index)


def blur_matrix(n: int, kernel: np.ndarray) -> np.ndarray:
    """[n, n] matrix B with (B @ signal) = the 1-D correlation of signal with `kernel` under reflect-101."""
    radius = (len(kernel) - 1) // 2
    rows = np.repeat(np.arange(n), len(kernel))
    cols = _reflect101(rows + np.tile(np.arange(-radius, radius + 1), n), n)
    matrix = np.zeros((n, n))
    np.add.at(matrix, (rows, cols), np.tile(kernel, n))
    return matrix


def _impulses(start_xy: np.ndarray, vectors: np.ndarray, usable: np.ndarray, grid: tuple[int, int]):
    """(rows, cols, vectors [K,2]) of one displacement map: each usable keypoint at its integer pixel,
    a later keypoint replacing an earlier one on the same pixel (the official write order)."""
    cells: dict[tuple[int, int], np.ndarray] = {}
    for k in np.nonzero(usable)[0]:
        row = min(max(int(start_xy[k, 1]), 0), grid[0] - 1)
        col = min(max(int(start_xy[k, 0]), 0), grid[1] - 1)
        cells[(row, col)] = vectors[k]
    if not cells:
        return np.zeros(0, int), np.zeros(0, int), np.zeros((0, 2))
    (rows, cols), values = zip(*cells.keys()), list(cells.values())
    return np.asarray(rows), np.asarray(cols), np.asarray(values)


def sparse_motion_field(frames: Sequence[PoseFrame], height: int | None = None, width: int | None = None, *,
                        kernel_size: int = TRAJ_KERNEL, sigma: float = TRAJ_SIGMA, person: int = 0,
                        min_score: float = VISIBLE, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """DisPose's trajectory field [N, 2, H, W]: frame-to-frame keypoint displacements (map i: frame i ->
    i+1) at the keypoints' pixels in frame i, Gaussian-filtered (official 199 / sigma 20)."""
    if kernel_size < 1 or kernel_size % 2 == 0 or sigma <= 0:
        raise MarionetteError(f"Invalid trajectory blur: kernel {kernel_size}, sigma {sigma}.",
                              "Use an odd kernel size and a positive sigma (official: 199 and 20).")
    tracks = body_tracks(frames, height, width, person=person, min_score=min_score)
    n = len(tracks.xy) - 1
    usable = tracks.pairs_visible(np.arange(n), np.arange(1, n + 1))
    require_keypoints(usable, "pair of consecutive poses")
    kernel = gaussian_kernel_1d(kernel_size, sigma)
    along_y, along_x = blur_matrix(tracks.height, kernel), blur_matrix(tracks.width, kernel)
    out = torch.zeros(n, 2, tracks.height, tracks.width, dtype=dtype)
    for i in range(n):
        rows, cols, vectors = _impulses(tracks.xy[i], tracks.xy[i + 1] - tracks.xy[i], usable[i],
                                        (tracks.height, tracks.width))
        if len(rows):
            # blur(sum of impulses) = sum of outer(column of B_y, column of B_x) per impulse: separable
            for c in range(2):
                out[i, c] = torch.from_numpy((along_y[:, rows] * vectors[:, c]) @ along_x[:, cols].T)
    return out


# ------------------------------------------------------------------------------------ CMP field
def cmp_sparse_input(tracks: BodyTracks, size: int = CMP_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """CMP's guidance at `size` x `size`: (flow [N, 2, S, S], mask [N, 2, S, S]). For frame t the
    reference keypoints, scaled to the square grid, carry their displacement reference -> frame t in
    grid pixels; the mask is 1 at those pixels in both channels."""
    scale = np.array([size / tracks.width, size / tracks.height])
    grid_xy = tracks.xy * scale
    n = len(grid_xy) - 1
    usable = tracks.pairs_visible(np.zeros(n, int), np.arange(1, n + 1))
    flow = torch.zeros(n, 2, size, size)
    mask = torch.zeros(n, 2, size, size)
    for t in range(n):
        rows, cols, vectors = _impulses(grid_xy[0], grid_xy[t + 1] - grid_xy[0], usable[t], (size, size))
        if len(rows):
            rows, cols = torch.from_numpy(rows), torch.from_numpy(cols)
            flow[t, :, rows, cols] = torch.from_numpy(vectors.T).float()
            mask[t, :, rows, cols] = 1.0
    return flow, mask


def reference_tensor(image) -> torch.Tensor:
    """[1, 3, H, W] float in [0, 1] from an RGB image [H, W, 3] or [1, H, W, 3] (uint8, or float in [0, 1])."""
    x = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
    if x.dim() == 4 and len(x) == 1:
        x = x[0]
    if x.dim() != 3 or x.shape[-1] != 3:
        raise MarionetteError(f"The reference image has shape {tuple(x.shape)}, not [H, W, 3].",
                              "Pass one RGB reference image.")
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    return x.permute(2, 0, 1).unsqueeze(0)


@torch.no_grad()
def dense_motion_field_cmp(cmp: CMPNet, image, frames: Sequence[PoseFrame], *, person: int = 0,
                           min_score: float = VISIBLE, batch_size: int = 4,
                           callback: Callable[[int, int], None] | None = None,
                           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """DisPose's dense field [N, 2, H, W] (reference -> frame t) from CMP, at the size of the reference
    `image` (RGB [H, W, 3], uint8 or float in [0, 1]), on the device and in the dtype of `cmp`.

    The image encoder runs once for all frames (its features do not depend on the keypoints; the
    official code reruns it per frame with the same result); frames go through the rest in batches of
    `batch_size`, calling `callback(done, total)` after each batch."""
    param = next(cmp.parameters())
    reference = reference_tensor(image)
    height, width = reference.shape[-2:]
    tracks = body_tracks(frames, height, width, person=person, min_score=min_score)
    n = len(tracks.xy) - 1
    require_keypoints(tracks.pairs_visible(np.zeros(n, int), np.arange(1, n + 1)), "reference-to-frame pair")
    square = F.interpolate(reference, size=(CMP_SIZE, CMP_SIZE), mode="nearest") * 2 - 1
    features = cmp.encode_image(square.to(param.device, param.dtype))
    guide, mask = cmp_sparse_input(tracks)
    out = torch.zeros(n, 2, height, width, dtype=dtype)
    for start in range(0, n, max(1, batch_size)):
        part = slice(start, min(n, start + max(1, batch_size)))
        sparse = torch.cat([guide[part], mask[part]], 1).to(param.device, param.dtype)
        flow = cmp.flow(features, sparse).float()
        out[part] = to_generation_size(flow, height, width).to(out.device, dtype)
        if callback is not None:
            callback(part.stop, n)
    return out


def to_generation_size(flow: torch.Tensor, height: int, width: int, size: int = CMP_SIZE) -> torch.Tensor:
    """A flow at the square CMP size [B, 2, S, S] -> [B, 2, H, W]: nearest resize, dx x W/S, dy x H/S."""
    if tuple(flow.shape[-2:]) != (height, width):
        flow = F.interpolate(flow, size=(height, width), mode="nearest")
    return flow * torch.tensor([width / size, height / size], dtype=flow.dtype, device=flow.device).view(1, 2, 1, 1)
