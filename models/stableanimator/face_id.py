"""StableAnimator's face identity input: the antelopev2 ArcFace embedding of the reference's largest face,
and the Face Encoder that turns it (with the reference's CLIP embedding) into the UNet's 4 face tokens.

insightface is an optional dependency (install it with `pip install --no-deps insightface`, its
declared dependencies pull the GUI build of OpenCV). Its model pack must be in
`<root>/models/antelopev2/` (ComfyUI: `ComfyUI/models/insightface/models/antelopev2`).

Colour order: insightface (like OpenCV) expects BGR images, and StableAnimator was TRAINED on BGR
(`animation_dataset.py`). The official inference scripts feed RGB by accident (`cv2.imread` followed by
`COLOR_RGB2BGR`, which swaps BGR back to RGB), so our embedding can differ slightly from theirs; we follow
training. `largest_face_embedding` takes RGB (ComfyUI's IMAGE order) and swaps to BGR itself.

Like the official pipeline we keep the RAW `face.embedding` (not the unit-length `normed_embedding`),
pick the face with the largest box area, and use zeros(512) when the caller accepts a faceless image.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from ..errors import MarionetteError
from ..core.seeding import seeded
from .face_encoder import ID_EMBED_DIM, NUM_FACE_TOKENS, FaceEncoder

PACK = "antelopev2"
PACK_FILES = ("1k3d68.onnx", "2d106det.onnx", "genderage.onnx", "glintr100.onnx", "scrfd_10g_bnkps.onnx")
NEEDED_FILES = ("scrfd_10g_bnkps.onnx", "glintr100.onnx")  # detector + ArcFace; the other three are unused
PACK_SOURCE = ("insightface's antelopev2 model pack (antelopev2.zip from the insightface model zoo, "
               "github.com/deepinsight/insightface); unzip it so the .onnx files lie directly in the folder, "
               "not in a nested antelopev2/antelopev2")
COMFY_FOLDER = "ComfyUI/models/insightface/models/antelopev2"
DET_SIZE = (640, 640)  # official: FaceAnalysis.prepare(ctx_id=..., det_size=(640, 640))
TINY_DIM_HEAD = 8  # the tiny model's token width (24) is not a multiple of the official 64


def pack_folder(root: str) -> str:
    return os.path.join(root, "models", PACK)


def check_pack(root: str) -> str:
    """The antelopev2 folder under `root`, or an error naming the folder, the files and the source."""
    folder = pack_folder(root)
    missing = [f for f in NEEDED_FILES if not os.path.isfile(os.path.join(folder, f))]
    if not missing:
        return folder
    nested = os.path.join(folder, PACK)
    if all(os.path.isfile(os.path.join(nested, f)) for f in NEEDED_FILES):
        raise MarionetteError(f"The antelopev2 files are in a nested folder {nested}.",
                              f"Move the .onnx files up one level into {folder} ({COMFY_FOLDER}).")
    where = f"{folder} is missing {', '.join(missing)}" if os.path.isdir(folder) else f"{folder} does not exist"
    raise MarionetteError(
        f"The insightface antelopev2 face models were not found: {where}.",
        f"Put {', '.join(PACK_FILES)} into {COMFY_FOLDER} ({folder}). Source: {PACK_SOURCE}.")


def _face_analysis_class():
    try:
        from insightface.app import FaceAnalysis
    except ImportError as error:
        raise MarionetteError(f"The insightface package is not installed ({error}).",
                              "Install it with: pip install --no-deps insightface (then restart ComfyUI); "
                              "it also needs onnxruntime, onnx and scikit-image.") from error
    return FaceAnalysis


def default_providers() -> list[str]:
    """CUDA when onnxruntime has it, always with the CPU as fallback."""
    import onnxruntime
    available = onnxruntime.get_available_providers()
    return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []) + ["CPUExecutionProvider"]


def box_area(box) -> float:
    return float((box[2] - box[0]) * (box[3] - box[1]))


class FaceEmbedder:
    """antelopev2 through insightface's FaceAnalysis: the raw ArcFace (glintr100) embedding of the largest
    face. Only the detector and the recognition model are loaded (the landmark and gender/age models do not
    change the embedding)."""

    def __init__(self, root: str, providers: list[str] | None = None):
        check_pack(root)
        face_analysis = _face_analysis_class()
        self.providers = providers or default_providers()
        self.app = face_analysis(name=PACK, root=root, providers=self.providers,
                                 allowed_modules=["detection", "recognition"])
        self.prepared = False

    def prepare(self, ctx_id: int | None = None, det_size: tuple[int, int] = DET_SIZE) -> "FaceEmbedder":
        if ctx_id is None:
            ctx_id = 0 if self.providers[0] == "CUDAExecutionProvider" else -1
        self.app.prepare(ctx_id=ctx_id, det_size=tuple(det_size))
        self.prepared = True
        return self

    def largest_face_embedding(self, image_rgb_uint8: np.ndarray):
        """(raw embedding [512] float32, box [x0, y0, x1, y1]) of the largest face, or (None, None)."""
        image = np.asarray(image_rgb_uint8)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise MarionetteError(f"Face detection needs an HxWx3 uint8 RGB image; got {image.dtype} "
                                  f"{tuple(image.shape)}.", "Pass one RGB frame as uint8.")
        if not self.prepared:
            self.prepare()
        bgr = np.ascontiguousarray(image[:, :, ::-1])  # insightface expects BGR (see the module docstring)
        faces = self.app.get(bgr)
        if not faces:
            return None, None
        face = max(faces, key=lambda f: box_area(f.bbox))
        embedding = np.asarray(face.embedding, dtype=np.float32).reshape(-1).copy()
        if embedding.shape[0] != ID_EMBED_DIM:
            raise MarionetteError(f"The face recognition model gave a {embedding.shape[0]}-d embedding; "
                                  f"StableAnimator needs {ID_EMBED_DIM}.",
                                  f"Use the antelopev2 glintr100.onnx ({PACK_SOURCE}).")
        return embedding, np.asarray(face.bbox, dtype=np.float32).copy()


# --------------------------------------------------------------------------------------- encoder
def tiny_face_encoder(token_dim: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> FaceEncoder:
    """A random FaceEncoder for the tiny model (its tokens are `token_dim` wide). Unlike the official
    init, the output projection is random too, so the tokens depend on the face embedding."""
    with seeded(seed):
        encoder = FaceEncoder(cross_attention_dim=token_dim, clip_embeddings_dim=token_dim,
                              dim_head=TINY_DIM_HEAD)
        nn.init.normal_(encoder.fusion_model.proj_out.weight, std=0.2)
    return nn.Module.to(encoder, dtype=dtype).eval().requires_grad_(False)


@torch.no_grad()
def face_tokens(encoder: FaceEncoder, embedding, clip_embeds: torch.Tensor) -> torch.Tensor:
    """[1, 4, C] face tokens from one raw 512-d embedding (None = no face: zeros, as the official code)
    and the reference's CLIP `image_embeds` ([1, 1, C] or [1, C])."""
    if embedding is None:
        embedding = np.zeros(ID_EMBED_DIM, np.float32)
    id_embeds = torch.as_tensor(np.asarray(embedding, np.float32)).reshape(1, -1)
    tokens = encoder(id_embeds, clip_embeds)
    if tokens.shape[1] != NUM_FACE_TOKENS:
        raise MarionetteError(f"The face encoder made {tokens.shape[1]} tokens; the UNet needs {NUM_FACE_TOKENS}.",
                              "Use StableAnimator's Animation/face_encoder.pth.")
    return tokens
