"""HunyuanVideo (``HunyuanVideoTransformer3DModel``): joint attention, text **after** the video.

Swapped: ``transformer_blocks.*.attn`` (dual-stream, text from ``add_*_proj``) and
``single_transformer_blocks.*.attn`` (single-stream, text concatenated first). The text refiner
(``context_embedder.token_refiner.*``) stays stock. The boolean key-padding mask (B, 1, 1, N) is passed to
``ripple_attention`` unchanged, so padded text tokens stay masked; text is never reused. Under context
parallelism ``text_len`` is the rank's share of the text and the mask stays global (the model builds it).
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_hunyuan_video import (
    HunyuanVideoAttnProcessor2_0,
    HunyuanVideoTransformer3DModel,
)

from ..family import FamilySpec
from .base import TimeRippleAttnProcessor, register_like_stock

__all__ = ["HunyuanVideoTimeRippleAttnProcessor"]


class HunyuanVideoTimeRippleAttnProcessor(TimeRippleAttnProcessor, HunyuanVideoAttnProcessor2_0):
    """TimeRipple processor for HunyuanVideo's dual- and single-stream joint attention.

    Ulysses context parallelism is supported with the plan of ``enable_context_parallel``: each rank holds
    ``[video_r | text_r]``; the dense call gets the padding mask in the gathered key order, and detection
    runs on the global ``[video | text]`` order (see ``diffusers/parallel.py``)."""

    _supports_context_parallel = True

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        text_len = 0 if encoder_hidden_states is None else encoder_hidden_states.shape[1]
        single_stream = attn.add_q_proj is None and encoder_hidden_states is not None
        if single_stream:
            hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)

        query = attn.to_q(hidden_states).unflatten(2, (attn.heads, -1))  # (B, N, H, D)
        key = attn.to_k(hidden_states).unflatten(2, (attn.heads, -1))
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        if image_rotary_emb is not None:  # RoPE on the video part only
            if single_stream:
                query = torch.cat([apply_rotary_emb(query[:, :-text_len], image_rotary_emb, sequence_dim=1),
                                   query[:, -text_len:]], dim=1)
                key = torch.cat([apply_rotary_emb(key[:, :-text_len], image_rotary_emb, sequence_dim=1),
                                 key[:, -text_len:]], dim=1)
            else:
                query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
                key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        if attn.add_q_proj is not None and encoder_hidden_states is not None:
            encoder_query = attn.add_q_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            encoder_key = attn.add_k_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            encoder_value = attn.add_v_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            if attn.norm_added_q is not None:
                encoder_query = attn.norm_added_q(encoder_query)
            if attn.norm_added_k is not None:
                encoder_key = attn.norm_added_k(encoder_key)
            query = torch.cat([query, encoder_query], dim=1)
            key = torch.cat([key, encoder_key], dim=1)
            value = torch.cat([value, encoder_value], dim=1)

        dense = self._dispatch_dense(
            query, key, value, self._parallel_mask(attention_mask, query.shape[1], text_len, "after")
        )

        hidden_states = self._attend(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), dense=dense,
            text_len=text_len, text_position="after", attn_mask=attention_mask,
        ).transpose(1, 2)  # (B, N, H, D)
        hidden_states = hidden_states.flatten(2, 3).to(query.dtype)

        if encoder_hidden_states is not None:
            hidden_states, encoder_hidden_states = hidden_states[:, :-text_len], hidden_states[:, -text_len:]
            if getattr(attn, "to_out", None) is not None:
                hidden_states = attn.to_out[0](hidden_states)
                hidden_states = attn.to_out[1](hidden_states)
            if getattr(attn, "to_add_out", None) is not None:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        return hidden_states, encoder_hidden_states


def _select(name: str, module: torch.nn.Module) -> bool:
    return name.startswith(("transformer_blocks.", "single_transformer_blocks.")) and name.endswith(".attn")


def _grid(transformer, bound) -> tuple:
    _, _, frames, height, width = bound["hidden_states"].shape  # (B, C, F, H, W)
    p_t, p = transformer.config.patch_size_t, transformer.config.patch_size
    return frames // p_t, height // p, width // p


register_like_stock(HunyuanVideoTimeRippleAttnProcessor, HunyuanVideoAttnProcessor2_0)
# the family this module adds: ``diffusers/registry.py`` registers it for HunyuanVideoTransformer3DModel and its subclasses
FAMILY = (HunyuanVideoTransformer3DModel, FamilySpec(name="hunyuan_video", processor_cls=HunyuanVideoTimeRippleAttnProcessor, select=_select,
               grid=_grid, attention_types=(Attention,), label="HunyuanVideo"))
