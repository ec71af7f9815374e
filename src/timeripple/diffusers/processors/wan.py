"""Wan 2.1 / 2.2 (``WanTransformer3DModel``): self-attention is ``blocks.*.attn1`` over video tokens only.

Layout (B, N, H, D), RMSNorm across heads, RoPE (cos/sin of shape (1, N, 1, D)) before attention, no
text and no mask. Stock Wan's native backend permutes to (B, H, N, D) and calls SDPA; the TimeRipple path
transposes the same way, so a threshold of 0 is bit-identical to stock.
"""

from __future__ import annotations

import torch
from diffusers.models.transformers.transformer_wan import (
    WanAttention,
    WanAttnProcessor,
    WanTransformer3DModel,
    _get_qkv_projections,
)

from ..family import FamilySpec
from .base import TimeRippleAttnProcessor, register_like_stock

__all__ = ["WanTimeRippleAttnProcessor"]


def _apply_rotary_emb(hidden_states, freqs_cos, freqs_sin):  # as in WanAttnProcessor
    x1, x2 = hidden_states.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(hidden_states)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(hidden_states)


class WanTimeRippleAttnProcessor(TimeRippleAttnProcessor, WanAttnProcessor):
    """TimeRipple processor for Wan self-attention (``attn1``); cross-attention calls run stock.

    Ulysses context parallelism is supported: Wan's plan splits only the token dimension (inside the
    blocks), so the all-to-all in ``forward_op`` restores the global order (see ``diffusers/parallel.py``)."""

    _supports_context_parallel = True

    def __call__(
        self,
        attn: WanAttention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attn.add_k_proj is not None:
            return WanAttnProcessor.__call__(self, attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)

        query, key, value = _get_qkv_projections(attn, hidden_states, None)
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        query = query.unflatten(2, (attn.heads, -1))  # (B, N, H, D)
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query = _apply_rotary_emb(query, *rotary_emb)
            key = _apply_rotary_emb(key, *rotary_emb)

        dense = self._dispatch_dense(query, key, value, attention_mask)

        hidden_states = self._attend(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), dense=dense, attn_mask=attention_mask
        ).transpose(1, 2)  # (B, N, H, D)
        hidden_states = hidden_states.flatten(2, 3).type_as(query)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        return hidden_states


def _select(name: str, module: torch.nn.Module) -> bool:
    return name.endswith(".attn1") and not getattr(module, "is_cross_attention", False)


def _grid(transformer, bound) -> tuple:
    _, _, frames, height, width = bound["hidden_states"].shape  # (B, C, F, H, W)
    p_t, p_h, p_w = transformer.config.patch_size
    return frames // p_t, height // p_h, width // p_w


register_like_stock(WanTimeRippleAttnProcessor, WanAttnProcessor)
# the family this module adds: ``diffusers/registry.py`` registers it for WanTransformer3DModel and its subclasses
FAMILY = (WanTransformer3DModel, FamilySpec(name="wan", processor_cls=WanTimeRippleAttnProcessor, select=_select, grid=_grid,
               attention_types=(WanAttention,), label="Wan 2.1 / 2.2"))
