"""Frame metrics of a generated video against ground-truth frames, as the human-animation papers report
them (L1, PSNR, SSIM), over the whole frame and inside / outside a person mask.

Conventions:
- frames are float [F, H, W, 3] in [0, 1] (ComfyUI IMAGE); the data range is 1 and L1 is in those units;
- every metric is computed per frame and the summary is the mean over frames (as the papers average);
- PSNR = 10 log10(1 / MSE), capped at PSNR_CAP dB, which identical frames get (instead of infinity);
- SSIM is Wang et al. 2004 as skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1, channel_axis=-1): an 11x11 Gaussian window (sigma 1.5,
  truncated at 3.5 sigma), K1 0.01, K2 0.03, half-sample 'reflect' borders, the map averaged over RGB and
  then over the frame without its (11 - 1) // 2 = 5 pixel border;
- masked: L1 / PSNR use the pixels where mask > 0.5 (inside) or not (outside); SSIM inside / outside is the
  mean of the same (border-cropped) SSIM map over those pixels, so the two regions split exactly the pixels
  the whole-frame SSIM averages. A frame whose region is empty counts as NaN and is left out of the mean.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.images import image_batch
from ..errors import MarionetteError

PSNR_CAP = 100.0  # dB for identical frames (MSE 0)
SSIM_SIGMA, SSIM_TRUNCATE, SSIM_K1, SSIM_K2 = 1.5, 3.5, 0.01, 0.03
REGIONS = ("all", "inside mask", "outside mask")


def _gaussian_taps(sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE) -> np.ndarray:
    radius = int(truncate * sigma + 0.5)  # scipy.ndimage's radius: 5, an 11-tap window
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (x / sigma) ** 2)
    return taps / taps.sum()


TAPS = _gaussian_taps()
WIN_SIZE = len(TAPS)


def _blur(image: np.ndarray) -> np.ndarray:
    """Separable Gaussian over the first two axes of [H, W, C]; 'symmetric' padding is scipy.ndimage's
    'reflect' (d c b a | a b c d), the border skimage uses."""
    radius = WIN_SIZE // 2
    out = image
    for axis in (0, 1):
        pad = [(0, 0)] * image.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="symmetric")
        n = out.shape[axis]
        acc = np.zeros_like(out)
        for k, weight in enumerate(TAPS):
            acc += weight * (padded[k:k + n] if axis == 0 else padded[:, k:k + n])
        out = acc
    return out


def ssim_map(generated: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The SSIM map [H, W] of one frame pair [H, W, 3] (float64, data range 1), averaged over channels."""
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
    mu_x, mu_y = _blur(generated), _blur(truth)
    var_x = _blur(generated * generated) - mu_x * mu_x
    var_y = _blur(truth * truth) - mu_y * mu_y
    cov = _blur(generated * truth) - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    denominator = (mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2)
    return (numerator / denominator).mean(axis=-1)


def _psnr(mse: float) -> float:
    return PSNR_CAP if mse <= 10 ** (-PSNR_CAP / 10) else float(10 * np.log10(1.0 / mse))


@dataclass(frozen=True)
class RegionMetrics:
    """Per-frame L1, PSNR (dB) and SSIM of one region; NaN where the region is empty in that frame."""
    l1: np.ndarray
    psnr: np.ndarray
    ssim: np.ndarray

    def means(self) -> tuple[float, float, float]:
        """Means over the frames where the region has pixels."""
        return tuple(float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
                     for v in (self.l1, self.psnr, self.ssim))


@dataclass(frozen=True)
class MetricsResult:
    """Metrics of every compared frame: `whole` frame, and `inside` / `outside` the mask (None without one).
    `first_frame` is the index of the first compared frame in the input videos (frames skipped before it)."""
    whole: RegionMetrics
    inside: RegionMetrics | None = None
    outside: RegionMetrics | None = None
    first_frame: int = 0

    @property
    def num_frames(self) -> int:
        return len(self.whole.l1)

    def regions(self) -> list[tuple[str, RegionMetrics]]:
        found = zip(REGIONS, (self.whole, self.inside, self.outside))
        return [(name, region) for name, region in found if region is not None]

    def table(self) -> str:
        """A small text table: rows all / inside mask / outside mask, columns L1, PSNR, SSIM (frame means)."""
        last = self.first_frame + self.num_frames - 1
        lines = [f"{self.num_frames} frames ({self.first_frame}..{last}), means over frames",
                 f"{'region':<13} {'L1':>8} {'PSNR dB':>8} {'SSIM':>7}"]
        for name, region in self.regions():
            l1, psnr, ssim = (("n/a" if np.isnan(v) else f"{v:.{digits}f}")
                              for v, digits in zip(region.means(), (4, 2, 4)))
            lines.append(f"{name:<13} {l1:>8} {psnr:>8} {ssim:>7}")
            empty = int(np.isnan(region.l1).sum())
            if empty:
                lines.append(f"  ({name}: {empty} frames without pixels there are left out)")
        return "\n".join(lines)


def _as_frames(images, what: str) -> np.ndarray:
    if len(images) == 0:
        raise MarionetteError(f"{what} hold no frames.", "Connect a video with at least one frame.")
    frames = image_batch(images, what, "frames as an IMAGE batch")
    return frames.detach().cpu().double().numpy()


def _as_masks(mask, frames: int, size: tuple[int, int]) -> np.ndarray:
    masks = np.asarray(mask.detach().cpu().float().numpy() if hasattr(mask, "detach") else mask, np.float64)
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3 or masks.shape[1:] != size or masks.shape[0] not in (1, frames):
        raise MarionetteError(
            f"The mask has shape {tuple(masks.shape)} but the frames are {frames} x {size[0]} x {size[1]}.",
            "Pass one mask per frame (or one mask for all frames) at the frames' size, e.g. the ground truth's "
            "person masks; resize it to the frames first if needed.")
    inside = np.broadcast_to(masks > 0.5, (frames, *size))
    if not inside.any():
        raise MarionetteError("The mask marks no person pixel (no value above 0.5) in any frame.",
                              "Connect the person mask of the ground-truth frames, or leave the mask out.")
    if inside.all():
        raise MarionetteError("The mask covers every pixel of every frame: nothing lies outside it.",
                              "Connect the person mask of the ground-truth frames, or leave the mask out.")
    return inside


def evaluate_video(generated, truth, mask=None, skip_first: int = 0) -> MetricsResult:
    """L1, PSNR and SSIM per frame of `generated` against `truth` (both [F, H, W, 3] in [0, 1]), and inside /
    outside `mask` ([F, H, W] or [1, H, W], > 0.5 = person) when given. The first `skip_first` frames are
    left out (e.g. the frame that repeats the reference)."""
    gen, gt = _as_frames(generated, "Generated frames"), _as_frames(truth, "Ground-truth frames")
    if gen.shape != gt.shape:
        raise MarionetteError(
            f"The generated video has shape {gen.shape} [frames, H, W, 3], the ground truth {gt.shape}.",
            "Compare videos of the same frame count and size: trim the longer one (e.g. Image From Batch) and "
            "resize the generated frames to the ground truth's size.")
    frames, height, width = gen.shape[:3]
    if min(height, width) < WIN_SIZE:
        raise MarionetteError(f"Frames of {height} x {width} pixels are smaller than SSIM's {WIN_SIZE}x{WIN_SIZE} "
                              "window.", f"Compare frames at least {WIN_SIZE} pixels high and wide.")
    inside = None if mask is None else _as_masks(mask, frames, (height, width))
    if not 0 <= skip_first < frames:
        raise MarionetteError(f"skip_first is {skip_first} but the videos have {frames} frames.",
                              f"Skip between 0 and {frames - 1} frames.")
    border = (WIN_SIZE - 1) // 2
    rows = {name: [] for name in REGIONS}
    for f in range(skip_first, frames):
        error = gen[f] - gt[f]
        ssim = ssim_map(gen[f], gt[f])
        regions = [("all", np.ones((height, width), bool))]
        if inside is not None:
            regions += [("inside mask", inside[f]), ("outside mask", ~inside[f])]
        for name, pixels in regions:
            cropped = pixels[border:height - border, border:width - border]
            region_ssim = ssim[border:height - border, border:width - border][cropped]
            if not pixels.any():
                rows[name].append((np.nan, np.nan, np.nan))
                continue
            values = error[pixels]
            rows[name].append((float(np.abs(values).mean()), _psnr(float((values ** 2).mean())),
                               float(region_ssim.mean()) if region_ssim.size else np.nan))

    def region(name):
        if not rows[name]:
            return None
        l1, psnr, ssim = (np.array(column, np.float64) for column in zip(*rows[name]))
        return RegionMetrics(l1, psnr, ssim)
    return MetricsResult(region("all"), region("inside mask"), region("outside mask"), first_frame=skip_first)


PLOT_COLOURS = {"all": (31, 119, 180), "inside mask": (230, 120, 20), "outside mask": (44, 160, 44)}


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    return [low + (high - low) * i / (count - 1) for i in range(count)]


def line_panel(draw, box, xs, series, label, digits, font, colours=PLOT_COLOURS, dots: bool = True):
    """One line chart in `box` (left, top, right, bottom): `series` is [(name in `colours`, values)]."""
    left, top, right, bottom = box
    values = np.concatenate([v for _, v in series])
    values = values[np.isfinite(values)]
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    margin = (high - low) * 0.08 or max(abs(high) * 0.05, 0.01)
    low, high = low - margin, high + margin
    x_low, x_high = xs[0], max(xs[-1], xs[0] + 1)

    def to_pixel(x, y):
        return (left + (x - x_low) / (x_high - x_low) * (right - left),
                bottom - (y - low) / (high - low) * (bottom - top))

    draw.rectangle(box, outline=(0, 0, 0))
    draw.text((left, top - 14), label, fill=(0, 0, 0), font=font)
    for y in _ticks(low, high):
        _, py = to_pixel(x_low, y)
        draw.line([(left - 4, py), (left, py)], fill=(0, 0, 0))
        draw.line([(left + 1, py), (right - 1, py)], fill=(228, 228, 228))
        draw.text((4, py - 6), f"{y:.{digits}f}", fill=(0, 0, 0), font=font)
    step = max(1, int(np.ceil(len(xs) / 10)))
    for x in xs[::step]:
        px, _ = to_pixel(x, low)
        draw.line([(px, bottom), (px, bottom + 4)], fill=(0, 0, 0))
        draw.text((px - 4, bottom + 5), str(x), fill=(0, 0, 0), font=font)
    for name, ys in series:
        points = [to_pixel(x, y) for x, y in zip(xs, ys) if np.isfinite(y)]
        if len(points) > 1:
            draw.line(points, fill=colours[name], width=2)
        for px, py in points if dots else ():
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colours[name])


def plot_metrics(result: MetricsResult, width: int = 640, height: int = 360) -> np.ndarray:
    """Per-frame PSNR (top) and SSIM (bottom) of every region as uint8 [height, width, 3], with axes and a
    legend, drawn with PIL."""
    from PIL import Image, ImageDraw, ImageFont
    if width < 200 or height < 160:
        raise MarionetteError(f"A plot of {width} x {height} pixels is too small to read.",
                              "Ask for at least 200 x 160 pixels.")
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw, font = ImageDraw.Draw(image), ImageFont.load_default()
    xs = list(range(result.first_frame, result.first_frame + result.num_frames))
    regions = result.regions()
    left, right, legend_top = 56, width - 12, height - 18
    panel_height = (legend_top - 34 - 3 * 22) // 2
    top_box = (left, 22, right, 22 + panel_height)
    bottom_box = (left, top_box[3] + 40, right, top_box[3] + 40 + panel_height)
    line_panel(draw, top_box, xs, [(n, r.psnr) for n, r in regions], "PSNR (dB) per frame", 1, font)
    line_panel(draw, bottom_box, xs, [(n, r.ssim) for n, r in regions], "SSIM per frame", 3, font)
    draw.text((right - draw.textlength("frame (x axis)", font=font), legend_top), "frame (x axis)",
              fill=(0, 0, 0), font=font)
    x = left
    for name, _ in regions:  # legend
        draw.line([(x, legend_top + 6), (x + 20, legend_top + 6)], fill=PLOT_COLOURS[name], width=3)
        draw.text((x + 24, legend_top), name, fill=(0, 0, 0), font=font)
        x += 40 + int(draw.textlength(name, font=font))
    return np.asarray(image, dtype=np.uint8).copy()
