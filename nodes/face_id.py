"""IDAdapterApply: StableAnimator's face identity (antelopev2 embedding -> Face Encoder -> 4 face tokens)."""
from __future__ import annotations

import numpy as np
import torch

import comfy.model_management as mm
import folder_paths

from ..models.errors import MarionetteError
from ..models.pipelines.svd_animation import SVDAnimation
from .antelopev2 import antelopev2_sessions, insightface_root, reference_uint8
from .host import FACE_TOKENS_KEY, load_on_device
from .model_cache import cached, file_key, files_key
from .combos import NO_FACE, validate
from .model_paths import ANIMATION_SOURCES, model_choices, require_model
from .tiny_models import tiny_choices
from .socket_types import SVD_ANIMATION_MODEL

TINY_FACE_ENCODER = "tiny random (testing only)"
OFFICIAL_FACE_ENCODER = ("Animation/face_encoder.pth",)


def _face_encoder(choice: str, net: SVDAnimation):
    """StableAnimator's Face Encoder as a held ModelPatcher, in the model's dtype."""
    from ..models.pipelines.svd_models import load_face_encoder
    from ..models.stableanimator.face_id import tiny_face_encoder
    token_dim, dtype = int(net.unet.config.cross_attention_dim), net.get_dtype()
    if choice == TINY_FACE_ENCODER:
        if not net.tiny:
            raise MarionetteError("The tiny random face encoder only fits the tiny test model.",
                                  "Pick Animation/face_encoder.pth (StableAnimator's face encoder).")
        return cached("face_encoder", (choice, token_dim, str(dtype)),
                      lambda: tiny_face_encoder(token_dim, dtype=dtype))
    path = require_model("animation", choice, ANIMATION_SOURCES["stableanimator"])
    patcher = cached("face_encoder", (file_key(path), str(dtype)), lambda: load_face_encoder(path, dtype))
    encoder = patcher.model
    if encoder.cross_attention_dim != token_dim:
        raise MarionetteError(f"{choice} makes {encoder.cross_attention_dim}-wide face tokens but this UNet "
                              f"takes {token_dim}-wide ones.",
                              f"Pick '{TINY_FACE_ENCODER}' for the tiny test model, or load StableAnimator's "
                              "real UNet in SVD Animation Loader.")
    return patcher


class IDAdapterApply:
    DESCRIPTION = ("StableAnimator only: finds the largest face in the reference with insightface antelopev2 "
                   "(models/insightface/models/antelopev2), encodes its raw ArcFace embedding with the "
                   "reference's CLIP embedding through StableAnimator's Face Encoder, and gives the model the 4 "
                   "face tokens. SVD Animate Sampler then uses them in the conditional pass (zeros in the "
                   "unconditional one), as the official pipeline does.")
    CATEGORY = "Marionette/Animation"
    FUNCTION = "apply"
    RETURN_TYPES = (SVD_ANIMATION_MODEL,)
    RETURN_NAMES = ("model",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (SVD_ANIMATION_MODEL, {"tooltip": "A StableAnimator model from SVD Animation Loader."}),
            "reference_image": ("IMAGE", {"tooltip": "The same reference frame as the sampler's."}),
            "face_encoder": (tiny_choices(TINY_FACE_ENCODER) + model_choices("animation", OFFICIAL_FACE_ENCODER), {
                "default": OFFICIAL_FACE_ENCODER[0],
                "tooltip": "StableAnimator's face_encoder.pth in models/animation; the tiny random one only "
                           "fits the tiny test model."}),
            "face_analysis": (["antelopev2"], {"tooltip": "insightface pack in models/insightface/models."}),
            "no_face": NO_FACE.input("When the reference shows no face:"),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, no_face=None):
        return validate(no_face=(NO_FACE, no_face))

    @classmethod
    def IS_CHANGED(cls, face_encoder=None, **kwargs):
        """The files' fingerprint (face encoder, antelopev2 pack): replaced files make the node run again."""
        from ..models.stableanimator.face_id import pack_folder
        return files_key(folder_paths.get_full_path("animation", face_encoder or ""),
                         pack_folder(insightface_root()))

    def apply(self, model, reference_image, face_encoder, face_analysis, no_face):
        net = getattr(model, "model", None)
        if not isinstance(net, SVDAnimation):
            raise MarionetteError("The model input is not an SVD animation model.",
                                  "Connect the output of SVD Animation Loader.")
        if net.animation != "stableanimator":
            raise MarionetteError(f"IDAdapterApply needs StableAnimator; this model is {net.animation}, which "
                                  "has no face adapter.",
                                  "Set animation to StableAnimator in SVD Animation Loader, or remove this node.")
        if face_analysis != "antelopev2":
            raise MarionetteError(f"Unknown face analysis pack '{face_analysis}'.", "Pick antelopev2.")
        image = reference_uint8(reference_image)
        sessions = antelopev2_sessions(insightface_root())
        load_on_device(sessions)  # ComfyUI makes room for GPU sessions (and may drop them later)
        embedding, box = sessions.model.get().largest_face_embedding(image)
        if embedding is None and NO_FACE.key(no_face, "no_face") != "zeros":
            raise MarionetteError(
                "No face found in the reference image, so StableAnimator cannot keep the identity.",
                "Use a reference where the face is visible and not tiny, or set no_face to "
                "'zeros' to go on with a zero face embedding as the official code does.")
        tokens = self._tokens(model, net, face_encoder, embedding, reference_image)
        patched = model.clone()
        patched.model_options[FACE_TOKENS_KEY] = tokens
        return {"ui": {"marionette_face": [self._report(embedding, box)]}, "result": (patched,)}

    @staticmethod
    def _tokens(patcher, net, choice, embedding, reference) -> torch.Tensor:
        from ..models.svd.conditioning import clip_image_embedding
        from ..models.stableanimator.face_id import face_tokens
        encoder = _face_encoder(choice, net)
        load_on_device(patcher, encoder)  # the CLIP image encoder runs on the model's device
        clip = clip_image_embedding(net.image_encoder, reference.float().cpu(), net.clip_mean, net.clip_std)
        tokens = face_tokens(encoder.model, embedding, clip)
        return tokens.to(mm.intermediate_device())

    @staticmethod
    def _report(embedding, box) -> dict:
        if embedding is None:
            return {"face": False, "note": "no face found: using a zero face embedding, as the official code "
                                           "does; the identity is not preserved"}
        return {"face": True, "box": [round(float(v), 1) for v in box],
                "embedding_norm": round(float(np.linalg.norm(embedding)), 3)}
