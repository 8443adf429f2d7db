"""VividPose (Wang et al.) on the shared SVD core: ReferenceNet, identity controller, pose controller."""
