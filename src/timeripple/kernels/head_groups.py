"""Count-class attention per group of alike heads, for plans whose heads differ too much for one layout.

The count-class path (``class_attention.py``) runs every class with the same size in every head of a call:
a head's extra keys of a class are demoted (copies in class 1) and kept query lengths are padded to the
longest head. A budget pooled over the heads (the bundled plan) can merge almost every key of some heads
and none of others (heads of different scales, BENCHMARKS.md "Issue 10, round 4"); one layout then adds more
than ``PAD_LIMIT`` x the real pairs and the plan used to go to compaction, padded to the largest head: no time
saved at all. Here the ``(batch, head)`` rows are sorted by their kept keys and cut into groups whose largest
kept count is at most ``GROUP_SPREAD`` x the smallest; each group runs the dispatcher on its own rows (its
own layout, built from the host values that the plan's one layout read already holds: no other host read),
and the rows are written back. Exact as every path: only the batching changes.
"""

from __future__ import annotations

import torch

# largest / smallest kept keys (and kept queries) inside one group of heads
GROUP_SPREAD = 1.25
# reasons of ``ClassLayout`` that grouping the heads can remove (differences between heads)
GROUPABLE = ("kept query lengths differ too much between heads", "class sizes differ too much between heads")


def head_groups(kept_q: list[int], kept_k: list[int], spread: float = GROUP_SPREAD) -> list[list[int]]:
    """Rows (indices into the lists) sorted by kept keys, then kept queries, cut where a row's kept keys or
    queries exceed ``spread`` x the group's first (smallest) row's. Every row is in one group."""
    order = sorted(range(len(kept_k)), key=lambda i: (kept_k[i], kept_q[i]))
    groups = [[order[0]]]
    for i in order[1:]:
        first = groups[-1][0]
        if kept_k[i] <= spread * max(kept_k[first], 1) and kept_q[i] <= spread * max(kept_q[first], 1):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def grouped_token_attention(attend, q, k, v, q_src, k_src, key_bias, layout):
    """``attend(q, k, v, q_src, k_src, known=...)`` (the dispatcher, without grouping) once per group of alike
    ``(batch, head)`` rows, the rows of each group stacked as the heads of one batch row; ``None`` when the
    rows form one group (nothing to gain) or a key bias differs between batch rows (it could not follow
    its rows). ``layout``: the plan's :class:`ClassLayout`, whose one host read already holds every row's
    kept counts (``layout.rows``); each group's layout is built from them (``known``): no other host read."""
    B, H, N, D = q.shape
    if key_bias is not None and (B > 1 or key_bias.dim() != 2):
        return None
    rows = layout.rows
    groups = head_groups(rows["lq"], rows["lk"])
    if len(groups) < 2:
        return None
    flat = lambda x: x.reshape(B * H, *x.shape[2:])  # noqa: E731  (a view where the layout allows, else a copy)
    qf, kf, vf, qs, ks = (flat(x) for x in (q, k, v, q_src, k_src))
    out = torch.empty((B * H, N, v.shape[-1]), dtype=q.dtype, device=q.device)
    for group in groups:
        idx = torch.tensor(group, dtype=torch.long).to(q.device, non_blocking=True)  # no stream sync
        part = [x.index_select(0, idx).unsqueeze(0) for x in (qf, kf, vf, qs, ks)]  # (1, G, N, ·)
        known = {name: [rows[name][i] for i in group] for name in ("hist", "lq", "lk")}
        out.index_copy_(0, idx, attend(*part, known=dict(known, other_bias=rows["other_bias"]))[0])
    return out.reshape(B, H, N, v.shape[-1])
