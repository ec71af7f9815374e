"""Context parallelism (Ulysses) for TimeRipple processors.

Under ``transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=W))`` diffusers splits the
token sequence over ``W`` ranks: rank ``r`` holds the contiguous tokens ``[r·N/W, (r+1)·N/W)``, so a
processor sees only its slice, and TimeRipple's windows cross the slices. Ulysses attention
(``diffusers.models.attention_dispatch._templated_context_parallel_attention``) then does an all-to-all that
turns the local ``(B, N/W, H, D)`` into ``(B, N, H/W, D)``: the **whole** sequence, in the original global
order, for ``H/W`` heads. Detection is per head, so running ``ripple_attention`` there, on the global grid,
gives each head exactly what it gets without parallelism. [`ulysses_ripple_attention`] does that through the
templated function's ``forward_op``; the reverse all-to-all brings the output back to the local slice.

Statistics are per rank: every rank records the figures of the ``H/W`` heads it computed over the whole
sequence (dense steps record the rank's share ``B·H·N·N·D / W``). With an even head split every rank's
weights are equal, so the figures of the whole model are the mean of the ranks' figures (see
``docs/diffusers.md``).

Ring attention (``ring_degree > 1``) is not supported: each ``forward_op`` call there holds one KV chunk
and must return a log-sum-exp, while TimeRipple's key reuse needs every key of a window at once.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Optional, Sequence, Tuple

import torch

from .._validation import value_error

logger = logging.getLogger(__name__)

__all__ = ["check_parallel_config", "rank_dense_products", "ulysses_ripple_attention"]

_ULYSSES_FIX = (
    "use Ulysses context parallelism, `transformer.enable_parallelism(config=ContextParallelConfig("
    "ulysses_degree=N))` with `ring_degree` left at 1, or remove TimeRipple"
)


def _cp_config(parallel_config):
    # processors hold the resolved `ParallelConfig`; accept a bare `ContextParallelConfig` as well
    return getattr(parallel_config, "context_parallel_config", parallel_config)


def check_parallel_config(parallel_config, *, heads: int, layer_name: Optional[str] = None) -> int:
    """Check that ``parallel_config`` is a context-parallel mode TimeRipple supports; return the Ulysses degree.

    Raises a `ValueError` for ring attention (``ring_degree > 1``, alone or with Ulysses), for a config
    without context parallelism, and for a head count the Ulysses degree does not divide."""
    cp = _cp_config(parallel_config)
    if cp is None or not hasattr(cp, "ulysses_degree"):
        raise value_error(
            "parallel_config", parallel_config, "TimeRipple supports context parallelism only, and this "
            "config has no context-parallel part (tensor parallelism does not reach the processors)",
            _ULYSSES_FIX,
        )
    ring, ulysses = cp.ring_degree or 1, cp.ulysses_degree or 1
    if ring > 1:
        raise value_error(
            "ContextParallelConfig.ring_degree", ring, "ring attention is not supported by TimeRipple (each "
            "rank holds one chunk of the keys at a time, while reuse windows need all of them); Ulysses is the "
            "supported context-parallel mode", _ULYSSES_FIX,
        )
    if heads % ulysses:
        raise value_error(
            "ContextParallelConfig.ulysses_degree", ulysses, f"must divide the number of attention heads "
            f"({heads}) of layer {layer_name!r} under TimeRipple (padded heads would distort the statistics)",
            f"pick a `ulysses_degree` that divides {heads}",
        )
    return ulysses


def rank_dense_products(parallel_config, batch: int, heads: int, head_dim: int, grid: Sequence[int],
                        text_len: int = 0) -> int:
    """One rank's share of the dense ``q kᵀ`` product count of a self-attention call over the **global**
    sequence ``N = T·H·W + text_len``: ``B·H·N·N·D / W`` with ``W = ring_degree · ulysses_degree`` (Ulysses:
    ``H/W`` heads over ``N × N``; ring: ``N/W`` queries over ``N`` keys, every head)."""
    cp = _cp_config(parallel_config)
    degree = (getattr(cp, "ring_degree", None) or 1) * (getattr(cp, "ulysses_degree", None) or 1)
    n = math.prod(grid) + text_len
    return batch * heads * n * n * head_dim // degree


def _forward_op_for(grid, text_len, text_position, attention_kwargs, layer_name, results):
    """A diffusers ``forward_op`` that runs ``ripple_attention`` on the gathered ``(B, N, H/W, D)`` tensors
    and appends its [`RippleStats`] to ``results``."""

    def forward_op(
        ctx, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False,
        return_lse=False, _save_ctx=True, _parallel_config=None,
    ):
        if return_lse:
            raise value_error(
                "return_lse", return_lse, "TimeRipple's attention returns no log-sum-exp (only ring attention "
                "asks for it)", _ULYSSES_FIX,
            )
        if dropout_p:
            raise value_error("dropout_p", dropout_p, "TimeRipple is inference-only", "use dropout_p=0.0")
        T, Hg, Wg = grid
        n = query.shape[1]
        if T * Hg * Wg + text_len != n:
            raise value_error(
                "grid", tuple(grid), f"T*H*W + text tokens = {T * Hg * Wg} + {text_len} must equal the gathered "
                f"sequence length {n} of layer {layer_name!r} (Ulysses)",
                "check that the transformer's input latents match its patch size and that the model's "
                "context-parallel plan splits only the token dimension; report the model if they do",
            )
        from ..attention import ripple_attention

        out, stats = ripple_attention(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),  # (B, H/W, N, D)
            grid=tuple(grid), text_len=text_len, text_position=text_position, attn_mask=attn_mask,
            scale=scale, return_stats=True, **attention_kwargs,
        )
        results.append(stats)
        return out.transpose(1, 2)  # (B, N, H/W, D)

    return forward_op


def _backward_op(ctx, grad_out, *args, **kwargs):
    raise value_error(
        "backward", "TimeRipple under context parallelism", "TimeRipple is inference-only, so its "
        "context-parallel attention has no backward pass",
        "run the pipeline under `torch.no_grad()` (pipelines do), or remove TimeRipple for training",
    )


def ulysses_ripple_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    parallel_config,
    grid: Sequence[int],
    attention_kwargs: Mapping[str, Any],
    text_len: int = 0,
    text_position: str = "after",
    attn_mask: Optional[torch.Tensor] = None,
    layer_name: Optional[str] = None,
) -> Tuple[torch.Tensor, Any]:
    r"""
    ``ripple_attention`` on the local slices of a Ulysses context-parallel run.

    Args:
        query, key, value (`torch.Tensor`): this rank's ``(B, H, N/W, D)`` slices (all heads, contiguous
            tokens), after qk-norm and RoPE.
        parallel_config (`ParallelConfig` or `ContextParallelConfig`): the processor's ``_parallel_config``
            (Ulysses only, see [`check_parallel_config`]).
        grid (`tuple[int, int, int]`): the **global** video grid ``(T, H, W)`` (the hook reads it from the
            transformer's unsplit input).
        attention_kwargs (`dict`): ``config.attention_kwargs(step, num_steps)`` of a reuse step.
        text_len, text_position, attn_mask: as in ``ripple_attention`` (for the global sequence; a local key
            mask is all-gathered by diffusers).
        layer_name (`str`, *optional*): named in errors.

    Returns:
        `tuple[torch.Tensor, RippleStats]`: the output ``(B, H, N/W, D)`` for the local slice, and the
        statistics of the ``H/W`` heads this rank computed over the whole sequence.
    """
    try:
        from diffusers.models.attention_dispatch import _templated_context_parallel_attention
    except ImportError as exc:  # private diffusers API
        raise value_error(
            "parallel_config", parallel_config, f"this diffusers version has no Ulysses attention template "
            f"({exc})", "use diffusers 0.42, or run without `enable_parallelism`",
        ) from exc
    check_parallel_config(parallel_config, heads=query.shape[1], layer_name=layer_name)
    results: list = []
    forward_op = _forward_op_for(tuple(grid), text_len, text_position, attention_kwargs, layer_name, results)
    out = _templated_context_parallel_attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),  # (B, N/W, H, D)
        attn_mask, 0.0, False, None, False, False,
        forward_op=forward_op, backward_op=_backward_op, _parallel_config=parallel_config,
    )
    assert len(results) == 1, "Ulysses attention calls forward_op exactly once"
    return out.transpose(1, 2), results[0]  # (B, H, N/W, D)
