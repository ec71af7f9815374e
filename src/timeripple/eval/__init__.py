"""Evaluation: fidelity (PSNR, SSIM) of an accelerated video against the dense one, and the prompt-adherence
score of the embedded tiny model."""

from ..demo.adherence import ADHERENCE_PROMPTS, evaluate_adherence, score_adherence
from ..video_metrics import psnr, ssim

__all__ = ["ADHERENCE_PROMPTS", "evaluate_adherence", "score_adherence", "psnr", "ssim"]
