"""3D body models (Anny, SMPL-X) behind one interface, fitting to 2D keypoints, shape alignment."""
