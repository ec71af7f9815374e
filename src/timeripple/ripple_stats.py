"""``RippleStats``: what one ``ripple_attention`` call skipped. Every figure is counted, never timed."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class RippleStats:
    """Counted savings of one attention call (docs/ARCHITECTURE.md "Statistics").

    Args:
        qk_savings (`torch.Tensor`): ``(H,)`` float64 on the CPU, the fraction of the ``N_q·N_k·D``
            partial products of ``q kᵀ`` skipped per head, mean over the batch. Product ``(i, j, c)`` is
            computed iff neither ``q[i, c]`` nor ``k[j, c]`` is reused (the paper's metric). In token
            mode a reused token skips all its channels, so this equals ``pair_savings``.
        reused_fraction_q (`dict[str, float]`): per axis, the fraction of video elements (channel mode)
            or video tokens (token mode) of ``q`` reused through that axis.
        reused_fraction_k (`dict[str, float]`): the same for ``k``.
        qk_products (`int`): ``B·H·N_q·N_k·D``, the dense count, to weight totals over layers and steps.
        mode (`str`): ``"channel"``, ``"token"`` or ``"dense"`` (``threshold=None``), or a baseline's name.
        threshold (`float | dict | None`): the threshold(s) used.
        pair_savings (`torch.Tensor`, *optional*): token mode only, ``(H,)`` float64,
            ``1 - kept_q·kept_k / (N_q·N_k)`` per head, mean over the batch.

    Example:
        >>> import torch, timeripple
        >>> q = k = v = torch.randn(1, 2, 8, 16)
        >>> _, stats = timeripple.ripple_attention(q, k, v, grid=(2, 2, 2), threshold=1e9, return_stats=True)
        >>> round(stats.qk_savings_mean, 4)  # 7 of 8 tokens reuse every channel: 1 - 1/64
        0.9844
    """

    qk_savings: torch.Tensor
    reused_fraction_q: dict = field(default_factory=dict)
    reused_fraction_k: dict = field(default_factory=dict)
    qk_products: int = 0
    mode: str = "channel"
    threshold: float | dict | None = None
    pair_savings: torch.Tensor | None = None

    @property
    def qk_savings_mean(self) -> float:
        """Mean of ``qk_savings`` over the heads (all heads do the same dense work)."""
        return float(self.qk_savings.mean()) if self.qk_savings.numel() else 0.0

    @classmethod
    def dense(cls, shape: tuple, axes=("t", "y", "x"), threshold=None, mode: str = "dense") -> "RippleStats":
        """Stats of a call that skipped nothing; ``shape`` is ``q.shape`` ``(B, H, N, D)``."""
        B, H, N, D = shape
        zeros = torch.zeros(H, dtype=torch.float64)
        return cls(
            qk_savings=zeros,
            reused_fraction_q={a: 0.0 for a in axes},
            reused_fraction_k={a: 0.0 for a in axes},
            qk_products=B * H * N * N * D,
            mode=mode,
            threshold=threshold,
            pair_savings=zeros.clone() if mode == "token" else None,
        )
