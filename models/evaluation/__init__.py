"""Evaluation of generated videos against ground-truth frames: L1, PSNR and SSIM over the whole frame and
inside / outside a person mask, as the human-animation papers report them, and a plot of them per frame."""
from .metrics import PSNR_CAP, MetricsResult, RegionMetrics, evaluate_video, plot_metrics, ssim_map

__all__ = ["PSNR_CAP", "MetricsResult", "RegionMetrics", "evaluate_video", "plot_metrics", "ssim_map"]
