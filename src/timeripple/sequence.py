"""Sequence layout of a self-attention call: where the video tokens sit among the text tokens.

The joint sequence is ``[video | text]`` (``text_position="after"``, HunyuanVideo, Mochi), ``[text | video]``
(``"before"``, CogVideoX) or video only (``text_len=0``); video tokens are t-major on the grid ``(T, Hg, Wg)``.
"""

from __future__ import annotations

import torch


def split_video(x: torch.Tensor, text_len: int, text_position: str) -> tuple[torch.Tensor, int]:
    """Return the video slice of ``x`` ``(B, H, N, D)`` along dim 2 and its start offset."""
    n = x.shape[2]
    start = text_len if (text_position == "before" and text_len) else 0
    return x[:, :, start : start + n - text_len], start
