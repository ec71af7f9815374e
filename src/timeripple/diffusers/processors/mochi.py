"""Mochi (``MochiTransformer3DModel``): joint attention, text **after** the video.

``MochiAttention`` is a plain module (no ``set_processor``) and the model has no
``set_attn_processor``: [`apply_timeripple`] assigns ``module.processor`` directly. The stock processor
attends per batch row over ``[video | valid text]`` (padded text tokens dropped); this one does the same,
with one ``ripple_attention`` call per row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import MochiAttention, MochiAttnProcessor2_0
from diffusers.models.transformers.transformer_mochi import MochiTransformer3DModel

from ..family import FamilySpec
from .base import TimeRippleAttnProcessor, register_like_stock

__all__ = ["MochiTimeRippleAttnProcessor"]


def _apply_rotary_emb(x, freqs_cos, freqs_sin):  # as in MochiAttnProcessor2_0
    x_even = x[..., 0::2].float()
    x_odd = x[..., 1::2].float()
    cos = (x_even * freqs_cos - x_odd * freqs_sin).to(x.dtype)
    sin = (x_even * freqs_sin + x_odd * freqs_cos).to(x.dtype)
    return torch.stack([cos, sin], dim=-1).flatten(-2)


class MochiTimeRippleAttnProcessor(TimeRippleAttnProcessor, MochiAttnProcessor2_0):
    """TimeRipple processor for Mochi joint attention (``attn1``)."""

    def __call__(
        self,
        attn: MochiAttention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        image_rotary_emb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        def heads(x):
            return x.unflatten(2, (attn.heads, -1))  # (B, N, H, D)

        query, key, value = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        encoder_query = heads(attn.add_q_proj(encoder_hidden_states))
        encoder_key = heads(attn.add_k_proj(encoder_hidden_states))
        encoder_value = heads(attn.add_v_proj(encoder_hidden_states))
        if attn.norm_added_q is not None:
            encoder_query = attn.norm_added_q(encoder_query)
        if attn.norm_added_k is not None:
            encoder_key = attn.norm_added_k(encoder_key)
        if image_rotary_emb is not None:
            query = _apply_rotary_emb(query, *image_rotary_emb)
            key = _apply_rotary_emb(key, *image_rotary_emb)

        query, key, value = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)  # (B, H, N, D)
        encoder_query, encoder_key, encoder_value = (
            encoder_query.transpose(1, 2), encoder_key.transpose(1, 2), encoder_value.transpose(1, 2)
        )
        sequence_length, encoder_sequence_length = query.size(2), encoder_query.size(2)
        total_length = sequence_length + encoder_sequence_length

        outputs = []
        for idx in range(query.shape[0]):  # per row, exactly as stock: padded text tokens are dropped
            valid = torch.nonzero(attention_mask[idx][None, :].flatten(), as_tuple=False).flatten()
            q = torch.cat([query[idx : idx + 1], encoder_query[idx : idx + 1, :, valid, :]], dim=2)
            k = torch.cat([key[idx : idx + 1], encoder_key[idx : idx + 1, :, valid, :]], dim=2)
            v = torch.cat([value[idx : idx + 1], encoder_value[idx : idx + 1, :, valid, :]], dim=2)
            out = self._attend(
                q, k, v, text_len=valid.numel(), text_position="after",
                dense=lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False),
            )
            outputs.append(F.pad(out, (0, 0, 0, total_length - out.size(2))))

        hidden_states = torch.cat(outputs, dim=0).transpose(1, 2).flatten(2, 3)
        hidden_states, encoder_hidden_states = hidden_states.split_with_sizes(
            (sequence_length, encoder_sequence_length), dim=1
        )
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if hasattr(attn, "to_add_out"):
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        return hidden_states, encoder_hidden_states


def _select(name: str, module: torch.nn.Module) -> bool:
    return name.endswith(".attn1")


def _grid(transformer, bound) -> tuple:
    _, _, frames, height, width = bound["hidden_states"].shape  # (B, C, F, H, W)
    p = transformer.config.patch_size
    return frames, height // p, width // p


register_like_stock(MochiTimeRippleAttnProcessor, MochiAttnProcessor2_0)
# the family this module adds: ``diffusers/registry.py`` registers it for MochiTransformer3DModel and its subclasses
FAMILY = (MochiTransformer3DModel, FamilySpec(name="mochi", processor_cls=MochiTimeRippleAttnProcessor, select=_select, grid=_grid,
               attention_types=(MochiAttention,), label="Mochi"))
