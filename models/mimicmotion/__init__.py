"""MimicMotion (tencent/MimicMotion): SVD-xt with a PoseNet whose features are added after `conv_in`;
StableAnimator and DisPose reuse the same PoseNet design."""
