"""LTX-Video (``LTXVideoTransformer3DModel``): ``transformer_blocks.*.attn1`` is video self-attention.

RMSNorm across heads and RoPE on the flattened (B, N, H·D) tensor, then (B, N, H, D) and the dispatcher.
The input is already packed (B, N, C); the pipeline passes the latent grid as ``num_frames``, ``height``,
``width`` to ``forward``, which is where the hook reads it.
"""

from __future__ import annotations

import logging

import torch
from diffusers.models.transformers.transformer_ltx import (
    LTXAttention,
    LTXVideoAttnProcessor,
    LTXVideoTransformer3DModel,
    apply_rotary_emb,
)

from ..._validation import value_error
from ..family import FamilySpec
from .base import TimeRippleAttnProcessor, register_like_stock

logger = logging.getLogger(__name__)

__all__ = ["LTXVideoTimeRippleAttnProcessor"]


class LTXVideoTimeRippleAttnProcessor(TimeRippleAttnProcessor, LTXVideoAttnProcessor):
    """TimeRipple processor for LTX-Video self-attention (``attn1``); cross-attention calls run stock."""

    def __call__(
        self,
        attn: LTXAttention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            if encoder_hidden_states is None and not getattr(self, "_warned_mask", False):
                # diffusers never passes a mask to LTX self-attention today; say so rather than hide it
                logger.warning(
                    "%s: self-attention got an attention_mask, which TimeRipple does not handle for LTX; "
                    "this layer runs stock (dense) attention", self.layer_name,
                )
                self._warned_mask = True
            return LTXVideoAttnProcessor.__call__(
                self, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb
            )
        query = attn.norm_q(attn.to_q(hidden_states))
        key = attn.norm_k(attn.to_k(hidden_states))
        value = attn.to_v(hidden_states)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb)
            key = apply_rotary_emb(key, image_rotary_emb)
        query = query.unflatten(2, (attn.heads, -1))  # (B, N, H, D)
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))

        dense = self._dispatch_dense(query, key, value)

        hidden_states = self._attend(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), dense=dense
        ).transpose(1, 2)
        hidden_states = hidden_states.flatten(2, 3).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        return hidden_states


def _select(name: str, module: torch.nn.Module) -> bool:
    return name.endswith(".attn1")  # LTXAttention has no `is_cross_attention`


def _grid(transformer, bound) -> tuple:
    frames, height, width = bound.get("num_frames"), bound.get("height"), bound.get("width")
    if frames is None or height is None or width is None:
        raise value_error(
            "num_frames/height/width", (frames, height, width), "LTX-Video's packed input does not carry the "
            "latent grid, so TimeRipple reads it from these forward arguments", "pass them to the "
            "transformer's forward, as `LTXPipeline` does",
        )
    p_t, p = transformer.config.patch_size_t, transformer.config.patch_size
    return int(frames) // p_t, int(height) // p, int(width) // p


register_like_stock(LTXVideoTimeRippleAttnProcessor, LTXVideoAttnProcessor)
# the family this module adds: ``diffusers/registry.py`` registers it for LTXVideoTransformer3DModel and its subclasses
FAMILY = (LTXVideoTransformer3DModel, FamilySpec(name="ltx", processor_cls=LTXVideoTimeRippleAttnProcessor, select=_select, grid=_grid,
               attention_types=(LTXAttention,), label="LTX-Video"))
