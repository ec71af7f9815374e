"""CogVideoX 1.0 / 1.5 (``CogVideoXTransformer3DModel``): joint attention, text **before** the video.

``transformer_blocks.*.attn1`` works in (B, H, N, D) and calls ``F.scaled_dot_product_attention``
directly. RoPE (5B and 1.5 checkpoints) covers the video part only; the 2B uses absolute position
embeddings instead (``image_rotary_emb=None``). Inputs are (B, F, C, H, W); 1.5 patches time by
``patch_size_t``. Classifier-free guidance is one batched call; detection is per batch row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, CogVideoXAttnProcessor2_0
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.cogvideox_transformer_3d import CogVideoXTransformer3DModel

from ..._validation import value_error
from ..family import FamilySpec
from .base import TimeRippleAttnProcessor, register_like_stock

__all__ = ["CogVideoXTimeRippleAttnProcessor"]


class CogVideoXTimeRippleAttnProcessor(TimeRippleAttnProcessor, CogVideoXAttnProcessor2_0):
    """TimeRipple processor for CogVideoX joint attention (``attn1``).

    Ulysses context parallelism is supported with the plan of ``enable_context_parallel`` (each rank holds
    ``[text_r | video_r]``): dense steps then go through diffusers' dispatcher, as in
    ``CogVideoXContextParallelAttnProcessor``; without it they are the stock ``F.scaled_dot_product_attention``."""

    _supports_context_parallel = True

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        text_len = encoder_hidden_states.size(1)
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        batch_size, sequence_length, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # (B, H, N, D)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:
            query[:, :, text_len:] = apply_rotary_emb(query[:, :, text_len:], image_rotary_emb)
            if not attn.is_cross_attention:
                key[:, :, text_len:] = apply_rotary_emb(key[:, :, text_len:], image_rotary_emb)

        if self._parallel_config is None:
            dense = lambda: F.scaled_dot_product_attention(  # noqa: E731  (the stock call)
                query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
            )
        elif attention_mask is not None:
            raise value_error(
                "attention_mask", tuple(attention_mask.shape), "CogVideoX passes no attention mask, and a mask "
                "under its context-parallel plan would have to follow the split", "call attn1 without a mask",
            )
        else:
            dense = self._dispatch_dense(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2))
        hidden_states = self._attend(
            query, key, value, text_len=text_len, text_position="before", attn_mask=attention_mask, dense=dense,
        )
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        encoder_hidden_states, hidden_states = hidden_states.split(
            [text_len, hidden_states.size(1) - text_len], dim=1
        )
        return hidden_states, encoder_hidden_states


def _select(name: str, module: torch.nn.Module) -> bool:
    return name.endswith(".attn1") and not getattr(module, "is_cross_attention", False)


def _grid(transformer, bound) -> tuple:
    _, frames, _, height, width = bound["hidden_states"].shape  # (B, F, C, H, W)
    p, p_t = transformer.config.patch_size, transformer.config.patch_size_t
    return (frames if p_t is None else frames // p_t), height // p, width // p


register_like_stock(CogVideoXTimeRippleAttnProcessor, CogVideoXAttnProcessor2_0)
# the family this module adds: ``diffusers/registry.py`` registers it for CogVideoXTransformer3DModel and its subclasses
FAMILY = (CogVideoXTransformer3DModel, FamilySpec(name="cogvideox", processor_cls=CogVideoXTimeRippleAttnProcessor, select=_select, grid=_grid,
               attention_types=(Attention,), label="CogVideoX 1.0 / 1.5"))
