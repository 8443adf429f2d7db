"""VideoMetrics: L1, PSNR and SSIM of a generated video against ground-truth frames, inside / outside a mask."""
from __future__ import annotations

from ..models.evaluation import PSNR_CAP, evaluate_video, plot_metrics
from .host import to_image_tensor


class VideoMetrics:
    DESCRIPTION = ("Measures a generated video against ground-truth frames as the human-animation papers do: "
                   "per-frame L1, PSNR (data range 1; identical frames count as "
                   f"{PSNR_CAP:.0f} dB) and SSIM (11x11 Gaussian window, sigma 1.5, as skimage), averaged over "
                   "frames; with a person mask also inside and outside it. Outputs a text table and a plot of "
                   "PSNR and SSIM per frame.")
    CATEGORY = "Marionette/Evaluation"
    FUNCTION = "evaluate"
    RETURN_TYPES = ("STRING", "IMAGE")
    RETURN_NAMES = ("table", "plot")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "generated": ("IMAGE", {"tooltip": "The generated frames."}),
                "ground_truth": ("IMAGE", {"tooltip": "The real frames, same count and size as the generated."}),
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "Person mask per frame of the ground truth (or one for all "
                                             "frames); > 0.5 is the person. Adds inside / outside rows."}),
                "skip_first": ("INT", {"default": 0, "min": 0, "max": 10000,
                                       "tooltip": "Frames left out at the start (e.g. the frame that repeats "
                                                  "the reference image)."}),
            },
        }

    def evaluate(self, generated, ground_truth, mask=None, skip_first=0):
        result = evaluate_video(generated, ground_truth, mask, skip_first)
        table = result.table()
        plot = to_image_tensor(plot_metrics(result)[None])
        return {"ui": {"text": [table]}, "result": (table, plot)}
