"""CMP (Conditional Motion Propagation, Zhan et al. 2019): the frozen network DisPose uses to turn a
reference image plus a few keypoint displacements into a dense flow field.

The architecture is the one of the released checkpoint `ckpt_iter_42000.pth.tar`
(`semiauto_annot/resnet50_vip+mpii_liteflow`, shipped with MOFA-Video-Hybrid and used by DisPose):
- image encoder: ResNet-50 (Bottleneck [3,4,6,3]) with dilated layer3 (2) and layer4 (4), so it
  stays at output stride 8, then a 1x1 `conv5` 2048 -> 256;
- sparse encoder: a shallow net on 4 channels (dx, dy and a 2-channel mask), stride 8, 16 channels;
- decoder: four pooled branches (1/2/4/8) over the concatenated 272 channels, fused, then two skip
  stages from the ResNet stem (1/2) and layer1 (1/4), ending in 198 = 2 x 99 bin logits at 1/2;
- the bins become a flow by a softmax expectation per axis over bin centres spanning +-fmax (50 px at
  the 384 working size), so the flow saturates at about +-49.5 px.

Module names follow the released state dict without its `module.` prefix (the official code wraps the
net in a module with attribute `module`); `load_cmp` strips that prefix.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MarionetteError
from ..core.checkpoints import load_state_dict_file

CMP_FILE = "ckpt_iter_42000.pth.tar"
CMP_FOLDER = "ComfyUI/models/dispose"
CMP_SOURCE = ("HF MyNiuuu/MOFA-Video-Hybrid, models/cmp/experiments/semiauto_annot/"
              "resnet50_vip+mpii_liteflow/checkpoints/")
CMP_SIZE = 384  # the square working size DisPose runs CMP at
PREFIX = "module."
BN_COUNTER = "num_batches_tracked"  # BatchNorm buffers the released file (torch 0.4 era) does not hold


@dataclass(frozen=True)
class CMPConfig:
    """Sizes of the CMP network; the defaults are the released checkpoint's."""
    layers: tuple[int, int, int, int] = (3, 4, 6, 3)  # Bottleneck blocks per ResNet stage
    stem: int = 64  # ResNet stem width (planes of layer1; layer widths are stem x 1/2/4/8, x4 expansion)
    image_dim: int = 256  # img_enc_dim
    sparse_hidden: int = 16  # width of the sparse encoder's first conv
    sparse_dim: int = 16  # sparse_enc_dim
    decoder_dim: int = 128  # width of each pooled decoder branch
    nbins: int = 99
    fmax: float = 50.0


CMP_CONFIG = CMPConfig()


def tiny_cmp_config() -> CMPConfig:
    """A few-thousand-parameter CMP with every part of the real one, for tests."""
    return CMPConfig(layers=(1, 1, 1, 1), stem=8, image_dim=8, sparse_hidden=4, sparse_dim=4, decoder_dim=8,
                     nbins=9, fmax=50.0)


# ------------------------------------------------------------------------------------ network
def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1, 3x3 strided/dilated, 1x1 x4) with an optional projection shortcut."""

    def __init__(self, cin: int, planes: int, stride: int = 1, dilation: int = 1, project: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride=stride, bias=False),
                                         nn.BatchNorm2d(planes * 4)) if project else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ImageEncoder(nn.Module):
    """Dilated ResNet at output stride 8; also returns the stem (1/2) and layer1 (1/4) features."""

    def __init__(self, config: CMPConfig):
        super().__init__()
        s = config.stem
        self.conv1 = nn.Conv2d(3, s, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(s)
        widths, strides, dilations = (s, 2 * s, 4 * s, 8 * s), (1, 2, 1, 1), (1, 1, 2, 4)
        cin = s
        for i, (planes, stride, dilation, blocks) in enumerate(zip(widths, strides, dilations, config.layers)):
            stage = [Bottleneck(cin, planes, stride, dilation, project=True)]
            stage += [Bottleneck(planes * 4, planes, dilation=dilation) for _ in range(blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
            cin = planes * 4
        self.conv5 = nn.Conv2d(cin, config.image_dim, 1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        stem = F.relu(self.bn1(self.conv1(image)))
        layer1 = self.layer1(F.max_pool2d(stem, 3, stride=2, padding=1))
        deep = self.layer4(self.layer3(self.layer2(layer1)))
        return self.conv5(deep), stem, layer1


class SparseEncoder(nn.Module):
    """Shallow conv net on the sparse flow + mask (4 channels), stride 8."""

    def __init__(self, config: CMPConfig):
        super().__init__()
        h = config.sparse_hidden
        self.features = nn.Sequential(
            nn.Conv2d(4, h, 5, stride=2, padding=2), nn.BatchNorm2d(h), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(h, config.sparse_dim, 3, padding=1), nn.BatchNorm2d(config.sparse_dim), nn.ReLU(inplace=True),
            nn.AvgPool2d(2))

    def forward(self, sparse: torch.Tensor) -> torch.Tensor:
        return self.features(sparse)


class ImageFeatures(NamedTuple):
    """What the decoder needs from the image alone: computed once per reference, reused per frame."""
    encoding: torch.Tensor  # [1, image_dim, h/8, w/8]
    skip4: torch.Tensor  # skipconv4(layer1) [1, d, h/4, w/4]
    skip2: torch.Tensor  # skipconv2(stem) [1, d/4, h/2, w/2]


class MotionDecoder(nn.Module):
    """Pooled propagation branches at 1/8 .. 1/64, fused, refined with the two image skips."""

    def __init__(self, config: CMPConfig):
        super().__init__()
        d, cin = config.decoder_dim, config.image_dim + config.sparse_dim
        self.decoder1 = nn.Sequential(*_conv_bn_relu(cin, d), *_conv_bn_relu(d, d), *_conv_bn_relu(d, d))
        for pool in (2, 4, 8):
            branch = [nn.MaxPool2d(pool), *_conv_bn_relu(cin, d), *_conv_bn_relu(d, d), *_conv_bn_relu(d, d)]
            setattr(self, f"decoder{pool}", nn.Sequential(*branch))
        self.fusion8 = nn.Sequential(*_conv_bn_relu(4 * d, 2 * d))
        self.skipconv4 = nn.Sequential(*_conv_bn_relu(4 * config.stem, d))
        self.fusion4 = nn.Sequential(*_conv_bn_relu(2 * d + d, d))
        self.skipconv2 = nn.Sequential(*_conv_bn_relu(config.stem, d // 4))
        self.fusion2 = nn.Sequential(*_conv_bn_relu(d + d // 4, d // 2))
        self.head = nn.Conv2d(d // 2, 2 * config.nbins, 1)

    def forward(self, x: torch.Tensor, skip4: torch.Tensor, skip2: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        branches = [self.decoder1(x)] + [_resize(getattr(self, f"decoder{p}")(x), size) for p in (2, 4, 8)]
        f8 = self.fusion8(torch.cat(branches, 1))
        f4 = self.fusion4(torch.cat([_resize(f8, skip4.shape[-2:]), _batch(skip4, len(x))], 1))
        f2 = self.fusion2(torch.cat([_resize(f4, skip2.shape[-2:]), _batch(skip2, len(x))], 1))
        return self.head(f2)


def bin_centres(config: CMPConfig) -> torch.Tensor:
    """The flow value of each bin: nbins centres evenly spaced inside [-fmax, fmax]."""
    step = 2 * config.fmax / config.nbins
    return torch.arange(config.nbins, dtype=torch.float32) * step - config.fmax + step / 2


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def _batch(x: torch.Tensor, n: int) -> torch.Tensor:
    """Image features of one reference shared by a batch of sparse inputs."""
    return x if len(x) == n else x.expand(n, *x.shape[1:])


class CMPNet(nn.Module):
    """The CMP network. `forward(image, sparse)` returns the bin logits [B, 2*nbins, h/2, w/2];
    `flow(...)` turns logits into a flow at the input size. `image` is RGB in [-1, 1] (DisPose feeds
    `2*x-1`, no ImageNet normalisation); `sparse` is [B, 4, h, w] = (dx, dy) in pixels at the input size
    at the guide pixels, then a 2-channel mask that is 1 there."""

    def __init__(self, config: CMPConfig = CMP_CONFIG):
        super().__init__()
        self.config = config
        self.image_encoder = ImageEncoder(config)
        self.flow_encoder = SparseEncoder(config)
        self.flow_decoder = MotionDecoder(config)

    def encode_image(self, image: torch.Tensor) -> ImageFeatures:
        encoding, stem, layer1 = self.image_encoder(image)
        return ImageFeatures(encoding, self.flow_decoder.skipconv4(layer1), self.flow_decoder.skipconv2(stem))

    def decode(self, features: ImageFeatures, sparse: torch.Tensor) -> torch.Tensor:
        x = torch.cat([_batch(features.encoding, len(sparse)), self.flow_encoder(sparse)], 1)
        return self.flow_decoder(x, features.skip4, features.skip2)

    def forward(self, image: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode_image(image), sparse)

    def logits_to_flow(self, logits: torch.Tensor, size) -> torch.Tensor:
        """Softmax expectation per axis over the bin centres, then bilinear (align_corners) to `size`."""
        n = self.config.nbins
        centres = bin_centres(self.config).to(logits.device, logits.dtype).view(1, n, 1, 1)
        flow = torch.cat([(logits[:, :n].softmax(1) * centres).sum(1, keepdim=True),
                          (logits[:, n:].softmax(1) * centres).sum(1, keepdim=True)], 1)
        return flow if tuple(flow.shape[-2:]) == tuple(size) else _resize(flow, size)

    def flow(self, features: ImageFeatures, sparse: torch.Tensor) -> torch.Tensor:
        """Dense flow [B, 2, h, w] in pixels of the input size for each sparse input."""
        return self.logits_to_flow(self.decode(features, sparse), sparse.shape[-2:])


# ------------------------------------------------------------------------------------ loading
def cmp_state_names(config: CMPConfig = CMP_CONFIG) -> dict[str, tuple[int, ...]]:
    """Every state tensor of the network (no prefix) with its shape, in module order."""
    with torch.device("meta"):
        net = CMPNet(config)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def _missing_file_error(path: str) -> MarionetteError:
    return MarionetteError(
        f"The CMP checkpoint was not found at {path}.",
        f"Download {CMP_FILE} ({CMP_SOURCE}) into {CMP_FOLDER}.")


def _check_names(state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], name: str) -> None:
    missing = [k for k in expected if k not in state and not k.endswith(BN_COUNTER)]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {expected[k]})" for k in expected
             if k in state and tuple(state[k].shape) != expected[k]]
    if not (missing or unexpected or wrong):
        return
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if keys:
            parts.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
    raise MarionetteError(
        f"{name} is not the DisPose CMP checkpoint: {'; '.join(parts)}.",
        f"Use {CMP_FILE} from {CMP_SOURCE} (the resnet50_vip+mpii_liteflow model) in {CMP_FOLDER}.")


def load_cmp(path: str | os.PathLike, config: CMPConfig = CMP_CONFIG,
             dtype: torch.dtype = torch.float32) -> CMPNet:
    """The CMP network with the weights of `path` (`ckpt_iter_42000.pth.tar` or any file with the same
    tensors, `module.`-prefixed or not), on the CPU in eval mode without gradients.

    The file is read with `torch.load(map_location="cpu", weights_only=True)` (it was saved from CUDA)
    or safetensors; the tensor names and shapes must match exactly (the BatchNorm batch counters, absent
    from the released file, are optional)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise _missing_file_error(path)
    state = load_state_dict_file(path)
    if all(k.startswith(PREFIX) for k in state):
        state = {k[len(PREFIX):]: v for k, v in state.items()}
    _check_names(state, cmp_state_names(config), os.path.basename(path))
    with torch.device("meta"):
        net = CMPNet(config)
    net = net.to_empty(device="cpu")
    for name, buffer in net.named_buffers():
        if name.endswith(BN_COUNTER):
            buffer.zero_()
    net.load_state_dict(state, strict=False)  # names were checked above; only the counters may be absent
    return net.to(dtype).eval().requires_grad_(False)


def random_cmp(config: CMPConfig = CMP_CONFIG, seed: int = 0) -> CMPNet:
    """An untrained CMP with seeded random weights and non-trivial BatchNorm statistics (so eval-mode
    normalisation matters), for tests and timing; its flows are meaningless."""
    generator = torch.Generator().manual_seed(seed)

    def randn(like: torch.Tensor) -> torch.Tensor:
        return torch.randn(like.shape, generator=generator)

    net = CMPNet(config)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(1 + 0.1 * randn(module.weight))
                module.bias.copy_(0.1 * randn(module.bias))
                module.running_mean.copy_(0.1 * randn(module.running_mean))
                module.running_var.copy_(0.5 + 0.5 * randn(module.running_var).abs())
            elif isinstance(module, nn.Conv2d):
                module.weight.copy_(randn(module.weight) / module.weight[0].numel() ** 0.5)
                if module.bias is not None:
                    module.bias.copy_(0.1 * randn(module.bias))
    return net.eval().requires_grad_(False)
