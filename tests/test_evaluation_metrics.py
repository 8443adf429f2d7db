"""Video metrics (models/evaluation): SSIM and PSNR against skimage.metrics, L1 and the masked variants
against independent numpy computations, the error cases, the plot, and the VideoMetrics node in the host."""
import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from marionette.models.errors import MarionetteError
from marionette.models.evaluation import PSNR_CAP, evaluate_video, plot_metrics
from marionette.models.evaluation.metrics import WIN_SIZE

BORDER = (WIN_SIZE - 1) // 2


def skimage_ssim(a, b, full=False):
    return structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=1, channel_axis=-1, full=full)


def random_pair(seed, frames=3, height=37, width=53, noise=0.1):
    rng = np.random.default_rng(seed)
    truth = rng.random((frames, height, width, 3))
    return np.clip(truth + rng.normal(0, noise, truth.shape), 0, 1), truth


def structured_pair(frames=2, height=48, width=40):
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    truth = np.stack([np.stack([x, y, (np.sin(12 * x + f) * np.cos(9 * y) + 1) / 2], -1) for f in range(frames)])
    generated = truth.copy()
    generated[:, 10:30, 5:25] = 1 - generated[:, 10:30, 5:25]     # an inverted block
    generated[:, ::4] = np.roll(generated[:, ::4], 3, axis=2)      # shifted rows
    return generated, truth


def person_masks(frames, height, width):
    masks = np.zeros((frames, height, width))
    for f in range(frames):
        masks[f, 8 + f:height - 9, 12:width - 14 + f] = 0.9
    return masks


@pytest.mark.parametrize("pair", [random_pair(0), random_pair(1, noise=0.3, height=11, width=64),
                                  structured_pair()], ids=["random", "random_11px", "structured"])
def test_ssim_and_psnr_match_skimage(pair):
    generated, truth = pair
    result = evaluate_video(generated, truth)
    for f in range(len(truth)):
        assert result.whole.ssim[f] == pytest.approx(skimage_ssim(generated[f], truth[f]), abs=1e-6)
        assert result.whole.psnr[f] == pytest.approx(peak_signal_noise_ratio(truth[f], generated[f], data_range=1),
                                                     abs=1e-6)
    assert result.whole.means()[2] == pytest.approx(np.mean(result.whole.ssim))


def test_l1_and_psnr_of_a_constant_offset():
    truth = np.full((2, 16, 20, 3), 0.25)
    truth[1, :, :, 0] = 0.5
    result = evaluate_video(truth + 0.1, truth)
    np.testing.assert_allclose(result.whole.l1, [0.1, 0.1], atol=1e-12)
    np.testing.assert_allclose(result.whole.psnr, [20.0, 20.0], atol=1e-9)  # 10 log10(1 / 0.01)
    assert result.inside is None and result.outside is None


def test_masked_metrics_match_an_independent_computation():
    generated, truth = random_pair(2, frames=4, height=40, width=50)
    masks = person_masks(4, 40, 50)
    result = evaluate_video(torch.from_numpy(generated).float(), torch.from_numpy(truth).float(),
                            torch.from_numpy(masks).float())
    generated, truth = (torch.from_numpy(v).float().double().numpy() for v in (generated, truth))
    crop = (slice(BORDER, -BORDER), slice(BORDER, -BORDER))
    for f in range(4):
        weight = (masks[f] > 0.5).astype(np.float64)[..., None].repeat(3, -1)
        for region, w in ((result.inside, weight), (result.outside, 1 - weight)):
            sq = ((generated[f] - truth[f]) ** 2 * w).sum() / w.sum()
            assert region.l1[f] == pytest.approx((np.abs(generated[f] - truth[f]) * w).sum() / w.sum(), abs=1e-12)
            assert region.psnr[f] == pytest.approx(10 * np.log10(1 / sq), abs=1e-9)
            # skimage's own SSIM map, channel mean, without the border skimage crops, averaged over the region
            _, full_map = skimage_ssim(generated[f], truth[f], full=True)
            expected = np.average(full_map.mean(-1)[crop], weights=w[..., 0][crop])
            assert region.ssim[f] == pytest.approx(expected, abs=1e-6)
        # inside and outside split exactly the pixels of the whole-frame numbers
        inside_share = weight[..., 0].mean()
        assert result.whole.l1[f] == pytest.approx(
            inside_share * result.inside.l1[f] + (1 - inside_share) * result.outside.l1[f], abs=1e-12)
        cropped_share = weight[..., 0][crop].mean()
        assert result.whole.ssim[f] == pytest.approx(
            cropped_share * result.inside.ssim[f] + (1 - cropped_share) * result.outside.ssim[f], abs=1e-9)


def test_a_difference_only_outside_the_person_shows_only_outside():
    truth = random_pair(3, frames=2, height=32, width=32)[1]
    masks = np.zeros((2, 32, 32))
    masks[:, 4:28, 4:16] = 1
    generated = truth.copy()
    generated[:, :, 24:] = 1 - generated[:, :, 24:]  # only columns the mask leaves out
    result = evaluate_video(generated, truth, masks)
    np.testing.assert_array_equal(result.inside.l1, [0, 0])
    np.testing.assert_array_equal(result.inside.psnr, [PSNR_CAP, PSNR_CAP])
    assert (result.outside.l1 > 0.1).all() and (result.outside.psnr < 20).all()
    assert (result.outside.ssim < result.inside.ssim).all()


def test_identical_frames():
    truth = random_pair(4, frames=2)[1]
    result = evaluate_video(truth, truth, person_masks(2, 37, 53))
    for region in (result.whole, result.inside, result.outside):
        np.testing.assert_array_equal(region.l1, 0)
        np.testing.assert_array_equal(region.psnr, PSNR_CAP)
        np.testing.assert_allclose(region.ssim, 1, atol=1e-12)
    assert "100.00" in result.table()


def test_skip_first_one_mask_for_all_frames_and_a_frame_without_person():
    generated, truth = random_pair(5, frames=4)
    mask = person_masks(1, 37, 53)
    skipped = evaluate_video(generated, truth, mask, skip_first=2)
    direct = evaluate_video(generated[2:], truth[2:], np.repeat(mask, 2, 0))
    assert skipped.first_frame == 2 and skipped.num_frames == 2
    np.testing.assert_array_equal(skipped.inside.ssim, direct.inside.ssim)
    masks = np.repeat(mask, 4, 0)
    masks[1] = 0
    result = evaluate_video(generated, truth, masks)
    assert np.isnan(result.inside.l1[1]) and not np.isnan(result.inside.l1[[0, 2, 3]]).any()
    assert result.outside.l1[1] == pytest.approx(result.whole.l1[1])
    assert result.inside.means()[0] == pytest.approx(result.inside.l1[[0, 2, 3]].mean())
    assert "inside mask: 1 frames without pixels there are left out" in result.table()


def test_table_rows_and_columns():
    generated, truth = random_pair(6)
    result = evaluate_video(generated, truth, person_masks(3, 37, 53), skip_first=1)
    lines = result.table().splitlines()
    assert lines[0].startswith("2 frames (1..2)")
    assert lines[1].split() == ["region", "L1", "PSNR", "dB", "SSIM"]
    for line, region, name in zip(lines[2:], (result.whole, result.inside, result.outside),
                                  ("all", "inside mask", "outside mask")):
        l1, psnr, ssim = region.means()
        assert line.split() == name.split() + [f"{l1:.4f}", f"{psnr:.2f}", f"{ssim:.4f}"]
    assert len(evaluate_video(generated, truth).table().splitlines()) == 3


@pytest.mark.parametrize("change, message", [
    (lambda g, t, m: (g[:2], t, None), "Generated video has shape \\(2, 37, 53, 3\\).*ground truth \\(3, 37, 53, 3\\)"),
    (lambda g, t, m: (g[:, :30], t, None), "\\(3, 30, 53, 3\\).*\\(3, 37, 53, 3\\).*Fix: .*same frame count"),
    (lambda g, t, m: (g, t, m * 0), "mask marks no person pixel"),
    (lambda g, t, m: (g, t, m * 0 + 1), "covers every pixel"),
    (lambda g, t, m: (g, t, m[:, :20]), "mask has shape \\(3, 20, 53\\)"),
    (lambda g, t, m: (g, t, m[:2]), "mask has shape \\(2, 37, 53\\)"),
    (lambda g, t, m: (g[..., :1], t[..., :1], None), "IMAGE batch"),
    (lambda g, t, m: (g * 255, t, None), "must lie in \\[0, 1\\]"),
    (lambda g, t, m: (g[:, :10], t[:, :10], None), "smaller than SSIM's 11x11 window"),
    (lambda g, t, m: (g[:0], t[:0], None), "hold no frames"),
])
def test_clear_errors(change, message):
    generated, truth = random_pair(7)
    with pytest.raises(MarionetteError, match="(?i)" + message) as error:
        evaluate_video(*change(generated, truth, person_masks(3, 37, 53)))
    assert "Fix:" in str(error.value)


def test_skip_first_beyond_the_video():
    generated, truth = random_pair(8)
    with pytest.raises(MarionetteError, match="skip_first is 3 but the videos have 3 frames"):
        evaluate_video(generated, truth, skip_first=3)


def test_plot_shape_and_content():
    generated, truth = random_pair(9, frames=6)
    result = evaluate_video(generated, truth, person_masks(6, 37, 53))
    image = plot_metrics(result, width=500, height=300)
    assert image.shape == (300, 500, 3) and image.dtype == np.uint8
    colours = {tuple(c) for c in image.reshape(-1, 3)}
    assert {(31, 119, 180), (230, 120, 20), (44, 160, 44)} <= colours  # one curve per region (and legend)
    assert (image < 128).all(-1).mean() > 0.005  # axes and labels drawn in black
    whole_only = plot_metrics(evaluate_video(generated[:1], truth[:1]))
    assert whole_only.shape == (360, 640, 3)
    assert (230, 120, 20) not in {tuple(c) for c in whole_only.reshape(-1, 3)}
    with pytest.raises(MarionetteError, match="too small"):
        plot_metrics(result, width=100, height=100)


def test_video_metrics_node_in_the_host(comfy_host):
    generated = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 3, "color": 0x808080}}
    truth = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 3, "color": 0x8090A0}}
    prompt = {"1": generated, "2": truth,
              "3": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 64, "height": 48}},
              "4": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 20, "height": 30}},
              "5": {"class_type": "MaskComposite", "inputs": {"destination": ["3", 0], "source": ["4", 0],
                                                             "x": 10, "y": 8, "operation": "add"}},
              "6": {"class_type": "VideoMetrics", "inputs": {"generated": ["1", 0], "ground_truth": ["2", 0],
                                                             "mask": ["5", 0], "skip_first": 1}},
              "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 1]}}}
    result = comfy_host.run(prompt)
    assert result.success, result.error
    table, plot = result.output("6", 0), result.output("6", 1)
    expected = evaluate_video(result.output("1", 0), result.output("2", 0), result.output("5", 0), skip_first=1)
    assert table == expected.table() and result.ui["6"]["text"] == [table]
    assert table.startswith("2 frames (1..2)") and "inside mask" in table and "outside mask" in table
    # grey 0x80 against (0x80, 0x90, 0xA0): L1 = (0 + 16 + 32) / 3 / 255 everywhere
    assert expected.inside.l1 == pytest.approx([16 / 255] * 2, abs=1e-6)
    assert tuple(plot.shape) == (1, 360, 640, 3) and plot.dtype == torch.float32
    assert float(plot.min()) < 0.2 and float(plot.max()) == 1.0
    prompt["6"]["inputs"]["skip_first"] = 3
    failed = comfy_host.run(prompt)
    assert not failed.success and "skip_first is 3" in failed.error["exception_message"]
