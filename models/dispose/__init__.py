"""DisPose: MimicMotion with a hybrid ControlNet driven by motion fields and keypoint correspondence."""
