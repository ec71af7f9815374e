"""Channel mode (the paper): build ``q̃``/``k̃`` from the detected sources and count what is skipped.

``q̃``, ``k̃`` are ``q``, ``k`` with every reused element replaced by its resolved source's value (per
channel); attention is then ordinary SDPA on ``(q̃, k̃, v)``. That is exactly what the paper computes.
On tensor cores the product stays dense, so the savings here are counted, not timed.
"""

from __future__ import annotations

import torch

from .detect import detect_channel_sources, window_std
from .options import AXES


def apply_sources(x: torch.Tensor, src: torch.Tensor, start: int) -> torch.Tensor:
    """``x`` ``(B, H, N, D)`` with its video slice ``[start, start + Nv)`` gathered by ``src``.

    Args:
        src (`torch.Tensor`): int64 ``(B, H, Nv, D)``, the video index whose value each element takes.
    Returns:
        `torch.Tensor`: a new ``(B, H, N, D)`` tensor in ``x``'s dtype; text tokens are unchanged.
    """
    nv = src.shape[2]
    out = x.clone()
    out[:, :, start : start + nv] = torch.gather(x[:, :, start : start + nv], 2, src)  # (B, H, Nv, D)
    return out


def channel_qk_savings(src_q: torch.Tensor, src_k: torch.Tensor, n_q: int, n_k: int) -> torch.Tensor:
    """Exact fraction of ``q kᵀ`` partial products skipped, per head, mean over the batch.

    For each ``(b, h, c)`` with ``r_q`` reused query and ``r_k`` reused key elements in channel ``c``,
    ``skipped = N_q·N_k - (N_q - r_q)(N_k - r_k)``; summed over ``c`` and divided by ``N_q·N_k·D``.
    ``n_q``/``n_k`` count the whole sequence (text tokens are never reused).

    Returns:
        `torch.Tensor`: ``(H,)`` float64 on the CPU.
    """
    idx = torch.arange(src_q.shape[2], device=src_q.device).view(1, 1, -1, 1)
    r_q = (src_q != idx).sum(dim=2)  # (B, H, D)
    r_k = (src_k != idx).sum(dim=2)  # (B, H, D)
    return qk_savings_from_counts(r_q, r_k, n_q, n_k).cpu()  # (H,)


def qk_savings_from_counts(r_q: torch.Tensor, r_k: torch.Tensor, n_q: int, n_k: int) -> torch.Tensor:
    """``channel_qk_savings`` from the reused counts ``r_q``, ``r_k`` ``(B, H, D)`` per channel.

    Returns:
        `torch.Tensor`: ``(H,)`` float64 on the counts' device (no host sync).
    """
    r_q, r_k = r_q.double(), r_k.double()
    skipped = n_q * n_k - (n_q - r_q) * (n_k - r_k)  # (B, H, D)
    return (skipped.sum(-1) / (n_q * n_k * r_q.shape[-1])).mean(0)  # (H,)


def reused_fractions(via: torch.Tensor, axes=AXES) -> dict[str, float]:
    """Fraction of entries of ``via`` (int8, -1 = computed) reused through each axis of ``axes``."""
    total = max(via.numel(), 1)
    counts = torch.stack([(via == AXES.index(a)).sum() for a in axes]).cpu().tolist() if axes else []
    return {a: c / total for a, c in zip(axes, counts)}


# ----------------------------------------------------------------------------------------------
# window-cube path (CPU and any device): q̃/k̃ and counts without per-element source tensors


def cube_path_supported(grid, window: int) -> bool:
    """The cube path needs every trailing partial window to have size 0 or 1 (always true for
    ``window=2``): a size-1 window never reuses, so padding it to a full window with NaN (which never
    passes) changes nothing."""
    return all(int(g) % window <= 1 for g in grid)


def cube_path_preferred(device, grid, window: int) -> bool:
    """Whether channel mode's torch path takes the window cubes (:func:`cube_channel_reuse`): on the CPU
    only, where it is much faster than the int64 per-element source tensors. On an accelerator it is
    launch-bound, about ``K³`` small ops per side (399 at window 2, 22,347 at window 8 on the tiny
    model's grid), while the source path is about 130 whatever the window; CUDA calls reach the torch
    path only where the fused kernel does not apply (window > 4, ``channel_alpha``, no Triton)."""
    return torch.device(device).type == "cpu" and cube_path_supported(grid, window)


def cube_channel_reuse(x: torch.Tensor, grid, thresholds, *, window: int, priority) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel-mode reuse of one side, computed window cube by window cube.

    Everything that decides an element's resolved source lies inside its ``K×K×K`` window cube: the
    line ``Δ`` on each axis, the pass decisions and every hop of a chain (a hop moves one coordinate to
    the window start). So the positions of the cube are visited in order of how many coordinates are
    off the window start, and each takes its source's already-resolved value. Same decisions and
    values as :func:`detect.detect_channel_sources` + :func:`apply_sources`, without the int64
    ``(B, H, Nv, D)`` source tensors (much faster on the CPU).

    Args:
        x (`torch.Tensor`): video slice ``(B, H, Nv, D)``.
        thresholds (`dict[str, float]`): ``θ`` per checked axis (axes at 0 are unchecked).
    Returns:
        ``(x̃, counts)``: ``x̃`` ``(B, H, Nv, D)`` in ``x``'s dtype and int64 counts ``(B, H, 4, D)``
        (reused elements; reused via t, y, x), the layout of the fused CUDA kernel.
    """

    B, H, Nv, D = x.shape
    K = window
    T, Hg, Wg = (int(g) for g in grid)
    checked = [a for a in priority if float(thresholds.get(a, 0)) != 0]
    pads = [(-L) % K for L in (T, Hg, Wg)]
    x5 = x.reshape(B, H, T, Hg, Wg, D)
    if any(pads):  # NaN never passes, so padded tokens are never reused and never sources
        x5 = torch.nn.functional.pad(x5, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]), value=float("nan"))
    nt, ny, nx = ((L + p) // K for L, p in zip((T, Hg, Wg), pads))
    # window positions first, so every position's values are one contiguous block
    cube = x5.reshape(B, H, nt, K, ny, K, nx, K, D).permute(3, 5, 7, 0, 1, 2, 4, 6, 8).contiguous()  # (K,K,K,B,H,nt,ny,nx,D)
    positions = [(i, j, l) for i in range(K) for j in range(K) for l in range(K)]
    passes = {}  # (axis, position) -> bool (B, H, nt, ny, nx, D): the line through the position passes
    for axis in checked:
        a = AXES.index(axis)
        for pos in positions:
            if pos[a] != 0:
                continue
            members = []
            for m in range(K):
                member = list(pos)
                member[a] = m
                members.append(cube[tuple(member)].float())
            ok = window_std(torch.stack(members, dim=-2)) < float(thresholds[axis])  # (B,H,nt,ny,nx,D)
            for m in range(1, K):
                member = list(pos)
                member[a] = m
                passes[axis, tuple(member)] = ok
    counts = torch.zeros(B, H, 4, D, dtype=torch.int64, device=x.device)
    resolved = {}
    for pos in sorted(positions, key=lambda p: sum(c != 0 for c in p)):  # sources before their members
        value = cube[pos]  # (B, H, nt, ny, nx, D)
        taken = None
        for axis in checked:
            a = AXES.index(axis)
            if pos[a] == 0:
                continue  # a window's first member is never reused on that axis
            ok = passes[axis, pos] if taken is None else passes[axis, pos] & ~taken
            source = list(pos)
            source[a] = 0
            value = torch.where(ok, resolved[tuple(source)], value)
            taken = ok if taken is None else taken | ok
            counts[:, :, 1 + a] += ok.sum(dim=(2, 3, 4))
        if taken is not None:
            counts[:, :, 0] += taken.sum(dim=(2, 3, 4))
        resolved[pos] = value
    out = torch.stack([resolved[p] for p in positions]).unflatten(0, (K, K, K))  # (K,K,K,B,H,nt,ny,nx,D)
    out = out.permute(3, 4, 5, 0, 6, 1, 7, 2, 8).reshape(B, H, nt * K, ny * K, nx * K, D)[:, :, :T, :Hg, :Wg]
    return out.reshape(B, H, Nv, D), counts


def channel_reuse_counts(x, grid, thresholds, window=2, priority=AXES):
    """Channel reuse of one side's video part ``x`` ``(B, H, Nv, D)`` through the per-element sources of
    ``detect.detect_channel_sources``: the plain-torch specification of the fused kernel
    ``kernels.channel_fused.channel_reuse_fused``.

    Returns ``(x̃, counts)``: ``x̃`` ``(B, H, Nv, D)`` and int32 counts ``(B, H, 4, D)`` (reused; via t, y, x).
    """
    src, via = detect_channel_sources(x, grid, thresholds, window=window, priority=priority)
    x_t = torch.gather(x, 2, src)  # (B, H, Nv, D)
    counts = torch.stack([(via >= 0).sum(2)] + [(via == i).sum(2) for i in range(3)], dim=2)  # (B, H, 4, D)
    return x_t, counts.int()
