"""The ArcFace IResNet used by StableAnimator's HJB face optimisation (`Animation/glintr100_torch.pth`).

insightface's `arcface_torch` R100 trained on Glint360K: a pre-activation ("improved") ResNet with PReLU,
stages of 3/13/30/3 blocks at 64/128/256/512 channels, each stage halving the resolution, then BN →
flatten → Linear(512·7·7 → 512) → BatchNorm1d. Input: RGB faces at 112×112 in [-1, 1]; output: the raw
512-d embedding (compare with cosine similarity). Module names follow the released state dict exactly
(`conv1`, `bn1`, `prelu`, `layer{1..4}.{i}.{bn1,conv1,bn2,prelu,conv2,bn3,downsample.{0,1}}`, `bn2`, `fc`,
`features`), BatchNorm `num_batches_tracked` included, so the file loads strictly.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from ..errors import MarionetteError
from ..core.checkpoints import load_state_dict_file
from ..core.seeding import seeded

FACE_SIZE = 112  # input side; four stride-2 stages leave 7x7
R100_BLOCKS = (3, 13, 30, 3)
R100_WIDTHS = (64, 128, 256, 512)
EMBEDDING_SIZE = 512
BN_EPS = 1e-5
OFFICIAL_FILE = "glintr100_torch.pth"


class IBasicBlock(nn.Module):
    """BN → 3×3 conv → BN → PReLU → 3×3 conv (strided) → BN, plus the (projected) input."""

    def __init__(self, in_channels: int, channels: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, eps=BN_EPS)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.prelu = nn.PReLU(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(channels, eps=BN_EPS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Module):
    """ArcFace IResNet; the defaults build R100 (glintr100). Smaller `blocks`/`widths` give test models."""

    def __init__(self, blocks=R100_BLOCKS, widths=R100_WIDTHS, embedding_size: int = EMBEDDING_SIZE):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0], eps=BN_EPS)
        self.prelu = nn.PReLU(widths[0])
        channels = widths[0]
        for index, (count, width) in enumerate(zip(blocks, widths), start=1):
            stage = [IBasicBlock(channels, width, stride=2)] + [IBasicBlock(width, width, 1) for _ in range(count - 1)]
            self.add_module(f"layer{index}", nn.Sequential(*stage))
            channels = width
        self.bn2 = nn.BatchNorm2d(channels, eps=BN_EPS)
        side = FACE_SIZE // 2 ** len(blocks)
        self.fc = nn.Linear(channels * side * side, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=BN_EPS)

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        """faces [N, 3, 112, 112] RGB in [-1, 1] -> embeddings [N, embedding_size] (not normalised)."""
        if faces.ndim != 4 or tuple(faces.shape[1:]) != (3, FACE_SIZE, FACE_SIZE):
            raise MarionetteError(f"The face embedder takes [N, 3, {FACE_SIZE}, {FACE_SIZE}] crops, got "
                                  f"{tuple(faces.shape)}.", f"Resize face crops to {FACE_SIZE}x{FACE_SIZE}.")
        x = self.prelu(self.bn1(self.conv1(faces)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.features(self.fc(torch.flatten(self.bn2(x), 1)))


def load_iresnet100(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> IResNet:
    """StableAnimator's `glintr100_torch.pth` as an eval-mode, frozen R100 (strict load, weights only)."""
    state_dict = load_state_dict_file(path)
    with torch.device("meta"):
        model = IResNet()
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [k for k in expected if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        name = os.path.basename(os.fspath(path))
        details = "; ".join(f"{label}: {', '.join(keys[:4])}" for label, keys in
                            (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys)
        raise MarionetteError(
            f"{name} is not the ArcFace R100 of StableAnimator's HJB face optimisation ({details}).",
            f"Use {OFFICIAL_FILE} from Hugging Face FrancisRing/StableAnimator (folder Animation/).")
    model.load_state_dict(state_dict, strict=True, assign=True)
    return nn.Module.to(model, dtype=dtype).eval().requires_grad_(False)


def tiny_iresnet(seed: int = 0) -> IResNet:
    """A small random IResNet (no download) for tests and the demo; its embeddings mean nothing."""
    with seeded(seed):
        model = IResNet(blocks=(1, 1, 1, 1), widths=(8, 8, 16, 16), embedding_size=32)
    return model.eval().requires_grad_(False)
