"""Small vision building blocks shared by the pose and reference stages."""
