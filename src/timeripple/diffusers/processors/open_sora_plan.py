"""Open-Sora-Plan v1.3 (not on PyPI): a processor for its diffusers-style ``Attention`` contract.

Contract (``opensora/models/diffusion/opensora_v1_3/modules.py``): the attention module is a diffusers
``Attention`` whose processor (``OpenSoraAttnProcessor2_0``) carries ``is_cross_attn``, ``sparse1d``, a
3D RoPE ``rope(x, pos)`` and ``position_getter(batch, t=, h=, w=, device=)``. The processor is called as
``processor(attn, hidden_states, encoder_hidden_states, attention_mask, temb, frame, height, width)`` with
**sequence-first** ``(S, B, H·D)`` tensors; ``frame, height, width`` are the token grid, t-major.

Only self-attention without ``sparse1d`` is swapped (``sparse1d`` regroups tokens so that windows no
longer follow the grid). The released v1.3 models use ``sparse1d`` on blocks 2-29 (``1 < i < 30`` in
``OpenSoraT2V_v1_3``), so 4 of their 32 self-attention layers are eligible: blocks 0, 1, 30 and 31.
Sequence parallelism is detected and refused with a ``ValueError`` (at apply and at every call). Dense steps call the original processor
itself, so they are exactly stock. Register the model class before applying:

```py
from opensora.models.diffusion.opensora_v1_3.modeling_opensora import OpenSoraT2V_v1_3
timeripple.diffusers.register_model(OpenSoraT2V_v1_3, "open_sora_plan")
handle = timeripple.apply_timeripple(transformer, "open_sora_plan", scheduler=scheduler)
```
"""

from __future__ import annotations

import contextlib
import logging

import torch
import torch.nn.functional as F

from ..._validation import value_error
from ..family import FamilySpec
from .base import TimeRippleAttnProcessor

logger = logging.getLogger(__name__)

__all__ = ["OpenSoraPlanTimeRippleAttnProcessor", "OpenSoraPlanFamily", "check_no_sequence_parallel"]


class OpenSoraPlanTimeRippleAttnProcessor(TimeRippleAttnProcessor):
    """TimeRipple processor for Open-Sora-Plan v1.3 self-attention; wraps the layer's original processor.

    It is transparent to the model: every attribute it does not define itself is read from the original
    processor (``OpenSoraT2V_v1_3.forward`` reads ``processor.sparse_n`` and ``processor.sparse_group``
    of every block to pick its key mask)."""

    def __init__(self, context=None, layer_name=None, original=None):
        super().__init__(context, layer_name, original)
        if original is None or not hasattr(original, "rope") or not hasattr(original, "position_getter"):
            raise value_error(
                "original", original, "the Open-Sora-Plan processor reuses the original processor's `rope` "
                "and `position_getter`", "install it with `apply_timeripple`, which passes the original",
            )
        self.original = original
        self.rope = original.rope
        self.position_getter = original.position_getter
        check_no_sequence_parallel(original, layer_name)

    def __getattr__(self, name):
        # only called for attributes this object lacks: read them from the processor it replaces
        if name.startswith("__") or "original" not in vars(self):
            raise AttributeError(name)
        return getattr(vars(self)["original"], name)

    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        frame: int = 8,
        height: int = 16,
        width: int = 16,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        ctx = self._context()
        check_no_sequence_parallel(self.original, self.layer_name)
        seq_len, batch_size, inner = hidden_states.shape  # (S, B, H·D)
        if ctx.attention_kwargs is None or encoder_hidden_states is not None:
            if encoder_hidden_states is None:
                self._record(ctx, 0.0, batch_size * seq_len * seq_len * inner)
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, frame, height,
                                 width, *args, **kwargs)

        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        heads = attn.heads
        head_dim = key.shape[-1] // heads
        query = query.view(-1, batch_size, heads, head_dim)  # (S, B, H, D)
        key = key.view(-1, batch_size, heads, head_dim)
        pos_thw = self.position_getter(batch_size, t=frame, h=height, w=width, device=query.device)
        query = self.rope(query, pos_thw)
        key = self.rope(key, pos_thw)

        def bhsd(x):
            return x.reshape(-1, batch_size, heads, head_dim).permute(1, 2, 0, 3)  # (B, H, S, D)

        q, k, v = bhsd(query), bhsd(key), bhsd(value)
        with _stock_sdpa_backend(q):
            out = self._attend(
                q, k, v, attn_mask=attention_mask, grid=(frame, height, width),
                dense=lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask),
            )
        hidden_states = out.permute(2, 0, 1, 3).reshape(-1, batch_size, heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        return hidden_states / attn.rescale_output_factor


def _stock_sdpa_backend(q):
    """On CUDA the stock processor runs SDPA with the memory-efficient kernel only; do the same, so that a
    threshold of 0 stays equal to stock there (on the CPU nothing is restricted)."""
    if not q.is_cuda:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION])


def check_no_sequence_parallel(original, layer_name=None) -> None:
    """Raise when Open-Sora-Plan's sequence parallelism is on: the processor would see only this rank's
    frames. The state is read the way the original processor reads it (its module's
    ``get_sequence_parallel_state``)."""
    state = getattr(type(original).__call__, "__globals__", {}).get("get_sequence_parallel_state")
    if callable(state) and state():
        raise value_error(
            "get_sequence_parallel_state()", True, f"TimeRipple on Open-Sora-Plan (layer {layer_name!r}) does not "
            "support its sequence parallelism yet: each rank holds only its own frames, while reuse windows "
            "cross them", "run Open-Sora-Plan without sequence parallelism (sp_size 1), or remove TimeRipple",
        )


def _select(name: str, module: torch.nn.Module) -> bool:
    processor = getattr(module, "processor", None)
    if getattr(processor, "is_cross_attn", True):
        return False
    if getattr(processor, "sparse1d", False):
        logger.info("TimeRipple leaves %s stock: sparse1d attention regroups the token grid", name)
        return False
    return True


def _grid(transformer, bound) -> tuple:
    _, _, frames, height, width = bound["hidden_states"].shape  # (B, C, F, H, W)
    p_t, p = transformer.config.patch_size_t, transformer.config.patch_size
    frames = (frames - 1) // p_t + 1 if frames % 2 == 1 else frames // p_t  # as OpenSoraT2V_v1_3.forward
    return frames, height // p, width // p


def _attention_types():
    from diffusers.models.attention_processor import Attention

    return (Attention,)


class OpenSoraPlanFamily:
    """Marker base class: subclass it (or call [`register_model`]) to mark a transformer as Open-Sora-Plan."""


# the family this module adds: ``diffusers/registry.py`` registers it for OpenSoraPlanFamily and its subclasses
FAMILY = (OpenSoraPlanFamily, FamilySpec(
    name="open_sora_plan", processor_cls=OpenSoraPlanTimeRippleAttnProcessor, select=_select, grid=_grid,
    attention_types=_attention_types(), label="Open-Sora-Plan v1.3 (register_model)",
    stock_processors=("OpenSoraAttnProcessor2_0",),
))
