"""Drives a real ComfyUI (in-process executor, HTTP server, browser frontend) for tests and the demo."""
