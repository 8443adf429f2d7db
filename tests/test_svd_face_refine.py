"""HJB face refinement: the ArcFace R100 layout of glintr100_torch.pth, the IResNet forward against plain
functional ops, face boxes read as the official code reads its 8-bit masks, the refinement step against a
re-derivation in the official structure (all frames decoded with one graph, loss over all, one backward per
iteration), the float64 gradient against a plain-ops re-derivation of the official maths, the learning-rate
schedule and step window inside the sampler, the official single UNet window, inference-mode weights, and
errors."""
import io
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from marionette.models.errors import MarionetteError
from marionette.models.stableanimator.hjb import (FaceRefiner, RefineSettings, crop_faces, face_box, face_boxes,
                                                  reference_embedding, refine_window)
from marionette.models.stableanimator.iresnet import IResNet, load_iresnet100
from marionette.models.svd.sampler import SamplerSettings, sample
from marionette.models.pipelines.svd_animation import FaceRefine, SVDAnimation, animate_svd
from marionette.models.pipelines.svd_tiny import tiny_animation_model

TINY_NET = dict(blocks=(1, 2, 1, 1), widths=(8, 8, 16, 16), embedding_size=24)
H = W = 64  # pixels; latents 8x8


def tiny_embedder(seed: int = 0) -> IResNet:
    torch.manual_seed(seed)
    net = IResNet(**TINY_NET)
    with torch.no_grad():  # non-trivial BN statistics and PReLU slopes, as a trained net has
        for module in net.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.normal_(1, 0.1)
                module.bias.normal_(0, 0.1)
            if isinstance(module, torch.nn.PReLU):
                module.weight.uniform_(0.1, 0.3)
    return net.eval().requires_grad_(False)


# --------------------------------------------------------------------------------------------- R100
def test_r100_has_the_layout_of_glintr100_torch():
    with torch.device("meta"):
        state = IResNet().state_dict()
    # stem 7, 49 blocks x 18 (+6 for the first block of each stage's projection), tail 12
    assert len(state) == 7 + 49 * 18 + 4 * 6 + 12 == 925
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert shapes["conv1.weight"] == (64, 3, 3, 3)
    assert shapes["prelu.weight"] == (64,)
    assert shapes["layer1.0.downsample.0.weight"] == (64, 64, 1, 1)
    assert shapes["layer3.29.conv2.weight"] == (256, 256, 3, 3) and "layer3.30.bn1.weight" not in shapes
    assert shapes["layer2.12.prelu.weight"] == (128,) and "layer2.13.conv1.weight" not in shapes
    assert shapes["layer4.0.downsample.1.running_var"] == (512,)
    assert shapes["fc.weight"] == (512, 512 * 7 * 7) and shapes["features.running_mean"] == (512,)
    assert shapes["features.num_batches_tracked"] == () and "layer1.1.downsample.0.weight" not in shapes


def functional_iresnet(net: IResNet, x: torch.Tensor) -> torch.Tensor:
    """Plain functional ops over the state dict (eval-mode BN), in the official block order."""
    s = net.state_dict()

    def bn(x, p):
        return F.batch_norm(x, s[p + ".running_mean"], s[p + ".running_var"], s[p + ".weight"], s[p + ".bias"],
                            False, 0.0, 1e-5)

    x = F.prelu(bn(F.conv2d(x, s["conv1.weight"], padding=1), "bn1"), s["prelu.weight"])
    for stage in range(1, 5):
        for index in range(len(getattr(net, f"layer{stage}"))):
            p = f"layer{stage}.{index}"
            stride = 2 if index == 0 else 1
            out = F.conv2d(bn(x, p + ".bn1"), s[p + ".conv1.weight"], padding=1)
            out = F.prelu(bn(out, p + ".bn2"), s[p + ".prelu.weight"])
            out = bn(F.conv2d(out, s[p + ".conv2.weight"], stride=stride, padding=1), p + ".bn3")
            if p + ".downsample.0.weight" in s:
                x = bn(F.conv2d(x, s[p + ".downsample.0.weight"], stride=stride), p + ".downsample.1")
            x = out + x
    x = bn(x, "bn2").flatten(1)
    return bn(F.linear(x, s["fc.weight"], s["fc.bias"]), "features")


def test_iresnet_forward_equals_functional_ops():
    net = tiny_embedder()
    x = torch.rand(3, 3, 112, 112) * 2 - 1
    assert torch.allclose(net(x), functional_iresnet(net, x), atol=1e-5)


def test_load_iresnet100_is_strict_and_names_the_file(tmp_path):
    with torch.device("meta"):
        reference = IResNet().state_dict()
    state = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in reference.items()}
    good = tmp_path / "glintr100_torch.pth"
    torch.save(state, good)
    model = load_iresnet100(good)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    del state["fc.bias"]
    state["head.weight"] = torch.zeros(2)
    bad = tmp_path / "other.pth"
    torch.save(state, bad)
    with pytest.raises(MarionetteError, match=r"other\.pth.*missing: fc\.bias.*unexpected: head\.weight"):
        load_iresnet100(bad)


# -------------------------------------------------------------------------------------------- boxes
def official_mask_box(mask: torch.Tensor):
    """The official reading: the mask saved as an 8-bit PNG, read back, divided by 255, pixels == 1."""
    buffer = io.BytesIO()
    Image.fromarray(np.round(mask.numpy() * 255).astype(np.uint8)).save(buffer, format="PNG")
    read = torch.from_numpy(np.asarray(Image.open(io.BytesIO(buffer.getvalue()))).astype(np.float32) / 255)
    ys, xs = torch.where(read == 1)
    return None if len(ys) == 0 else (ys.min().item(), ys.max().item(), xs.min().item(), xs.max().item())


def test_face_box_counts_only_full_pixels_as_the_official_code():
    mask = torch.zeros(10, 12)
    mask[2:5, 3:9] = 1.0
    mask[1:6, 2:10][[0, -1]] = 0.6  # a soft 1-px edge, as a resized or feathered mask has
    mask[1:6, [2, 9]] = 0.6
    mask[7, 0] = 254 / 255          # an almost-full pixel still is not 255
    mask[8, 11] = 1.0 - 1e-7        # float noise on a full pixel still is 255
    assert face_box(mask) == official_mask_box(mask) == (2, 8, 3, 11)
    mask[8, 11] = 0.0
    assert face_box(mask) == official_mask_box(mask) == (2, 4, 3, 8)
    old = torch.nonzero(mask[:6] >= 0.5)  # the old >= 0.5 rule on the face: 1 px larger on every side
    assert old.amin(0).tolist() == [1, 2] and old.amax(0).tolist() == [5, 9]
    assert face_box(torch.full((4, 4), 0.9)) is None
    boxes = face_boxes(torch.stack([mask, torch.zeros_like(mask)]), (20, 24))  # resized x2, nearest
    assert boxes == [(4, 9, 6, 17), None]


def test_a_blurred_mask_gives_the_official_box():
    """A rectangle mask bilinearly resized (soft edges of several pixels): the box is that of its 255 pixels."""
    hard = torch.zeros(1, 1, 16, 20)
    hard[..., 4:11, 6:15] = 1.0
    soft = F.interpolate(hard, size=(64, 80), mode="bilinear", align_corners=False)[0, 0]
    assert 0 < int(((soft > 0) & (soft < 1)).sum())
    box = face_box(soft)
    assert box == official_mask_box(soft)
    assert box == face_boxes(soft[None], (64, 80))[0]
    loose = torch.nonzero(soft >= 0.5)
    assert box[0] > loose[:, 0].min() and box[1] < loose[:, 0].max()


def test_crop_faces_resizes_the_box_bilinearly():
    frames = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    crops = crop_faces(frames, [(1, 4, 2, 5), (0, 7, 0, 7)])
    expected = F.interpolate(frames[:1, :, 1:5, 2:6], size=(112, 112), mode="bilinear", align_corners=False)
    assert crops.shape == (2, 3, 112, 112) and torch.equal(crops[:1], expected)


# ------------------------------------------------------------------------------------ refinement
@pytest.fixture(scope="module")
def tiny():
    model = tiny_animation_model("stableanimator", seed=3)
    gen = torch.Generator().manual_seed(5)
    x0 = torch.randn(6, 4, H // 8, W // 8, generator=gen)
    boxes = [(10, 40, 12, 44), (8, 30, 20, 50), (0, 63, 0, 63), (20, 50, 5, 35), (12, 44, 12, 44), (30, 60, 30, 60)]
    embedder = tiny_embedder(1)
    reference = reference_embedding(embedder, torch.rand(3, H, W, generator=gen), (5, 50, 8, 52))
    return model, x0, boxes, embedder, reference


def official_loss(vae, embedder, reference, z0, boxes, chunk, factor):
    """The official step's loss: decode every frame (chunks of `chunk`, one graph), post-process to 8-bit
    range and back, crop, embed, mean |1 - cos| over all frames."""
    latents = z0 / factor
    frames = torch.cat([vae.decode(latents[i:i + chunk], num_frames=latents[i:i + chunk].shape[0]).sample
                        for i in range(0, latents.shape[0], chunk)])
    frames = ((frames / 2 + 0.5).clamp(0, 1) * 255).clamp(0, 255) / 255
    frames = (frames - 0.5) / 0.5
    crops = torch.cat([F.interpolate(frames[k:k + 1, :, y0:y1 + 1, x0:x1 + 1], size=(112, 112),
                                     mode="bilinear", align_corners=False)
                       for k, (y0, y1, x0, x1) in enumerate(boxes)])
    cosine = torch.nn.CosineSimilarity(dim=1)(embedder(crops), reference.repeat(len(boxes), 1))
    return (1 - cosine).abs().mean()


def official_refinement(vae, embedder, reference, x0, boxes, lr, iterations, chunk, factor):
    """Fresh Adam on a detached copy of x0, one backward of the whole loss per iteration."""
    z0 = x0.clone().detach().requires_grad_(True)
    optimiser = torch.optim.Adam([z0], lr=lr)
    losses = []
    for _ in range(iterations):
        loss = official_loss(vae, embedder, reference, z0, boxes, chunk, factor)
        optimiser.zero_grad()
        loss.backward(retain_graph=True)
        optimiser.step()
        losses.append(loss.item())
    return z0.detach(), losses


@pytest.mark.parametrize("chunk", [4, 6])
def test_chunked_gradient_equals_the_whole_graph_gradient(tiny, chunk):
    model, x0, boxes, embedder, reference = tiny
    refiner = FaceRefiner(embedder, reference, boxes, model.vae, model.vae_scaling_factor,
                          RefineSettings(decode_chunk=chunk, gradient_checkpointing=False))
    with torch.enable_grad():
        ours = x0.clone().requires_grad_(True)
        loss = refiner._backward(ours)
        theirs = x0.clone().requires_grad_(True)
        official = official_loss(model.vae, embedder, reference, theirs, boxes, chunk, model.vae_scaling_factor)
        official.backward()
    assert abs(loss - official.item()) < 1e-6
    scale = theirs.grad.abs().max()
    assert scale > 0 and (ours.grad - theirs.grad).abs().max() < 1e-5 * scale


def test_refinement_matches_the_official_structure(tiny):
    model, x0, boxes, embedder, reference = tiny
    settings = RefineSettings(decode_chunk=4, gradient_checkpointing=False)
    refiner = FaceRefiner(embedder, reference, boxes, model.vae, model.vae_scaling_factor, settings)
    ours = refiner(x0, 2, 25)
    with torch.enable_grad():
        theirs, losses = official_refinement(model.vae, embedder, reference, x0, boxes, 0.1 * (1 - 2 / 25), 3, 4,
                                             model.vae_scaling_factor)
    moved = (theirs - x0).abs()
    assert moved.max() > 0.2  # Adam moves every element by about lr per iteration
    # Adam divides each gradient by its own magnitude, so rounding in near-zero gradients shows at ~1e-4
    assert (ours - theirs).abs().max() < 5e-4 * moved.max()
    assert refiner.losses == [pytest.approx(losses, abs=1e-6)]


def test_float64_gradient_equals_the_official_maths():
    """In float64 the first gradient w.r.t. x0 equals a re-derivation of the official step in plain ops (the
    diffusers VAE decode, the official 8-bit-range post-processing, crops, `functional_iresnet` over the state
    dict, a written-out cosine) to 1e-8. Rounding to float32 anywhere (decoded frames, crops, the cosine, the
    reference embedding) shows at ~2e-6 here: the tiny R100's embeddings are nearly parallel (cos ~0.999), as
    those of one person's faces are, and the cosine's gradient is then a small difference of large terms."""
    model = tiny_animation_model("stableanimator", seed=3, dtype=torch.float64)
    vae, factor = model.vae, model.vae_scaling_factor
    with torch.no_grad():  # some pixels leave [-1, 1], so the clamp's zero gradient is part of the check
        vae.decoder.conv_out.weight.mul_(4)
    embedder = tiny_embedder(1).double()
    gen = torch.Generator().manual_seed(7)
    x0 = torch.randn(6, 4, H // 8, W // 8, generator=gen, dtype=torch.float64)
    boxes = [(10, 40, 12, 44), (8, 30, 20, 50), (0, 63, 0, 63), (20, 50, 5, 35), (12, 44, 12, 44), (30, 60, 30, 60)]
    image, (ry0, ry1, rx0, rx1) = torch.rand(3, H, W, generator=gen, dtype=torch.float64), (5, 50, 8, 52)

    face = F.interpolate(((image - 0.5) / 0.5)[None, :, ry0:ry1 + 1, rx0:rx1 + 1], size=(112, 112),
                         mode="bilinear", align_corners=False)
    official_reference = functional_iresnet(embedder, face)[0]
    theirs = x0.clone().requires_grad_(True)
    with torch.enable_grad():
        latents = 1 / factor * theirs
        decoded = torch.cat([vae.decode(latents[i:i + 4], num_frames=latents[i:i + 4].shape[0]).sample
                             for i in range(0, 6, 4)])
        frames = ((decoded / 2 + 0.5).clamp(0, 1) * 255).clamp(0, 255) / 255
        frames = (frames - 0.5) / 0.5
        crops = torch.cat([F.interpolate(frames[k:k + 1, :, y0:y1 + 1, x0_:x1 + 1], size=(112, 112),
                                         mode="bilinear", align_corners=False)
                           for k, (y0, y1, x0_, x1) in enumerate(boxes)])
        embeddings = functional_iresnet(embedder, crops)
        reference = official_reference.expand_as(embeddings)
        cosine = (embeddings * reference).sum(1) / (embeddings.norm(dim=1) * reference.norm(dim=1))
        official = (1 - cosine).abs().mean()
        official.backward()
    assert 0.01 < float((decoded.abs() > 1).double().mean()) < 0.5
    assert float(cosine.detach().min()) > 0.99

    ours_reference = reference_embedding(embedder, image, (ry0, ry1, rx0, rx1))
    assert ours_reference.dtype == torch.float64
    assert (ours_reference - official_reference).norm() <= 1e-12 * official_reference.norm()
    refiner = FaceRefiner(embedder, ours_reference, boxes, vae, factor,
                          RefineSettings(decode_chunk=4, gradient_checkpointing=False))
    ours = x0.clone().requires_grad_(True)
    with torch.enable_grad():
        loss = refiner._backward(ours)
    assert ours.grad.dtype == torch.float64 and theirs.grad.norm() > 0
    assert (ours.grad - theirs.grad).norm() <= 1e-8 * theirs.grad.norm()
    assert abs(loss - official.item()) <= 1e-12


def test_checkpointing_gives_the_same_result_and_leaves_the_vae_as_it_was(tiny):
    model, x0, boxes, embedder, reference = tiny
    results = []
    for flag in (False, True):
        refiner = FaceRefiner(embedder, reference, boxes, model.vae, model.vae_scaling_factor,
                              RefineSettings(gradient_checkpointing=flag))
        results.append(refiner(x0, 0, 25))
    assert (results[0] - results[1]).abs().max() < 1e-6
    assert not model.vae.is_gradient_checkpointing


def test_refinement_lowers_the_identity_loss(tiny):
    model, x0, boxes, embedder, reference = tiny
    refiner = FaceRefiner(embedder, reference, boxes, model.vae, model.vae_scaling_factor,
                          RefineSettings(iterations=6, learning_rate=0.05))
    refiner(x0, 0, 25)
    history = refiner.losses[0]
    assert history[-1] < 0.9 * history[0], history


def test_frames_without_a_face_are_left_out(tiny):
    model, x0, boxes, embedder, reference = tiny
    partial = [None] + boxes[1:4] + [None, None]
    refiner = FaceRefiner(embedder, reference, partial, model.vae, model.vae_scaling_factor,
                          RefineSettings(decode_chunk=2, gradient_checkpointing=False))
    ours = refiner(x0, 0, 25)
    # the mean over the frames with faces; the last chunk (no faces) is never decoded and stays put
    assert torch.equal(ours[4:], x0[4:])
    assert (ours[:4] - x0[:4]).abs().max() > 0.01


def test_weights_made_in_inference_mode_still_refine(tiny):
    """ComfyUI builds and moves models under torch.inference_mode; the refiner must still get gradients."""
    _, x0, boxes, _, reference = tiny
    with torch.inference_mode():
        model = tiny_animation_model("stableanimator", seed=3)
        embedder = tiny_embedder(1)
        refiner = FaceRefiner(embedder, reference, boxes, model.vae, model.vae_scaling_factor)
        refined = refiner(x0.clone(), 0, 25)
    assert (refined - x0).abs().max() > 0.01


def test_sampler_refines_only_the_configured_steps(tiny):
    model, _, boxes, embedder, reference = tiny
    settings = RefineSettings(start_step=1, end_step=2, iterations=1)
    refiner = FaceRefiner(embedder, reference, boxes[:3], model.vae, model.vae_scaling_factor, settings)
    seen = []

    def spy(x0, step, steps):
        seen.append((step, steps, settings.step_learning_rate(step, steps)))
        return refiner(x0, step, steps)

    unet = model.unet
    clip = torch.randn(1, 5, model.unet_config["cross_attention_dim"])
    pose = model.pose_net(torch.rand(3, 3, H, W) * 2 - 1)
    ref = torch.randn(4, H // 8, W // 8)
    run = dict(settings=SamplerSettings(steps=4, cfg_min=1.0, cfg_max=1.0))
    plain = sample(unet, clip, None, ref, pose, **run)
    refined = sample(unet, clip, None, ref, pose, refine=spy, **run)
    assert [s[0] for s in seen] == [0, 1, 2, 3] and {s[1] for s in seen} == {4}
    assert [round(s[2], 6) for s in seen[1:3]] == [0.075, 0.05]
    assert len(refiner.losses) == 2 and (plain - refined).abs().max() > 1e-4


def test_refine_window_sets_one_tile_of_all_frames_or_keeps_the_tiles():
    settings = SamplerSettings(tile_size=16, tile_overlap=4)
    single = refine_window(settings, "single", 40)
    assert (single.tile_size, single.tile_overlap) == (40, 4) and single.steps == settings.steps
    assert refine_window(settings, "single", 3).tile_size == 3
    assert refine_window(settings, "tiles", 40) is settings
    with pytest.raises(MarionetteError, match="Unknown HJB window 'all'"):
        refine_window(settings, "all", 40)


@pytest.mark.parametrize("variant", ["stableanimator", "mimicmotion"])
def test_single_window_samples_all_frames_in_each_unet_call(variant):
    """'single' (the official HJB script: tile_size = number of frames) gives the UNet every sampled frame
    (MimicMotion's anchor included) in each call, whatever the sampler's tile; 'tiles' keeps the tiles."""
    model = SVDAnimation(tiny_animation_model(variant, seed=2), variant, tiny=True)
    frames = 5
    sampled = frames + (variant == "mimicmotion")
    gen = torch.Generator().manual_seed(3)
    reference = torch.rand(1, H, W, 3, generator=gen)
    poses = torch.rand(frames, H, W, 3, generator=gen)
    masks = torch.zeros(frames, H, W)
    masks[:, 10:40, 12:44] = 1.0
    embedder = tiny_embedder(1)
    face = reference_embedding(embedder, reference[0], (10, 40, 12, 44))
    settings = SamplerSettings.preset(variant, steps=2, cfg_min=1.0, cfg_max=1.0, tile_size=2, tile_overlap=1,
                                      seed=4)
    seen = []
    hook = model.unet.register_forward_pre_hook(lambda module, args, kwargs: seen.append(args[0].shape[1]),
                                                with_kwargs=True)
    try:
        runs = {}
        for name, window, run_settings in (("single", "single", settings), ("tiles", "tiles", settings),
                                           ("one tile", "tiles", replace(settings, tile_size=sampled))):
            seen.clear()
            refine = FaceRefine(embedder, face, masks, RefineSettings(iterations=1), tiny=True, window=window)
            result = animate_svd(model, reference, poses, run_settings, device=torch.device("cpu"), refine=refine)
            runs[name] = (result, list(seen))
    finally:
        hook.remove()
    assert runs["single"][1] and set(runs["single"][1]) == {sampled}
    assert set(runs["tiles"][1]) == {2}
    assert len(runs["single"][0].face_losses) == 2
    # the same run as the sampler with one tile of all frames, and another video than the tiled one
    assert torch.equal(runs["single"][0].latents, runs["one tile"][0].latents)
    assert (runs["single"][0].latents - runs["tiles"][0].latents).abs().max() > 1e-3


def test_errors_are_clear(tiny):
    model, x0, boxes, embedder, reference = tiny
    with pytest.raises(MarionetteError, match="No frame has a face box"):
        FaceRefiner(embedder, reference, [None] * 6, model.vae, model.vae_scaling_factor)
    refiner = FaceRefiner(embedder, reference, boxes[:2], model.vae, model.vae_scaling_factor)
    with pytest.raises(MarionetteError, match="2 face boxes for 6 frames"):
        refiner(x0, 0, 25)
    with pytest.raises(MarionetteError, match="end_step 3 is before start_step 5"):
        RefineSettings(start_step=5, end_step=3)
    with pytest.raises(MarionetteError, match="learning rate must be positive"):
        RefineSettings(learning_rate=0.0)
    with pytest.raises(MarionetteError, match="iterations"):
        RefineSettings(iterations=0)
    with pytest.raises(MarionetteError, match=r"\[N, 3, 112, 112\]"):
        embedder(torch.zeros(1, 3, 64, 64))


def test_target_face_masks_come_from_the_face_landmarks_or_the_head():
    import numpy as np

    from marionette.models.pose.types import empty_frame
    from marionette.models.vision.face_detect import (FACE_EXPAND, Face, face_box_and_mask, face_box_from_pose,
                                                      pose_face_mask)
    frame = empty_frame(200, 300, people=2)
    grid = np.meshgrid(np.linspace(80, 120, 17), np.linspace(60, 110, 4))
    frame.face[0, :, :2] = np.stack(grid, -1).reshape(-1, 2)[:68]
    frame.face[0, :, 2] = 0.9
    frame.body[1, [0, 14, 15], :] = [[150, 200, 0.9], [145, 195, 0.9], [155, 195, 0.9]]  # a small head
    box = face_box_from_pose(frame.body[0], frame.face[0])
    np.testing.assert_allclose(box, [80, 60, 120, 110])
    assert face_box_from_pose(frame.body[0], frame.face[0] * [1, 1, 0]) is None  # nothing visible
    mask = pose_face_mask(frame)  # the larger face (person 0) is chosen
    found = face_box(torch.from_numpy(mask))
    centre_y, centre_x = (found[0] + found[1]) / 2, (found[2] + found[3]) / 2
    assert abs(centre_x - 100) < 2 and 60 < centre_y < 85  # moved up towards the hair line
    assert 40 < found[3] - found[2] + 1 <= 40 * FACE_EXPAND + 2
    assert found[0] < 60 and found[1] > 100  # brow line inside; the mask's soft rim (not 255) is left out
    # the reference's box comes from LoadReference's face_mask, drawn the same way around the detector's
    # brow-to-chin box: a face with that box gets the same crop framing as the landmarks give the targets
    reference = face_box_and_mask((300, 200), [Face(0.9, np.array([80.0, 60, 120, 110]), np.zeros((6, 2)))])
    assert face_box(torch.from_numpy(reference.mask)) == found
    assert not pose_face_mask(empty_frame(200, 300, people=1)).any()
