"""``ripple_attention``: the one functional entry point of TimeRipple."""

from __future__ import annotations

import logging
import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from . import channel_mode, detect, options, sequence
from ._validation import type_error, value_error
from .ripple_stats import RippleStats

logger = logging.getLogger(__name__)


def ripple_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    grid: Sequence[int],
    threshold: float | Mapping[str, float] | None,
    text_len: int = 0,
    text_position: str = "after",
    attn_mask: torch.Tensor | None = None,
    mode: str = "channel",
    window: int = 2,
    axes: Sequence[str] = ("t", "y", "x"),
    priority: Sequence[str] = ("t", "y", "x"),
    channel_alpha: float | None = None,
    token_criterion: str = "strict",
    token_fraction: float = 0.9,
    budget: float | None = None,
    scale: float | None = None,
    return_stats: bool | str = False,
    token_keys: str = "chain",
    key_budget: float | None = None,
    key_repr: str = "source",
    query_repr: str = "copy",
    key_score: str = "delta",
    pair_savings: float | None = None,
    key_share: float = 0.7,
    budget_scope: str = "head",
    cuda_graph: bool = False,
):
    r"""Self-attention that reuses ``q``/``k`` values between neighbouring video tokens (TimeRipple).

    For every head, each video element of ``q`` and ``k`` is compared with its window partners along
    time (``t``), height (``y``) and width (``x``); where the window's population std ``Δ`` is below the
    threshold, non-first members reuse the first member's value. Text tokens are never reused.

    Args:
        q, k, v (`torch.Tensor`): ``(B, H, N, D)`` (``v`` may have another last dim), same dtype and
            device, after qk-norm and RoPE. ``N = T*Hg*Wg + text_len``, video t-major.
        grid (`tuple[int, int, int]`): latent grid ``(T, Hg, Wg)`` of the video tokens.
        threshold (`float`, `dict[str, float]` or `None`): ``θ``, in units of the raw q/k values.
            ``None`` is dense attention (plain SDPA). A float applies to every axis of ``axes``; a dict
            ``{"t": 0.4, "x": 0.3}`` checks only the axes it names. ``0`` reuses nothing (bit-identical
            to SDPA). Raising it reuses more (more savings, larger error); lowering it reuses less.
        text_len (`int`, defaults to 0): number of text tokens in the joint sequence.
        text_position (`str`, defaults to `"after"`): ``"after"`` (``[video | text]``, HunyuanVideo) or
            ``"before"`` (``[text | video]``, CogVideoX).
        attn_mask (`torch.Tensor`, *optional*): bool (True = attend) or additive float mask broadcastable
            to ``(B, H, N, N)``, passed to SDPA. Token mode accepts only a key mask broadcastable to
            ``(B, H, 1, N)`` (one value per key, optionally per head).
        mode (`str`, defaults to `"channel"`): ``"channel"`` reuses single elements (the paper; the
            product stays dense, savings are counted). ``"token"`` reuses whole head vectors (strict by
            default) and runs attention over the kept queries and keys only: a reused query copies its
            source's output row; a reused key is merged into its source (mean ``v``, ``log(count)`` bias).
            Token mode is inference only: it raises ``ValueError`` when ``q``, ``k`` or ``v`` requires grad.
        window (`int`, defaults to 2): window size ``K >= 2`` along each axis. Larger windows reuse more
            tokens per window (more savings) but compare values that are further apart.
        axes (`tuple[str, ...]`, defaults to `("t", "y", "x")`): the axes checked.
        priority (`tuple[str, ...]`, defaults to `("t", "y", "x")`): when several axes pass, the first
            in this order gives the source.
        channel_alpha (`float`, *optional*): channel mode only. Per-window adaptive bound
            ``τ = α · mean_c Δ_c`` (mean over the ``D`` channels of that window's ``Δ``) replaces ``θ``:
            an element passes when ``Δ_c < τ``. ``threshold`` must still be set (not ``None``) to enable
            reuse, and axes whose threshold is ``0`` stay unchecked. Higher ``α`` reuses more.
        token_criterion (`str`, defaults to `"strict"`): token mode. ``"strict"``: every channel has
            ``Δ < θ`` on the same axis; ``"fraction"``: at least ``token_fraction`` of the channels do;
            ``"rms"``: ``sqrt(mean_c Δ_c²) < θ``. Relaxed criteria reuse more tokens.
        token_fraction (`float`, defaults to 0.9): share of channels that must pass for ``"fraction"``.
        budget (`float`, *optional*): token mode. Reuse ``round(budget · eligible)`` tokens per
            ``(batch, head, side)`` with the smallest score, for predictable cost, in ``(0, 1]``. The
            threshold *value* is then ignored (a dict still selects the axes; ``None`` still means dense).
        scale (`float`, *optional*): softmax scale, default ``1/sqrt(D)``.
        return_stats (`bool` or `str`, defaults to `False`): also return a :class:`~timeripple.RippleStats`.
            ``"device"`` (token mode): its ``qk_savings`` / ``pair_savings`` stay on the device and the
            reused fractions are left empty, so the call makes no host sync for statistics.
        token_keys (`str`, defaults to `"chain"`): token mode. ``"chain"``: keys merge like queries (any
            group a window allows). ``"pairs"``: keys merge only in disjoint pairs (window 2; one pairing
            axis per 2x2x2 cube), so every merged key has count 2 and, in budget mode, every head the
            same number of pairs: attention then runs without a per-key bias (faster on cuDNN).
        key_budget (`float`, *optional*): token mode with ``budget``: the key side's budget (default
            ``budget``); with ``"pairs"`` the share of the possible pairs merged.
            ``pairs.pair_budgets_for_pair_savings`` gives both budgets for a pair-savings target.
        key_repr (`str`, defaults to `"source"`): token mode. The key standing for a merged group: its
            source's ``k`` or the group's ``"mean"`` ``k`` (``v`` is always the group mean).
        query_repr (`str`, defaults to `"copy"`): token mode. A reused query's output row: its source's
            row (``"copy"``), the row computed at its group's mean query (``"mean"``), or the linear
            interpolation of the rows of the window-first tokens around it on its axis (``"interp"``;
            those queries are then selected by the interpolation residual). See ``timeripple.token_fidelity``.
        key_score (`str`, defaults to `"delta"`): token mode with a budget. ``"delta"``: keys are selected
            by ``token_criterion`` on ``k``; ``"kv"``: by the merge-error score ``|δk|·(|δv| + ½|δk|·σ_v)``.
        pair_savings (`float`, *optional*): token mode. A target share of skipped query-key pairs in
            ``[0, 1)``; the budgets of both sides are computed for the grid on every call (scale-free,
            unlike a threshold). Replaces ``budget`` / ``key_budget`` (pass neither).
        key_share (`float`, defaults to 0.7): with ``pair_savings``, the key side's share of the saving:
            ``kept_k / N = (1 - pair_savings) ** key_share``, ``kept_q / N = (1 - pair_savings) ** (1 - key_share)``.
        budget_scope (`str`, defaults to `"head"`): token mode with a budget: ``"head"`` reuses the budget in
            every head (equal kept counts: static shapes); ``"call"`` pools it over the heads of the call
            (heads whose tokens are more alike reuse more; same total; ``token_keys="chain"`` only).
        cuda_graph (`bool`, defaults to `False`): token mode in budget mode (``budget`` or ``pair_savings``,
            ``budget_scope="head"``, no mask, ``return_stats`` False or ``"device"``) on CUDA: capture the
            whole token path once per call signature and replay it as a CUDA graph (no per-kernel launch
            cost; the same result). Other calls run eagerly with one warning (``timeripple.token_graph``).

    Returns:
        `torch.Tensor` ``(B, H, N, Dv)`` in ``q``'s dtype, or ``(out, stats)`` with ``return_stats``.

    Example:
        >>> import torch, timeripple
        >>> t = torch.linspace(0, 1, 4).view(4, 1, 1, 1)
        >>> q = (t + 0.01 * torch.randn(4, 6, 6, 64)).reshape(1, 1, 144, 64)  # slowly varying in time
        >>> out, stats = timeripple.ripple_attention(q, q, q, grid=(4, 6, 6), threshold=0.2, return_stats=True)
        >>> out.shape, stats.qk_savings_mean > 0.5
        (torch.Size([1, 1, 144, 64]), True)
    """
    options.check_tensors(q, k, v)
    B, H, N, D = q.shape
    options.check_geometry(grid, window, axes, priority)
    grid = tuple(int(g) for g in grid)
    options.check_text(text_len, text_position, grid, N)
    options.check_mode_options(mode, channel_alpha=channel_alpha, token_criterion=token_criterion,
                               token_fraction=token_fraction, budget=budget, scale=scale)
    options.check_token_plan_options(mode, token_keys=token_keys, key_budget=key_budget, key_repr=key_repr,
                                     budget=budget, window=window)
    options.check_fidelity_options(mode, query_repr=query_repr, key_score=key_score, pair_savings=pair_savings,
                                   key_share=key_share, budget_scope=budget_scope, budget=budget,
                                   key_budget=key_budget, token_keys=token_keys)
    if not isinstance(cuda_graph, bool):
        raise type_error("cuda_graph", cuda_graph, "a bool", "pass cuda_graph=True or False")
    if cuda_graph and mode != "token":
        raise value_error("cuda_graph", cuda_graph, "applies to mode='token' only (channel mode is one fused "
                          "kernel and one SDPA call)", "set mode='token', or cuda_graph=False")
    if not (isinstance(return_stats, bool) or return_stats == "device"):
        raise type_error("return_stats", return_stats, "a bool, or 'device' (token mode only)",
                         "pass return_stats=True or False")
    if return_stats == "device" and mode != "token":
        raise value_error("return_stats", return_stats, "'device' applies to mode='token' only",
                          "pass return_stats=True")
    options.check_mask(attn_mask, q)
    text_len = int(text_len)
    if threshold is not None and mode == "token" and torch.is_grad_enabled() and any(
        x.requires_grad for x in (q, k, v)
    ):
        raise value_error(
            "mode", mode, "token mode is inference only: its kernels have no backward, and q, k or v requires "
            "grad", "run it under `torch.no_grad()` / `torch.inference_mode()`, or use mode='channel' to train",
        )
    if threshold is None or B * H == 0:  # dense, or an empty batch: nothing to detect
        if threshold is not None:
            options.normalize_thresholds(threshold, axes)  # still validated
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
        stats_mode = "dense" if threshold is None else mode
        return (out, RippleStats.dense(q.shape, axes, threshold, stats_mode)) if return_stats else out
    thresholds = options.normalize_thresholds(threshold, axes)
    if mode == "token":
        from .token_plan import token_mode_attention  # token mode needs the kernels package

        return token_mode_attention(
            q, k, v, grid=grid, thresholds=thresholds, threshold=threshold, text_len=text_len,
            text_position=text_position, attn_mask=attn_mask, window=window, axes=axes, priority=priority,
            criterion=token_criterion, fraction=token_fraction, budget=budget, scale=scale,
            return_stats=return_stats, token_keys=token_keys, key_budget=key_budget, key_repr=key_repr,
            query_repr=query_repr, key_score=key_score, pair_savings=pair_savings, key_share=key_share,
            budget_scope=budget_scope, cuda_graph=cuda_graph,
        )
    if all(theta == 0 for theta in thresholds.values()):  # nothing can pass: skip detection entirely
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
        return (out, RippleStats.dense(q.shape, axes, threshold, mode)) if return_stats else out
    fused = _fused_channel_kernels(q, k, window, channel_alpha)
    if fused is not None:  # CUDA: one fused detection + reuse kernel per side, then the fastest SDPA
        q_t, k_t, counts = fused.channel_reuse_fused(
            q, k, grid=grid, thresholds=thresholds, text_len=text_len, text_position=text_position,
            window=window, priority=priority, stats=return_stats,
        )  # (B, H, N, D) x2, int32 (2, B, H, 4, D)
        out = F.scaled_dot_product_attention(q_t, k_t, v, attn_mask=attn_mask, scale=scale)  # (B, H, N, Dv)
        if not return_stats:
            return out
        qk_savings, frac_q, frac_k = _stats_from_counts(counts, N, math.prod(grid), axes)
    elif channel_alpha is None and channel_mode.cube_path_preferred(q.device, grid, window):  # CPU: window cubes
        sides = []
        for x in (q, k):
            video, start = sequence.split_video(x, text_len, text_position)  # (B, H, Nv, D)
            video_t, counts = channel_mode.cube_channel_reuse(video, grid, thresholds, window=window, priority=priority)
            x_t = x.clone()
            x_t[:, :, start : start + video.shape[2]] = video_t
            sides.append((x_t, counts))
        (q_t, counts_q), (k_t, counts_k) = sides
        out = F.scaled_dot_product_attention(q_t, k_t, v, attn_mask=attn_mask, scale=scale)  # (B, H, N, Dv)
        if not return_stats:
            return out
        qk_savings, frac_q, frac_k = _stats_from_counts(torch.stack([counts_q, counts_k]), N, math.prod(grid), axes)
    else:  # channel_alpha or partial windows of size >= 2: the per-element source tensors
        q_t, k_t, src_q, src_k, via_q, via_k = channel_reuse(
            q, k, grid=grid, thresholds=thresholds, text_len=text_len, text_position=text_position,
            window=window, priority=priority, channel_alpha=channel_alpha,
        )
        out = F.scaled_dot_product_attention(q_t, k_t, v, attn_mask=attn_mask, scale=scale)  # (B, H, N, Dv)
        if not return_stats:
            return out
        qk_savings = channel_mode.channel_qk_savings(src_q, src_k, N, N)
        frac_q, frac_k = channel_mode.reused_fractions(via_q, axes), channel_mode.reused_fractions(via_k, axes)
    stats = RippleStats(
        qk_savings=qk_savings,
        reused_fraction_q=frac_q,
        reused_fraction_k=frac_k,
        qk_products=B * H * N * N * D,
        mode="channel",
        threshold=threshold,
    )
    return out, stats


def channel_reuse(
    q, k, *, grid, thresholds, text_len, text_position, window, priority, channel_alpha, fill=None
):
    """Detect on the video slices of ``q`` and ``k`` and build ``q̃``, ``k̃`` ``(B, H, N, D)``.

    With ``fill`` set (the "skip" baseline), reused elements are set to ``fill`` instead of their
    source's value. Returns ``(q̃, k̃, src_q, src_k, via_q, via_k)``.
    """
    results = []
    for x in (q, k):
        video, start = sequence.split_video(x, text_len, text_position)  # (B, H, Nv, D)
        src, via = detect.detect_channel_sources(
            video, grid, thresholds, window=window, priority=priority, channel_alpha=channel_alpha
        )
        if fill is None:
            x_t = channel_mode.apply_sources(x, src, start)
        else:
            x_t = x.clone()
            x_t[:, :, start : start + video.shape[2]] = video.masked_fill(via >= 0, fill)
        results.append((x_t, src, via))
    (q_t, src_q, via_q), (k_t, src_k, via_k) = results
    return q_t, k_t, src_q, src_k, via_q, via_k


# ----------------------------------------------------------------------------------------------
# fused channel mode (CUDA)

_FUSED_ON_CPU = False  # tests set it under TRITON_INTERPRET=1 to run the fused path on CPU tensors
_fallback_warned: set[str] = set()


def _fused_channel_kernels(q, k, window, channel_alpha):
    """The fused channel-kernel module when this call can use it, else None (the torch path).
    A CUDA tensor that falls back logs one warning per reason."""
    if not (q.is_cuda or _FUSED_ON_CPU):
        return None
    try:
        from .kernels import channel_fused
    except ImportError as exc:  # Triton is an optional dependency
        reason = f"triton is not importable ({exc!r})"
    else:
        reason = channel_fused.fused_unsupported_reason(q, window, channel_alpha)
        if reason is None and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
            reason = "the fused kernel has no backward (q or k requires grad)"
        if reason is None:
            return channel_fused
    if reason not in _fallback_warned:
        _fallback_warned.add(reason)
        logger.warning("timeripple channel mode falls back to the torch path: %s", reason)
    return None


def _stats_from_counts(counts, n, nv, axes):
    """``(qk_savings, reused_fraction_q, reused_fraction_k)`` from the fused kernel's int32 counts
    ``(2, B, H, 4, D)`` (reused; via t, y, x), with one host sync."""
    _, B, H, _, D = counts.shape
    savings = channel_mode.qk_savings_from_counts(counts[0, :, :, 0], counts[1, :, :, 0], n, n)  # (H,)
    per_axis = counts[:, :, :, 1:].sum(dim=(1, 2, 4)).double() / max(B * H * nv * D, 1)  # (2, 3)
    host = torch.cat([savings, per_axis.flatten()]).cpu()
    frac = host[H:].view(2, 3).tolist()
    fractions = [{a: side[options.AXES.index(a)] for a in axes} for side in frac]
    return host[:H].clone(), fractions[0], fractions[1]
