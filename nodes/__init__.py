"""ComfyUI node classes: thin wrappers that turn node inputs into `models/` calls."""
from .body import ShapeAlign, SMPLXFit
from .dispose import DenseMotionField, DisPoseControlApply, DisPoseControlNetLoader, KeypointCorrespondence
from .evaluate import VideoMetrics
from .example_inputs import ensure_example_inputs
from .face_id import IDAdapterApply
from .face_refine import HJBFaceRefine
from .model_paths import register_folders
from .pose import DWPoseExtract
from .pose_align import PoseAlign
from .reference import LoadReference
from .render import RenderGuidance
from .save import SavePoseKeypoint
from .sd15 import AnimateAnyoneSampler, ChampSampler, SD15AnimationLoader
from .svd import SVDAnimateSampler, SVDAnimationLoader
from .vividpose import VividPoseGuidance, VividPoseLoader

register_folders()
ensure_example_inputs()  # the shipped workflows find their inputs in ComfyUI/input

NODE_CLASS_MAPPINGS = {
    "LoadReference": LoadReference,
    "DWPoseExtract": DWPoseExtract,
    "PoseAlign": PoseAlign,
    "SavePoseKeypoint": SavePoseKeypoint,
    "SMPLXFit": SMPLXFit,
    "ShapeAlign": ShapeAlign,
    "RenderGuidance": RenderGuidance,
    "SVDAnimationLoader": SVDAnimationLoader,
    "SVDAnimateSampler": SVDAnimateSampler,
    "IDAdapterApply": IDAdapterApply,
    "HJBFaceRefine": HJBFaceRefine,
    "DenseMotionField": DenseMotionField,
    "DisPoseControlNetLoader": DisPoseControlNetLoader,
    "DisPoseControlApply": DisPoseControlApply,
    "KeypointCorrespondence": KeypointCorrespondence,
    "SD15AnimationLoader": SD15AnimationLoader,
    "ChampSampler": ChampSampler,
    "AnimateAnyoneSampler": AnimateAnyoneSampler,
    "VividPoseLoader": VividPoseLoader,
    "VividPoseGuidance": VividPoseGuidance,
    "VideoMetrics": VideoMetrics,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LoadReference": "Load Reference (Marionette)",
    "DWPoseExtract": "DWPose Extract (Marionette)",
    "PoseAlign": "Pose Align to Reference (Marionette)",
    "SavePoseKeypoint": "Save Pose Keypoints (Marionette)",
    "SMPLXFit": "SMPL-X / Anny Body Fit (Marionette)",
    "ShapeAlign": "Shape Align to Reference (Marionette)",
    "RenderGuidance": "Render Guidance Maps (Marionette)",
    "SVDAnimationLoader": "SVD Animation Loader (Marionette)",
    "SVDAnimateSampler": "SVD Animate Sampler (Marionette)",
    "IDAdapterApply": "ID Adapter Apply, StableAnimator face (Marionette)",
    "HJBFaceRefine": "HJB Face Refine, StableAnimator (Marionette)",
    "DenseMotionField": "Dense Motion Field, DisPose (Marionette)",
    "DisPoseControlNetLoader": "DisPose ControlNet Loader (Marionette)",
    "DisPoseControlApply": "DisPose Control Apply (Marionette)",
    "KeypointCorrespondence": "Keypoint Correspondence, DisPose DIFT (Marionette)",
    "SD15AnimationLoader": "Champ / Animate Anyone Loader (Marionette)",
    "ChampSampler": "Champ Sampler (Marionette)",
    "AnimateAnyoneSampler": "Animate Anyone Sampler (Marionette)",
    "VividPoseLoader": "VividPose Loader (Marionette)",
    "VividPoseGuidance": "VividPose Guidance (Marionette)",
    "VideoMetrics": "Video Metrics (Marionette)",
}
