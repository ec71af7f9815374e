"""Token mode: the token plan (resolved per-token sources over the whole sequence) and its attention.

A token is reused only when its whole head vector passes (docs/ARCHITECTURE.md "Detection", token
granularity). The plan is two int32 tensors ``q_src``, ``k_src`` ``(B, H, N)`` with ``src[i] == i`` for
a computed token; text tokens are always computed. ``timeripple.kernels.token_attention`` executes it:
reused queries copy their source's output row, reused keys are merged into their source (mean ``v``,
``log(count)`` bias). Cost falls with ``kept_q · kept_k``.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F

from . import detect, options, sequence, token_fidelity
from . import pairs as key_pairs
from ._validation import value_error
from .ripple_stats import RippleStats


def build_token_plan(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    grid,
    thresholds: dict,
    text_len: int = 0,
    text_position: str = "after",
    window: int = 2,
    priority=options.AXES,
    criterion: str = "strict",
    fraction: float = 0.9,
    budget: float | None = None,
    fused: bool | None = None,
    token_keys: str = "chain",
    key_budget: float | None = None,
    v: torch.Tensor | None = None,
    query_score: str = "delta",
    key_score: str = "delta",
    budget_scope: str = "head",
):
    """Detect reusable tokens of ``q`` and ``k`` ``(B, H, N, D)`` and build the token plan.

    ``fused`` picks the detection: ``None`` (default) uses the fused Triton scores
    (``kernels.detect_fused.token_axis_scores``, reads q/k once, no float32 ``(B, H, Nv, D)``
    intermediates, no host sync) followed by ``detect.token_sources_from_scores`` when
    :func:`fused_detection_reason` finds nothing against it (CUDA, Triton, ``strict``/``rms``,
    power-of-two head dim), else the plain-torch ``detect.detect_token_sources``. ``True`` forces the
    fused path (CPU tensors work under ``TRITON_INTERPRET=1``), ``False`` the torch path. Both give the
    same plan up to float32 rounding of the scores.

    ``token_keys``: ``"chain"`` (both sides as above) or ``"pairs"`` (keys merge only in disjoint pairs,
    :func:`pairs.pair_sources_from_scores`; window 2). ``key_budget``: the key side's budget (default
    ``budget``; with ``"pairs"`` a share of the pairs, else of the eligible keys).

    ``query_score="interp"`` / ``key_score="kv"`` (budget mode; ``key_score="kv"`` needs ``v``) select by
    the scores of :mod:`timeripple.token_fidelity` instead of the token criterion: on CUDA (or with
    ``fused=True`` under ``TRITON_INTERPRET=1``) from the fused kernels of ``kernels.fidelity_fused``,
    else in torch; ``fused=False`` forces torch.

    Returns:
        ``(q_src, k_src, via_q, via_k)``: int32 ``(B, H, N)`` sources over the whole sequence and int8
        ``(B, H, Nv)`` axis indices (into ``options.AXES``, -1 = computed) over the video tokens.
    """
    fused_scores = _fidelity_kernels(q, fused)  # the fused fidelity score kernels (any criterion / head dim)
    if fused is None:
        fused = fused_detection_reason(q, criterion) is None
    if token_keys not in options.TOKEN_KEYS:
        raise value_error("token_keys", token_keys, f"must be one of {options.TOKEN_KEYS}",
                          "pass token_keys='chain' (default) or 'pairs'")
    if token_keys == "pairs" and window != 2:
        raise value_error("window", window, "token_keys='pairs' pairs the members of 2x2x2 cubes",
                          "use window=2, or token_keys='chain'")
    out = []
    for side, x in enumerate((q, k)):
        video, start = sequence.split_video(x, text_len, text_position)  # (B, H, Nv, D)
        pairs = side == 1 and token_keys == "pairs"
        side_budget = budget if side == 0 or key_budget is None or budget is None else key_budget
        B, H, N = x.shape[:3]
        if side_budget is not None and side_budget == 0:  # nothing to reuse on this side: no scores, no sort
            identity = torch.arange(N, device=x.device, dtype=torch.int32).expand(B, H, N).contiguous()
            out.append((identity, torch.full(video.shape[:3], -1, dtype=torch.int8, device=x.device)))
            continue
        table = None
        if side == 0 and query_score == "interp":
            fn = token_fidelity.interp_score_table if fused_scores is None else fused_scores.interp_score_table_fused
            table = fn(video, grid, tuple(thresholds), window)  # (B, H, Nv, 3)
        elif side == 1 and key_score == "kv":
            v_video, _ = sequence.split_video(v, text_len, text_position)
            fn = token_fidelity.kv_score_table if fused_scores is None else fused_scores.kv_score_table_fused
            table = fn(video, v_video, grid, tuple(thresholds), window)
        if budget_scope == "call":  # the budget pooled over the heads of the call (score tables only)
            if table is None:
                table = token_fidelity.delta_score_table(video, grid, tuple(thresholds), window, criterion, fraction)
            table = token_fidelity.pool_over_heads(table, side_budget)
            side_budget = 1.0
        if table is None and fused:
            from .kernels.detect_fused import token_axis_scores

            table = token_axis_scores(video, grid, window, criterion, axes=tuple(thresholds))  # (B,H,Nv,3)
        if table is not None:  # selection from a score table (fidelity scores, pooled, or the fused kernel's)
            if pairs:
                src, via = key_pairs.pair_sources_from_scores(table, grid, thresholds, priority=priority,
                                                              budget=side_budget)
            else:
                src, via = detect.token_sources_from_scores(
                    table, grid, thresholds, window=window, priority=priority, budget=side_budget,
                )  # (B, H, Nv)
            del table
        elif pairs:
            src, via = key_pairs.detect_pair_sources(video, grid, thresholds, priority=priority, criterion=criterion,
                                                     fraction=fraction, budget=side_budget)  # (B, H, Nv)
        else:
            src, via = detect.detect_token_sources(
                video, grid, thresholds, window=window, priority=priority, criterion=criterion,
                fraction=fraction, budget=side_budget,
            )  # (B, H, Nv)
        full = torch.arange(N, device=x.device, dtype=torch.int32).expand(B, H, N).clone()  # (B, H, N)
        full[:, :, start : start + src.shape[2]] = (src + start).to(torch.int32)
        out.append((full, via))
    (q_src, via_q), (k_src, via_k) = out
    return q_src, k_src, via_q, via_k


_FUSED_ON_CPU = False  # tests set it under TRITON_INTERPRET=1 to run the fused fidelity kernels on CPU tensors


def _fidelity_kernels(x: torch.Tensor, fused: bool | None):
    """``kernels.fidelity_fused`` when the fidelity scores / epilogue of ``x`` run fused, else None:
    ``fused=None`` on CUDA with Triton (or ``_FUSED_ON_CPU``), ``fused=True`` on any device."""
    from .kernels import triton_available

    if fused is False or not triton_available() or not (fused or x.is_cuda or _FUSED_ON_CPU):
        return None
    from .kernels import fidelity_fused

    return fidelity_fused


def fused_detection_reason(q: torch.Tensor, criterion: str) -> str | None:
    """Why the fused detection cannot run on ``q`` (None when it can): it needs a CUDA tensor, Triton,
    the ``strict`` or ``rms`` criterion and a power-of-two head dim >= 16."""
    from .kernels import triton_available

    D = q.shape[-1]
    if not q.is_cuda:
        return "q is not a CUDA tensor"
    if not triton_available():
        return "triton is not importable"
    if criterion not in ("strict", "rms"):
        return f"criterion {criterion!r} has no fused kernel"
    if D < 16 or D & (D - 1):
        return f"head dim {D} is not a power of two >= 16"
    return None


def key_bias_from_mask(attn_mask: torch.Tensor | None, q: torch.Tensor) -> torch.Tensor | None:
    """Turn an SDPA key mask broadcastable to ``(B, H, 1, N)`` into a float32 key bias (bool: False =
    masked -> ``-inf``; float: additive). Any other mask raises ``ValueError``.

    Returns ``(B, N)`` when the mask is the same for every head (a ``(B, 1, 1, N)`` mask, or one repeated
    per head as Open-Sora-Plan passes it), else ``(B, H, N)``. Both are exact: a per-head bias is applied
    by running the heads as batch rows (see :func:`token_mode_attention`)."""
    if attn_mask is None:
        return None
    B, H, N, _ = q.shape
    try:
        ok = torch.broadcast_shapes(attn_mask.shape, (B, H, 1, N)) == (B, H, 1, N)
    except RuntimeError:
        ok = False
    if not ok:
        raise value_error(
            "attn_mask.shape", tuple(attn_mask.shape),
            f"token mode accepts only a key mask broadcastable to (B, H, 1, N) = {(B, H, 1, N)}",
            "pass a key-padding mask (one value per key, optionally per head), or use mode='channel' for "
            "general masks",
        )
    mask = attn_mask.expand(B, H, 1, N)[:, :, 0]  # (B, H, N)
    per_head = attn_mask.dim() >= 3 and attn_mask.shape[-3] != 1 and H > 1
    if per_head and (mask.stride(1) == 0 or torch.equal(mask, mask[:, :1].expand(B, H, N))):
        per_head = False  # repeated per head: one bias per key is the same mask
    mask = mask if per_head else mask[:, 0]  # (B, H, N) or (B, N)
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=torch.float32, device=q.device).masked_fill(~mask, float("-inf"))
    return mask.float()


def plan_pair_savings(q_src: torch.Tensor, k_src: torch.Tensor) -> torch.Tensor:
    """``1 - kept_q·kept_k / N²`` per head, mean over the batch: ``(H,)`` float64 on the CPU."""
    return _pair_savings(q_src, k_src).cpu()


def _pair_savings(q_src: torch.Tensor, k_src: torch.Tensor) -> torch.Tensor:
    """:func:`plan_pair_savings` on the plan's device (no host sync)."""
    N = q_src.shape[-1]
    ar = torch.arange(N, device=q_src.device)
    kept_q = (q_src == ar).sum(-1).double()  # (B, H)
    kept_k = (k_src == ar).sum(-1).double()  # (B, H)
    return (1 - kept_q * kept_k / (N * N)).mean(0)  # (H,)


def _token_stats(q_src, k_src, via_q, via_k, axes):
    """``(pair_savings (H,) float64 CPU, reused_fraction_q, reused_fraction_k)`` with one host sync
    (per layer on the GPU, so the three figures share it)."""
    H = q_src.shape[1]
    axes = tuple(axes)
    per_axis = [(via == options.AXES.index(a)).sum() for via in (via_q, via_k) for a in axes]
    host = torch.cat([_pair_savings(q_src, k_src), torch.stack(per_axis).double()]).cpu()  # axes is never empty
    counts = host[H:].tolist()
    fractions = [
        {a: c / max(via.numel(), 1) for a, c in zip(axes, counts[i * len(axes) : (i + 1) * len(axes)])}
        for i, via in enumerate((via_q, via_k))
    ]
    return host[:H].clone(), fractions[0], fractions[1]


def token_mode_attention(
    q, k, v, *, grid, thresholds, threshold, text_len, text_position, attn_mask, window, axes, priority,
    criterion, fraction, budget, scale, return_stats, token_keys="chain", key_budget=None, key_repr="source",
    query_repr="copy", key_score="delta", pair_savings=None, key_share=0.7, budget_scope="head", cuda_graph=False,
):
    """``ripple_attention(mode="token")`` after argument checks; see its docstring."""
    if v.shape != q.shape:
        raise value_error("v.shape", tuple(v.shape), f"token mode needs v.shape == q.shape {tuple(q.shape)}",
                          "use mode='channel' for a different value head dim")
    key_bias = key_bias_from_mask(attn_mask, q)  # (B, N) or None
    B, H, N, D = q.shape
    if budget is None and pair_savings is None and all(theta == 0 for theta in thresholds.values()):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
        return (out, RippleStats.dense(q.shape, axes, threshold, "token")) if return_stats else out
    if pair_savings is not None:  # scale-free target: budgets from the grid, per call
        budget, key_budget = token_fidelity.budgets_for_pair_savings(
            pair_savings, key_share, grid, tuple(thresholds), window, text_len, token_keys)
    opts = dict(grid=grid, thresholds=thresholds, threshold=threshold, text_len=text_len, text_position=text_position,
                key_bias=key_bias, window=window, axes=axes, priority=priority, criterion=criterion,
                fraction=fraction, budget=budget, scale=scale, token_keys=token_keys, key_budget=key_budget,
                key_repr=key_repr, query_repr=query_repr, key_score=key_score, budget_scope=budget_scope)
    if cuda_graph:  # budget mode has static shapes: replay the whole path as one CUDA graph
        from . import token_graph

        reason = token_graph.graph_unsupported_reason(q, budget=budget, budget_scope=budget_scope,
                                                      attn_mask=attn_mask, return_stats=return_stats)
        if reason is None:
            device_stats = return_stats == "device"

            def captured(q_, k_, v_):
                res = _token_path(q_, k_, v_, return_stats=device_stats and "device", **opts)
                return (res[0], res[1].qk_savings) if device_stats else res

            # budget mode reads only the axes of the thresholds, not their (scheduled) values
            signature = tuple((name, _hashable(tuple(val) if name == "thresholds" else val))
                              for name, val in sorted(opts.items()) if name not in ("key_bias", "threshold"))
            signature += (("stats", device_stats),)
            res = token_graph.run_graphed(captured, q, k, v, signature)
            if res is not None:
                if not device_stats:
                    return res
                out, pair = res
                return out, RippleStats(qk_savings=pair, qk_products=B * H * N * N * D, mode="token",
                                        threshold=threshold, pair_savings=pair)
        else:
            token_graph.warn_once(reason)
    return _token_path(q, k, v, return_stats=return_stats, **opts)


def _hashable(val):
    if isinstance(val, Mapping):
        return tuple(sorted((str(a), _hashable(b)) for a, b in val.items()))
    if isinstance(val, (list, tuple)):
        return tuple(_hashable(x) for x in val)
    return val


def _token_path(q, k, v, *, grid, thresholds, threshold, text_len, text_position, key_bias, window, axes, priority,
                criterion, fraction, budget, scale, return_stats, token_keys, key_budget, key_repr, query_repr,
                key_score, budget_scope):
    """The token path once the budgets are known (eager; :mod:`timeripple.token_graph` captures it)."""
    from .kernels import token_attention

    B, H, N, D = q.shape
    q_src, k_src, via_q, via_k = build_token_plan(
        q, k, grid=grid, thresholds=thresholds, text_len=text_len, text_position=text_position,
        window=window, priority=priority, criterion=criterion, fraction=fraction, budget=budget,
        token_keys=token_keys, key_budget=key_budget, v=v,
        query_score="interp" if query_repr == "interp" else "delta", key_score=key_score,
        budget_scope=budget_scope,
    )
    q_in = token_fidelity.group_mean_queries(q, q_src) if query_repr == "mean" else q
    expected = kept = None
    if budget is not None and budget_scope == "head" and token_keys == "chain" and key_bias is None:
        # budget mode: every head keeps the same, known number of queries and keys (static shapes)
        eligible = detect.eligible_count(grid, window, detect.checked_axes(thresholds, priority))
        kb = budget if key_budget is None else key_budget
        kept = [N - round(eligible * float(budget)), N - round(eligible * float(kb))]
    if budget is not None and token_keys == "pairs" and key_bias is None and window == 2:
        from .kernels.class_attention import expected_class_sizes

        axes_checked = tuple(a for a in detect.AXES if a in thresholds)
        kb = budget if key_budget is None else key_budget
        mq, sizes = expected_class_sizes(N, N - text_len, detect.eligible_count(grid, 2, axes_checked), budget,
                                         key_pairs.pair_count(grid, axes_checked), kb)
        expected = [mq, sizes[1], sizes[2]]
    if key_bias is not None and key_bias.dim() == 3:  # a key mask per head: the heads as batch rows
        def fold(x):
            return x.reshape(B * H, 1, N, *x.shape[3:])  # (B*H, 1, N, ...)

        out = token_attention(fold(q_in), fold(k), fold(v), fold(q_src), fold(k_src), scale=scale,
                              key_bias=key_bias.reshape(B * H, N), key_repr=key_repr).reshape(B, H, N, D)
    else:
        out = token_attention(q_in, k, v, q_src, k_src, scale=scale, key_bias=key_bias, key_repr=key_repr,
                              expected=expected, kept=kept)  # (B, H, N, D)
    if query_repr == "interp" and budget != 0:  # reused rows: interpolated between the kept rows around them
        start = text_len if text_position == "before" else 0
        fused_epilogue = _fidelity_kernels(out, None)
        if fused_epilogue is not None and out.stride(-1) == 1:  # one kernel, in place (out is ours)
            out = fused_epilogue.interpolate_reused_rows_fused(out, via_q, grid, window, start, len(thresholds))
        else:
            out = token_fidelity.interpolate_reused_rows(out, via_q, grid, window, start, len(thresholds))
    if not return_stats:
        return out
    if return_stats == "device":  # no host sync: savings stay on the device until someone reads them
        pair = _pair_savings(q_src, k_src)
        stats = RippleStats(qk_savings=pair, qk_products=B * H * N * N * D, mode="token", threshold=threshold,
                            pair_savings=pair)
        return out, stats
    pair, frac_q, frac_k = _token_stats(q_src, k_src, via_q, via_k, axes)
    stats = RippleStats(
        qk_savings=pair.clone(),
        reused_fraction_q=frac_q,
        reused_fraction_k=frac_k,
        qk_products=B * H * N * N * D,
        mode="token",
        threshold=threshold,
        pair_savings=pair,
    )
    return out, stats
