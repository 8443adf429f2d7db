"""Marionette's host-independent library: networks, pose and geometry code, checkpoint loading.

Nothing in here imports ComfyUI; every module is usable and testable on its own.
"""
