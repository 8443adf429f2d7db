"""LoadReference: the still image of the person to animate, sized for the models, with masks."""
from __future__ import annotations

import hashlib
import os

import numpy as np
from PIL import Image, ImageOps

import folder_paths

from ..models.errors import MarionetteError
from ..models.reference import PRESET_NAMES, prepare_reference
from ..models.vision.face_detect import FaceDetector
from ..models.vision.image import to_rgb_uint8
from ..models.vision.segmentation import PersonSegmenter
from .combos import REFERENCE_FIT
from .host import check_interrupt, to_image_tensor, to_mask_tensor
from .model_paths import mediapipe_dir
from .socket_types import FACE_BOX

SEGMENTER, FACE_MODEL = "selfie_segmentation.tflite", "face_detection_short_range.tflite"
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
_models: dict = {}


def _model(cls, filename):
    if filename not in _models:
        _models[filename] = cls(os.path.join(mediapipe_dir((filename,)), filename))
    return _models[filename]


def _body_keypoints(picture: np.ndarray):
    """OpenPose-18 body [18, 3] of the photo's most confident person (embedded BlazePose), or None."""
    from ..models.pose.blazepose import BlazePoseEstimator, required_files
    if "body" not in _models:
        files = required_files(hands=False, face=False)
        _models["body"] = BlazePoseEstimator(mediapipe_dir(files), hands=False, face=False)
    _models["body"].reset()
    frame = _models["body"].frame(picture, track=False)
    return frame.body[0] if frame.num_people else None


def input_images() -> list[str]:
    folder = folder_paths.get_input_directory()
    return sorted(f for f in os.listdir(folder)
                  if f.lower().endswith(IMAGE_EXTS) and os.path.isfile(os.path.join(folder, f)))


def read_image_file(name: str) -> np.ndarray:
    """uint8 RGB of an input-folder image; EXIF rotation applied, alpha composited over white."""
    path = folder_paths.get_annotated_filepath(name)
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im = im.convert("RGBA") if im.mode in ("RGBA", "LA", "P") else im.convert("RGB")
            array = np.asarray(im)
    except (OSError, ValueError) as e:
        raise MarionetteError(f"Could not read the image '{name}': {e}.", "Upload a PNG, JPEG or WebP image.") from e
    return to_rgb_uint8(array.astype(np.float32) / 255.0)[0]


class LoadReference:
    DESCRIPTION = ("Loads the reference photo of the person (upload, or the optional IMAGE input), fits it to a "
                   "model-friendly size (multiples of 64) and finds the person mask and the face box with the "
                   "embedded MediaPipe models (the face is chosen by confidence and by the body's head "
                   "keypoints, on the original photo, so every size and fit gives the same face). The status "
                   "names any keypoints, hands, feet or head top that the fit cuts off.")
    CATEGORY = "Marionette/Reference"
    FUNCTION = "load"
    RETURN_TYPES = ("IMAGE", "MASK", "MASK", FACE_BOX)
    RETURN_NAMES = ("image", "person_mask", "face_mask", "face_bbox")
    OUTPUT_TOOLTIPS = ("The fitted reference image.", "Person silhouette, 0..1.",
                       "Soft face region, 0..1 (empty if no face was found).",
                       "Face box [x0, y0, x1, y1] in output pixels, or None if no face was found.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": (input_images(), {"image_upload": True}),
                "size": (list(PRESET_NAMES), {"default": "576x1024", "tooltip":
                         "576x1024 is the MimicMotion/StableAnimator portrait size; auto picks portrait or "
                         "landscape from the photo; custom uses width and height."}),
                "fit": REFERENCE_FIT.input("How the photo is brought to the size."),
                "width": ("INT", {"default": 576, "min": 64, "max": 4096, "step": 64}),
                "height": ("INT", {"default": 1024, "min": 64, "max": 4096, "step": 64}),
            },
            "optional": {"reference_image": ("IMAGE", {"tooltip": "Overrides the uploaded file when connected."})},
        }

    @classmethod
    def IS_CHANGED(cls, image, **kwargs):
        if not image or not folder_paths.exists_annotated_filepath(image):
            return ""
        with open(folder_paths.get_annotated_filepath(image), "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()

    @classmethod
    def VALIDATE_INPUTS(cls, image, fit=None):
        # an empty choice is fine: the IMAGE input may provide the picture (checked when running)
        if image and not folder_paths.exists_annotated_filepath(image):
            return f"Invalid image file: {image}"
        return REFERENCE_FIT.check(fit, "fit")

    def load(self, image, size, fit, width, height, reference_image=None):
        if reference_image is not None:
            frames = to_rgb_uint8(reference_image)
            picture = frames[0]  # a reference is one picture: extra frames of a batch are ignored
        elif image:
            picture = read_image_file(image)
        else:
            raise MarionetteError("LoadReference has no image.", "Upload a photo or connect an IMAGE input.")
        check_interrupt()
        ref = prepare_reference(picture, size, REFERENCE_FIT.value(fit, "fit"), _model(PersonSegmenter, SEGMENTER),
                                _model(FaceDetector, FACE_MODEL), _body_keypoints, custom=(width, height))
        h, w = ref.image.shape[:2]
        box = None if ref.face.box is None else [float(v) for v in ref.face.box]
        ui = {"marionette_reference": [{"width": w, "height": h,
                                        "person_area": float((ref.person_mask > 0.5).mean()),
                                        "face": box is not None, "face_source": ref.face.source,
                                        "face_score": ref.face_score, "cut": list(ref.cut),
                                        "person_kept": ref.person_kept, "note": ref.note()}]}
        return {"ui": ui, "result": (to_image_tensor(ref.image[None]), to_mask_tensor(ref.person_mask[None]),
                                     to_mask_tensor(ref.face.mask[None]), [box])}
