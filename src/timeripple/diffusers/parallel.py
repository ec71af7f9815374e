"""Context parallelism (Ulysses) for TimeRipple processors.

Under ``transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=W))`` diffusers splits the
token sequence over ``W`` ranks: rank ``r`` holds the contiguous tokens ``[r·N/W, (r+1)·N/W)``, so a
processor sees only its slice, and TimeRipple's windows cross the slices. Ulysses attention
(``diffusers.models.attention_dispatch._templated_context_parallel_attention``) then does an all-to-all that
turns the local ``(B, N/W, H, D)`` into ``(B, N, H/W, D)``: the **whole** sequence, in the original global
order, for ``H/W`` heads. Detection is per head, so running ``ripple_attention`` there, on the global grid,
gives each head exactly what it gets without parallelism. [`ulysses_ripple_attention`] does that through the
templated function's ``forward_op``; the reverse all-to-all brings the output back to the local slice.

Joint attention (HunyuanVideo: ``[video | text]``, CogVideoX: ``[text | video]``): the plans in
``diffusers/context_parallel.py`` split the video **and** the text tokens evenly, so rank ``r`` holds
``[video_r | text_r]`` (or ``[text_r | video_r]``) and the all-to-all gathers ``[video_0 | text_0 | video_1 |
text_1 | ...]``. Dense attention does not care about the key order as long as the key mask follows it
([`gathered_mask`]); TimeRipple does, so ``forward_op`` first reorders the gathered tokens into the global
``[video | text]`` order ([`joint_order`]), runs there and puts the output back in the gathered order.

Statistics are per rank: every rank records the figures of the ``H/W`` heads it computed over the whole
sequence (dense steps record the rank's share ``B·H·N·N·D / W``). With an even head split every rank's
weights are equal, so the figures of the whole model are the mean of the ranks' figures (see
``docs/diffusers.md``).

Ring attention (``ring_degree > 1``) is not supported: each ``forward_op`` call there holds one KV chunk
and must return a log-sum-exp, while TimeRipple's key reuse needs every key of a window at once.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any, Mapping, Optional, Sequence, Tuple

import torch

from .._validation import value_error

logger = logging.getLogger(__name__)

__all__ = ["check_parallel_config", "gathered_mask", "joint_order", "rank_dense_products", "ulysses_ripple_attention"]

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


def ulysses_degree(parallel_config) -> int:
    """The Ulysses degree of a `ParallelConfig` or `ContextParallelConfig` (1 without one)."""
    return getattr(_cp_config(parallel_config), "ulysses_degree", None) or 1


@functools.lru_cache(maxsize=64)
def _joint_order(video_local: int, text_local: int, world: int, text_position: str, device: str):
    local = video_local + text_local
    starts = torch.arange(world).mul_(local).unsqueeze(1)  # (W, 1): where each rank's block starts
    video_first = text_position == "after"
    video = starts + (0 if video_first else text_local) + torch.arange(video_local)  # (W, video_local)
    text = starts + (video_local if video_first else 0) + torch.arange(text_local)  # (W, text_local)
    parts = (video, text) if video_first else (text, video)
    order = torch.cat([p.reshape(-1) for p in parts]).to(device)
    return order, torch.argsort(order)


def joint_order(video_local: int, text_local: int, world: int, text_position: str = "after",
                device="cpu") -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    r"""
    Where the Ulysses all-to-all puts the tokens of a joint sequence whose video and text are both split.

    Rank ``r`` holds ``video_local`` video and ``text_local`` text tokens (``[video_r | text_r]`` for
    ``text_position="after"``, ``[text_r | video_r]`` for ``"before"``); the all-to-all concatenates the
    ranks' blocks. Returns ``(order, inverse)`` with ``global = gathered.index_select(1, order)`` (the
    single-device ``[video | text]`` / ``[text | video]`` order) and ``gathered = global.index_select(1,
    inverse)``; ``(None, None)`` when there is no text (the gathered order is already global).
    """
    if text_local == 0 or world == 1:
        return None, None
    return _joint_order(int(video_local), int(text_local), int(world), text_position, str(device))


def gathered_mask(attn_mask: Optional[torch.Tensor], parallel_config, video_local: int, text_local: int,
                  text_position: str = "after") -> Optional[torch.Tensor]:
    """A key mask over the **global** sequence, reordered into the gathered order of the Ulysses keys (see
    [`joint_order`]), for the stock context-parallel attention. Its last dimension stays the global length,
    so diffusers uses it as it is (it all-gathers only masks of the local length)."""
    if attn_mask is None:
        return None
    _, inverse = joint_order(video_local, text_local, ulysses_degree(parallel_config), text_position,
                             attn_mask.device)
    return attn_mask if inverse is None else attn_mask.index_select(-1, inverse)


def rank_dense_products(parallel_config, batch: int, heads: int, head_dim: int, grid: Sequence[int],
                        text_len: int = 0) -> int:
    """One rank's share of the dense ``q kᵀ`` product count of a self-attention call over the **global**
    sequence ``N = T·H·W + text_len``: ``B·H·N·N·D / W`` with ``W = ring_degree · ulysses_degree`` (Ulysses:
    ``H/W`` heads over ``N × N``; ring: ``N/W`` queries over ``N`` keys, every head)."""
    cp = _cp_config(parallel_config)
    degree = (getattr(cp, "ring_degree", None) or 1) * (getattr(cp, "ulysses_degree", None) or 1)
    n = math.prod(grid) + text_len
    return batch * heads * n * n * head_dim // degree


def _forward_op_for(grid, text_len, text_position, order, attn_mask, attention_kwargs, layer_name, results):
    """A diffusers ``forward_op`` that runs ``ripple_attention`` on the gathered ``(B, N, H/W, D)`` tensors,
    in the global token order (``order``, see [`joint_order`]), and appends its [`RippleStats`] to
    ``results``. ``attn_mask`` is the global-order key mask (the template's own mask argument is `None`)."""

    def forward_op(
        ctx, query, key, value, _unused_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False,
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

        if order is not None:  # gathered [v_0 | t_0 | v_1 | t_1 ...] -> global [v | t]
            query, key, value = (x.index_select(1, order[0]) for x in (query, key, value))
        out, stats = ripple_attention(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),  # (B, H/W, N, D)
            grid=tuple(grid), text_len=text_len, text_position=text_position, attn_mask=attn_mask,
            scale=scale, return_stats=True, **attention_kwargs,
        )
        results.append(stats)
        out = out.transpose(1, 2)  # (B, N, H/W, D)
        return out if order is None else out.index_select(1, order[1])

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
            tokens; for joint attention the rank's ``[video_r | text_r]`` or ``[text_r | video_r]``), after
            qk-norm and RoPE.
        parallel_config (`ParallelConfig` or `ContextParallelConfig`): the processor's ``_parallel_config``
            (Ulysses only, see [`check_parallel_config`]).
        grid (`tuple[int, int, int]`): the **global** video grid ``(T, H, W)`` (the hook reads it from the
            transformer's unsplit input).
        attention_kwargs (`dict`): ``config.attention_kwargs(step, num_steps)`` of a reuse step.
        text_len (`int`, defaults to 0): the text tokens of **this rank's** slice (every rank holds as many).
        text_position (`str`): ``"after"`` or ``"before"`` the video, as in ``ripple_attention``.
        attn_mask (`torch.Tensor`, *optional*): key mask over the **global** sequence, in the global order
            (as the model builds it on one device), e.g. HunyuanVideo's ``(B, 1, 1, N)`` padding mask.
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
    world = check_parallel_config(parallel_config, heads=query.shape[1], layer_name=layer_name)
    if text_len and getattr(_cp_config(parallel_config), "ulysses_anything", False):
        raise value_error(
            "ContextParallelConfig.ulysses_anything", True, "uneven splits of a joint text + video sequence "
            "are not supported (the ranks' text slices would differ in length)",
            "set `ulysses_anything=False` and a `ulysses_degree` that divides the video and the text lengths",
        )
    results: list = []
    order = joint_order(query.shape[2] - text_len, text_len, world, text_position, query.device)
    forward_op = _forward_op_for(tuple(grid), text_len * world, text_position, None if order[0] is None else order,
                                 attn_mask, attention_kwargs, layer_name, results)
    out = _templated_context_parallel_attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),  # (B, N/W, H, D)
        None, 0.0, False, None, False, False,
        forward_op=forward_op, backward_op=_backward_op, _parallel_config=parallel_config,
    )
    assert len(results) == 1, "Ulysses attention calls forward_op exactly once"
    return out.transpose(1, 2), results[0]  # (B, H, N/W, D)
