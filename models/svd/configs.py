"""UNet configurations for the SVD-xt family (StableAnimator, MimicMotion), shipped in code.

The full-size values are those of `stabilityai/stable-video-diffusion-img2vid-xt` `unet/config.json`: every
released StableAnimator and MimicMotion UNet checkpoint has exactly the key names and shapes this builds.
Nothing is fetched at run time.
"""
import copy

_SVD_XT_UNET = {
    "in_channels": 8,  # 4 noisy latent channels + 4 reference-image latent channels
    "out_channels": 4,
    "down_block_types": [
        "CrossAttnDownBlockSpatioTemporal",
        "CrossAttnDownBlockSpatioTemporal",
        "CrossAttnDownBlockSpatioTemporal",
        "DownBlockSpatioTemporal",
    ],
    "up_block_types": [
        "UpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
    ],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "cross_attention_dim": 1024,
    # 64 channels per head at every level; the class default (5, 10, 10, 20) is not what SVD-xt uses.
    "num_attention_heads": [5, 10, 20, 20],
    "transformer_layers_per_block": 1,
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 768,  # 3 micro-conditioning ids x 256
    "num_frames": 25,
    "sample_size": 96,
}


def svd_xt_unet_config() -> dict:
    """The SVD-xt UNet config (a fresh copy, safe to modify)."""
    return copy.deepcopy(_SVD_XT_UNET)


def tiny_unet_config() -> dict:
    """A structurally complete but tiny SVD-style UNet for CPU tests.

    Same block kinds as SVD-xt (cross-attention down, plain down, mid with attention, plain up,
    cross-attention up), 32/64 channels so GroupNorm(32) still divides them, 16 channels per head.
    """
    return {
        "in_channels": 8,
        "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"],
        "up_block_types": ["UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"],
        "block_out_channels": [32, 64],
        "layers_per_block": 1,
        "cross_attention_dim": 24,
        "num_attention_heads": [2, 4],
        "transformer_layers_per_block": 1,
        "addition_time_embed_dim": 8,
        "projection_class_embeddings_input_dim": 24,
        "num_frames": 4,
        "sample_size": 8,
    }
