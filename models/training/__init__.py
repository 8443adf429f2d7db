"""Marionette's trainer: an EDM objective for SVD-family models, a training engine on Hugging Face
`accelerate` (one CPU, one or many GPUs, many machines), and the VividPose and autoencoder tasks it runs.
Entry point: `python -m models.training` (see the README's "Training VividPose")."""
