"""DisPose's CMP network: key-exact against the released checkpoint's key list, forward parity with a
functional re-derivation of the official architecture on tiny random weights, and the loader."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from marionette.models.dispose.cmp import (CMP_CONFIG, CMP_FILE, CMP_FOLDER, CMPNet, bin_centres, cmp_state_names,
                                          load_cmp, random_cmp, tiny_cmp_config)
from marionette.models.errors import MarionetteError

KEYS = json.loads((Path(__file__).parent / "data" / "keys" / "dispose_cmp.json").read_text())


# ------------------------------------------------------------------------------- key-exactness
def test_full_size_keys_match_released_checkpoint_in_order():
    names = cmp_state_names(CMP_CONFIG)  # built on the meta device
    in_file = [("module." + k, list(v)) for k, v in names.items() if not k.endswith("num_batches_tracked")]
    assert in_file == list(KEYS["keys"].items())
    assert len(in_file) == KEYS["count"] == 383
    everything = {"module." + k: list(v) for k, v in names.items()}
    assert everything == {**KEYS["keys"], **KEYS["module_keys_not_in_file"]}
    assert len(names) == KEYS["module_state_dict_count"] == 455
    assert sum(torch.Size(s).numel() for s in names.values()) == KEYS["module_state_dict_numel"]


# ------------------------------------------------------------------ functional re-derivation
def _bn(x, sd, name):
    return F.batch_norm(x, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"],
                        sd[f"{name}.bias"], training=False, eps=1e-5)


def _conv_bn_relu(x, sd, conv, bn, **kw):
    return torch.relu(_bn(F.conv2d(x, sd[f"{conv}.weight"], sd.get(f"{conv}.bias"), **kw), sd, bn))


def _resnet(x, sd):
    """ResNet-50 layout as the official code builds it: strides (1,2,2,2), then layer3/layer4 patched to
    stride 1 with dilation 2/4 in every conv2 (and stride 1 in their downsample convs)."""
    p = "image_encoder"
    stem = _conv_bn_relu(x, sd, f"{p}.conv1", f"{p}.bn1", stride=2, padding=3)
    h = F.max_pool2d(stem, kernel_size=3, stride=2, padding=1)
    layer1 = None
    for stage, (stride, dil) in enumerate(((1, 1), (2, 1), (1, 2), (1, 4)), start=1):
        blocks = sorted({int(k.split(".")[2]) for k in sd if k.startswith(f"{p}.layer{stage}.")})
        for b in blocks:
            q = f"{p}.layer{stage}.{b}"
            s = stride if b == 0 else 1
            y = _conv_bn_relu(h, sd, f"{q}.conv1", f"{q}.bn1")
            y = _conv_bn_relu(y, sd, f"{q}.conv2", f"{q}.bn2", stride=s, padding=dil, dilation=dil)
            y = _bn(F.conv2d(y, sd[f"{q}.conv3.weight"]), sd, f"{q}.bn3")
            short = h if f"{q}.downsample.0.weight" not in sd else _bn(
                F.conv2d(h, sd[f"{q}.downsample.0.weight"], stride=s), sd, f"{q}.downsample.1")
            h = torch.relu(y + short)
        if stage == 1:
            layer1 = h
    return F.conv2d(h, sd[f"{p}.conv5.weight"], sd[f"{p}.conv5.bias"]), stem, layer1


def _decoder_branch(x, sd, name, pool):
    if pool > 1:
        x = F.max_pool2d(x, pool, pool)
    first = 1 if pool > 1 else 0  # Sequential indices shift by the pooling layer
    for j in range(3):
        c = first + 3 * j
        x = _conv_bn_relu(x, sd, f"{name}.{c}", f"{name}.{c + 1}", padding=1)
    return x


def official_cmp_logits(sd, image, sparse):
    """The official CMP forward (image, 4-channel sparse) -> bin logits, from the state dict alone."""
    enc, stem, layer1 = _resnet(image, sd)
    s = _conv_bn_relu(sparse, sd, "flow_encoder.features.0", "flow_encoder.features.1", stride=2, padding=2)
    s = F.max_pool2d(s, 2, 2)
    s = _conv_bn_relu(s, sd, "flow_encoder.features.4", "flow_encoder.features.5", padding=1)
    s = F.avg_pool2d(s, 2, 2)
    x = torch.cat([enc.expand(len(s), -1, -1, -1), s], 1)
    d = "flow_decoder"
    up = lambda t, ref: F.interpolate(t, size=ref.shape[2:], mode="bilinear", align_corners=True)  # noqa: E731
    x1 = _decoder_branch(x, sd, f"{d}.decoder1", 1)
    xs = [x1] + [up(_decoder_branch(x, sd, f"{d}.decoder{p}", p), x1) for p in (2, 4, 8)]
    f8 = _conv_bn_relu(torch.cat(xs, 1), sd, f"{d}.fusion8.0", f"{d}.fusion8.1", padding=1)
    sk4 = _conv_bn_relu(layer1, sd, f"{d}.skipconv4.0", f"{d}.skipconv4.1", padding=1)
    f4 = _conv_bn_relu(torch.cat([up(f8, layer1), sk4.expand(len(s), -1, -1, -1)], 1), sd,
                       f"{d}.fusion4.0", f"{d}.fusion4.1", padding=1)
    sk2 = _conv_bn_relu(stem, sd, f"{d}.skipconv2.0", f"{d}.skipconv2.1", padding=1)
    f2 = _conv_bn_relu(torch.cat([up(f4, stem), sk2.expand(len(s), -1, -1, -1)], 1), sd,
                       f"{d}.fusion2.0", f"{d}.fusion2.1", padding=1)
    return F.conv2d(f2, sd[f"{d}.head.weight"], sd[f"{d}.head.bias"])


def official_fuser(logits, nbins, fmax, size):
    """Softmax-expectation over the bin centres, then bilinear (align_corners) to the input size."""
    step = 2 * fmax / float(nbins)
    centres = torch.tensor([i * step - fmax + step / 2 for i in range(nbins)]).view(1, -1, 1, 1)
    fx = (F.softmax(logits[:, :nbins], 1) * centres).sum(1, keepdim=True)
    fy = (F.softmax(logits[:, nbins:], 1) * centres).sum(1, keepdim=True)
    return F.interpolate(torch.cat([fx, fy], 1), size=size, mode="bilinear", align_corners=True)


@pytest.fixture(scope="module")
def tiny():
    return random_cmp(tiny_cmp_config(), seed=3)


def _inputs(n=3, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 3, size, size, generator=g) * 2 - 1
    sparse = torch.zeros(n, 4, size, size)
    for b in range(n):
        idx = torch.randint(0, size, (6, 2), generator=g)
        sparse[b, :2, idx[:, 0], idx[:, 1]] = torch.randn(2, 6, generator=g) * 20
        sparse[b, 2:, idx[:, 0], idx[:, 1]] = 1
    return image, sparse


def test_tiny_forward_matches_functional_official_math(tiny):
    image, sparse = _inputs()
    sd = tiny.state_dict()
    with torch.no_grad():
        ours = tiny(image, sparse)
        reference = official_cmp_logits(sd, image, sparse)
    assert ours.shape == (3, 2 * tiny.config.nbins, 32, 32)
    assert reference.abs().max() > 0.1  # the comparison is not between zeros
    assert (ours - reference).abs().max() < 1e-4
    cfg = tiny.config
    with torch.no_grad():
        flow = tiny.flow(tiny.encode_image(image), sparse)
    expected = official_fuser(reference, cfg.nbins, cfg.fmax, (64, 64))
    assert flow.shape == (3, 2, 64, 64)
    assert (flow - expected).abs().max() < 1e-4
    assert flow.abs().max() < cfg.fmax  # the expectation saturates inside +-fmax


def test_shared_image_features_equal_per_frame_forward(tiny):
    """Encoding the reference once and decoding a batch equals the official one-frame-at-a-time run."""
    image, sparse = _inputs(n=4, seed=1)
    with torch.no_grad():
        features = tiny.encode_image(image)
        batched = tiny.flow(features, sparse)
        single = torch.cat([tiny.logits_to_flow(tiny(image, sparse[i:i + 1]), (64, 64)) for i in range(4)])
    assert (batched - single).abs().max() < 1e-5


def test_full_size_bin_centres_span_plus_minus_fifty():
    centres = bin_centres(CMP_CONFIG)
    assert len(centres) == 99
    assert centres[0] == pytest.approx(-50 + 50 / 99) and centres[-1] == pytest.approx(50 - 50 / 99)
    assert centres[49] == pytest.approx(0.0, abs=1e-5)


# ---------------------------------------------------------------------------------- loading
def _official_like_save(net: CMPNet, path: Path, monkeypatch):
    """As the released file: legacy (pre-1.6) torch.save of {step, state_dict, optimizer}, `module.`
    keys without BatchNorm counters, storages tagged cuda:0."""
    state = {"module." + k: v.clone() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    params = [torch.nn.Parameter(v.clone()) for k, v in state.items() if "running" not in k]
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    import torch.serialization as serialization
    with monkeypatch.context() as patch:
        patch.setattr(serialization, "location_tag", lambda storage: "cuda:0")
        torch.save({"step": 42000, "state_dict": state, "optimizer": optimizer.state_dict()}, path,
                   _use_new_zipfile_serialization=False)
    with pytest.raises(RuntimeError, match="CUDA"):  # the file really says cuda: loading must map it
        torch.load(path, weights_only=True)


def test_load_official_layout_file(tiny, tmp_path, monkeypatch):
    path = tmp_path / CMP_FILE
    _official_like_save(tiny, path, monkeypatch)
    loaded = load_cmp(path, tiny_cmp_config())
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    for k, v in tiny.state_dict().items():
        expected = torch.zeros_like(v) if k.endswith("num_batches_tracked") else v
        assert torch.equal(loaded.state_dict()[k], expected), k
    image, sparse = _inputs(n=2, seed=2)
    with torch.no_grad():
        assert torch.equal(loaded(image, sparse), tiny(image, sparse))


def test_load_unprefixed_safetensors(tiny, tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / "cmp.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(path))
    loaded = load_cmp(path, tiny_cmp_config(), dtype=torch.float16)
    assert next(loaded.parameters()).dtype == torch.float16
    assert torch.equal(loaded.flow_decoder.head.weight.float(), tiny.flow_decoder.head.weight.half().float())


def test_missing_file_names_official_file_and_folder(tmp_path):
    with pytest.raises(MarionetteError) as error:
        load_cmp(tmp_path / CMP_FILE)
    assert CMP_FILE in str(error.value) and CMP_FOLDER in str(error.value)


def test_wrong_file_is_refused(tiny, tmp_path):
    other = tmp_path / "other.pth"
    torch.save({"state_dict": {"module.conv.weight": torch.zeros(3, 3)}}, other)
    with pytest.raises(MarionetteError, match="not the DisPose CMP checkpoint") as error:
        load_cmp(other, tiny_cmp_config())
    assert CMP_FILE in str(error.value) and CMP_FOLDER in str(error.value)
    reshaped = {k: v for k, v in tiny.state_dict().items()}
    reshaped["flow_decoder.head.bias"] = torch.zeros(5)
    torch.save(reshaped, other)
    with pytest.raises(MarionetteError, match="1 wrong shape"):
        load_cmp(other, tiny_cmp_config())
    truncated = tmp_path / "truncated.pth.tar"
    torch.save(tiny.state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:1000])
    with pytest.raises(MarionetteError, match="truncated"):
        load_cmp(truncated, tiny_cmp_config())
