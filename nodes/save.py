"""SavePoseKeypoint: writes POSE_KEYPOINT to the output folder as OpenPose-style JSON."""
from __future__ import annotations

import json
import os

import folder_paths

from ..models.pose.keypoint_json import pose_keypoint_to_frames


class SavePoseKeypoint:
    DESCRIPTION = "Saves the pose sequence as one JSON file (a list with one OpenPose-format dict per frame)."
    CATEGORY = "Marionette/Pose"
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ()

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"pose_keypoint": ("POSE_KEYPOINT",),
                             "filename_prefix": ("STRING", {"default": "marionette/pose"})}}

    def save(self, pose_keypoint, filename_prefix):
        frames = pose_keypoint_to_frames(pose_keypoint)  # validates before anything is written
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory())
        file = f"{name}_{counter:05}_.json"
        with open(os.path.join(folder, file), "w") as f:
            json.dump(pose_keypoint, f)
        people = sum(fr.num_people > 0 for fr in frames)
        return {"ui": {"text": [f"{file}: {len(frames)} frames, a person in {people}"],
                       "marionette_files": [{"filename": file, "subfolder": subfolder, "type": "output"}]}}
