"""What one peer attention call computed, in counted units (never timed)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["PeerCallStats"]


@dataclass
class PeerCallStats:
    r"""Counted savings of one sparse-attention call of a peer method.

    Args:
        qk_savings (`torch.Tensor`): ``(H,)`` float64, per head and mean over the batch, the fraction of the
            dense ``N_q · N_k · D`` partial products of ``q kᵀ`` that were **not** computed, net of the
            method's own overhead (the sampled full rows of SVG's online profiling, MInference's pattern
            estimate). Can be negative when the overhead exceeds the pairs skipped.
        qk_products (`int`): the dense count ``B · H · N_q · N_k · D`` (weights totals over layers and steps).
        mode (`str`): the method, e.g. ``"svg"``.
        details (`dict`): method-specific counts, e.g. the share of heads that chose the temporal mask.
    """

    qk_savings: torch.Tensor
    qk_products: int
    mode: str
    details: dict = field(default_factory=dict)

    @property
    def qk_savings_mean(self) -> float:
        """Mean of ``qk_savings`` over the heads."""
        return float(self.qk_savings.mean()) if self.qk_savings.numel() else 0.0
