"""The tiny pixel-space Wan transformer of the embedded text-to-video demo.

The model is a stock diffusers :class:`~diffusers.WanTransformer3DModel`, only small. It works directly
on RGB pixels (no VAE): ``in_channels = out_channels = 3`` and ``patch_size = (1, 2, 2)``, so a clip of
9 frames of 32x32 pixels becomes a t-major token grid of ``(9, 16, 16) = 2,304`` tokens. Every
TimeRipple code path written for Wan (self-attention ``attn1`` with RoPE and
``qk_norm="rms_norm_across_heads"``, cross-attention ``attn2``) therefore runs unchanged on it.
"""

from __future__ import annotations

from typing import Any

# Sizes the shipped model was trained for (frames, height, width of the RGB clips).
NUM_FRAMES = 9
HEIGHT = 32
WIDTH = 32

# Width of the text encoder's output = the transformer's ``text_dim``.
TEXT_DIM = 64

# Timestep shift of the flow-matching schedule, used by both the trainer's noise-level sampling and
# the pipeline's FlowMatchEulerDiscreteScheduler. Larger = more steps at high noise.
SHIFT = 3.0

TINY_WAN_CONFIG: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 4,
    "attention_head_dim": 48,  # Wan RoPE splits it t/h/w = 16/16/16
    "in_channels": 3,
    "out_channels": 3,
    "text_dim": TEXT_DIM,
    "freq_dim": 128,
    "ffn_dim": 576,
    "num_layers": 5,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 64,
}


def tiny_wan_config(**overrides) -> dict[str, Any]:
    """Return the constructor arguments of the tiny :class:`~diffusers.WanTransformer3DModel`.

    Args:
        **overrides: keys of :data:`TINY_WAN_CONFIG` to replace (for experiments and tests; the
            shipped weights only fit the defaults).

    Returns:
        `dict`: a fresh copy, safe to modify.

    Example:

    ```py
    >>> from timeripple.demo.model import tiny_wan_config
    >>> tiny_wan_config()["attention_head_dim"]
    48
    ```
    """
    from .._validation import value_error

    unknown = sorted(set(overrides) - set(TINY_WAN_CONFIG))
    if unknown:
        raise value_error(
            "overrides", unknown, "only keys of TINY_WAN_CONFIG can be overridden",
            f"use some of {sorted(TINY_WAN_CONFIG)}",
        )
    config = dict(TINY_WAN_CONFIG)
    config.update(overrides)
    return config


def build_tiny_transformer(**overrides):
    """Build the tiny :class:`~diffusers.WanTransformer3DModel` with freshly initialised weights.

    Args:
        **overrides: see :func:`tiny_wan_config`.

    Returns:
        `diffusers.WanTransformer3DModel`: about 2.9 M parameters, in float32, on the CPU.

    Example:

    ```py
    >>> import torch
    >>> from timeripple.demo.model import build_tiny_transformer
    >>> model = build_tiny_transformer()
    >>> x = torch.randn(1, 3, 9, 32, 32)                        # (B, C, F, H, W)
    >>> out = model(hidden_states=x, timestep=torch.tensor([500.0]),
    ...             encoder_hidden_states=torch.randn(1, 16, 64), return_dict=False)[0]
    >>> out.shape
    torch.Size([1, 3, 9, 32, 32])
    ```
    """
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(**tiny_wan_config(**overrides))
