"""Values that travel between our nodes and hold ComfyUI objects (other socket values are library types)."""
from __future__ import annotations

from dataclasses import dataclass

from ..models.pipelines.dispose import DisPoseGuidance


@dataclass
class SVDControl:
    """MARIONETTE_SVD_CONTROL: DisPose's guidance for SVD Animate Sampler, with the ModelPatcher that holds its
    ControlNet so the sampler can let ComfyUI load it next to the UNet."""
    patcher: object
    guidance: DisPoseGuidance
