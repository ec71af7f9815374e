"""The tiny pixel-space Wan transformer of the embedded text-to-video demo.

The model is a stock diffusers :class:`~diffusers.WanTransformer3DModel`, only small. It works directly
on RGB pixels (no VAE) with ``patch_size = (1, 2, 2)``, so a clip of 9 frames of 32x32 pixels becomes
a t-major token grid of ``(9, 16, 16) = 2,304`` tokens. Every TimeRipple code path written for Wan
(self-attention ``attn1`` with RoPE and ``qk_norm="rms_norm_across_heads"``, cross-attention
``attn2``) therefore runs unchanged on it.

The input has one channel more than the output (``in_channels = 4``, ``out_channels = 3``): the
pipeline appends a *frame clock*, a constant plane per frame going linearly from -1 (first frame) to
+1 (last frame), the way Wan's image-to-video pipeline appends its conditioning channels. Wan's RoPE
only tells attention how far apart two frames are, never which frame is first, so without the clock a
pixel-space model cannot tell "moving right" from its time-reversal "moving left" at high noise (real
Wan checkpoints get that cue from their causal VAE, whose first latent frame is encoded apart).
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
    "in_channels": 3 + 1,  # RGB + the frame clock (see frame_clock)
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


def frame_clock(batch_size: int, num_frames: int, height: int, width: int, device=None, dtype=None):
    """The frame-clock channel appended to the tiny model's input: ``(B, 1, F, H, W)``.

    Frame ``f`` is filled with ``-1 + 2 f / (F - 1)`` (``0`` when ``F == 1``), an absolute time cue.

    Example:

    ```py
    >>> from timeripple.demo.model import frame_clock
    >>> frame_clock(1, 3, 2, 2)[0, 0, :, 0, 0]
    tensor([-1.,  0.,  1.])
    ```
    """
    import torch

    ramp = torch.linspace(-1.0, 1.0, num_frames, device=device) if num_frames > 1 else torch.zeros(1, device=device)
    clock = ramp.view(1, 1, num_frames, 1, 1).expand(batch_size, 1, num_frames, height, width)
    return clock.to(dtype) if dtype is not None else clock


def with_frame_clock(x, transformer_config):
    """Append the frame clock to ``x`` (``(B, C, F, H, W)``) when the transformer expects it.

    A transformer with ``in_channels == out_channels`` gets ``x`` unchanged; one with
    ``in_channels == out_channels + 1`` gets ``x`` plus the clock. Anything else is an error.
    """
    import torch

    from .._validation import value_error

    extra = transformer_config.in_channels - transformer_config.out_channels
    if extra == 0:
        return x
    if extra != 1:
        raise value_error(
            "transformer.config.in_channels", transformer_config.in_channels,
            f"must equal out_channels ({transformer_config.out_channels}) or out_channels + 1 (frame clock)",
            "build the transformer with timeripple.demo.model.tiny_wan_config()",
        )
    b, _, f, h, w = x.shape
    return torch.cat([x, frame_clock(b, f, h, w, device=x.device, dtype=x.dtype)], dim=1)


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
    >>> x = torch.randn(1, 4, 9, 32, 32)                        # (B, RGB + clock, F, H, W)
    >>> out = model(hidden_states=x, timestep=torch.tensor([500.0]),
    ...             encoder_hidden_states=torch.randn(1, 16, 64), return_dict=False)[0]
    >>> out.shape
    torch.Size([1, 3, 9, 32, 32])
    ```
    """
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(**tiny_wan_config(**overrides))
