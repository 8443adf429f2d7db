"""StableAnimator's UNet: the SVD UNet with PoseNet residual plus the ID adapter in its 16 spatial
cross-attentions (2 extra `processor.id_to_{k,v}.weight` each; 1460 tensors in `Animation/unet.pth`)."""
from ..svd.unet import PoseSVDUNet, build_unet
from .id_adapter import NUM_FACE_TOKENS, install_id_adapter


def build_stableanimator_unet(config: dict, num_face_tokens: int = NUM_FACE_TOKENS) -> PoseSVDUNet:
    """The UNet whose context is 1 CLIP token + `num_face_tokens` face tokens (build under the meta
    device before a strict checkpoint load)."""
    unet = build_unet(config)
    install_id_adapter(unet, num_face_tokens=num_face_tokens)
    return unet
