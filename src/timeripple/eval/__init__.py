"""Evaluation: fidelity (PSNR, SSIM) of an accelerated video against the dense one, and the prompt-adherence
score of the embedded tiny model."""

from .adherence import ADHERENCE_PROMPTS, evaluate_adherence, score_adherence
from .metrics import psnr, ssim

__all__ = ["ADHERENCE_PROMPTS", "evaluate_adherence", "score_adherence", "psnr", "ssim"]
