"""Token-plan lab (issue 9): candidate token plans against exact attention on captured q/k/v.

Throwaway research code kept as the record behind docs/method.md "Token-plan fidelity": capture with
`token_plan_capture.py` (tiny model, 3 prompts outside the fixed lists, steps 5/9/13/17 of a dense 20-step
run, guidance 5), then `run_plan(q, k, v, grid, fq, fk, kgroup=..., krep=..., kcrit=..., qrule=...)` gives the
output and the pair savings of one plan; `refs.channel` / `refs.magnitude` match the references by bisection.
Not a maintained tool: the library implements the winners in timeripple.token_fidelity.
"""
import math, torch
import torch.nn.functional as F
from timeripple import detect
torch.set_num_threads(1)
AX = ("t", "y", "x")
POOL = False

def coords(grid):
    T, Hg, Wg = grid
    idx = torch.arange(T * Hg * Wg)
    return idx, {"t": idx // (Hg * Wg), "y": (idx // Wg) % Hg, "x": idx % Wg}, {"t": Hg * Wg, "y": Wg, "x": 1}, dict(zip(AX, grid))

def exact(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)

def select_budget(score, r):
    """score (H, N) with inf = ineligible; return bool (H, N): r smallest per head."""
    H, N = score.shape
    if POOL:
        flat = score.flatten()
        sel = torch.zeros(H * N, dtype=torch.bool)
        sel[flat.argsort(stable=True)[: r * H]] = True
        return sel.view(H, N) & torch.isfinite(score)
    order = score.argsort(dim=-1, stable=True)
    sel = torch.zeros(H, N, dtype=torch.bool)
    sel.scatter_(1, order[:, :r], True)
    return sel & torch.isfinite(score)

# ---------------- key side ----------------
def key_scores(k, v, grid, crit, chans=None, qscale=None, qs=None):
    """per token, per axis: score of merging token i (odd on axis) into i - stride. (H, N, 3)"""
    idx, c, st, L = coords(grid)
    H, N, D = k.shape
    out = torch.full((H, N, 3), math.inf, dtype=k.dtype)
    for a_i, a in enumerate(AX):
        odd = c[a] % 2 == 1
        j = torch.where(odd, idx - st[a], idx)
        dk = (k - k[:, j]) / 2  # (H, N, D)
        dv = (v - v[:, j]) / 2
        if crit == "strict":
            s = dk.abs().amax(-1)
        elif crit == "rms":
            s = dk.square().mean(-1).sqrt()
        elif crit == "kv":  # |dk| * |dv| + |dk|^2 * typical |v|
            s = dk.norm(dim=-1) * (dv.norm(dim=-1) + 0.5 * qscale * dk.norm(dim=-1) * v.std())
        elif crit == "kqv":
            s = qscale * dk.norm(dim=-1) * (dv.norm(dim=-1))+ (qscale * dk.norm(dim=-1))**2 * v.std() * 0.5
        elif crit == "est":  # sampled queries qs (H, m, D): E_i[((p_i,j - p_i,j')/2)^2] * |v_j - v_j'|^2
            p = torch.softmax(qs @ k.transpose(-1, -2) * k.shape[-1] ** -0.5, -1)  # (H, m, N)
            dp = (p - p[:, :, j]) / 2
            s = (dp.square().mean(1) * (2 * dv).square().sum(-1)).sqrt()
        elif crit == "estc":  # C-weighted kv: sqrt(d^T C d) * |dv|
            C = qs.transpose(-1, -2) @ qs / qs.shape[1]
            s = torch.einsum("hnd,hde,hne->hn", dk, C, dk).clamp_min(0).sqrt() * dv.norm(dim=-1)
        elif crit == "chan":  # max over rope groups of rms
            s = torch.stack([dk[..., g].square().mean(-1).sqrt() for g in chans], -1).amax(-1)
        out[..., a_i] = torch.where(odd[None], s, math.inf)
    return out

def key_groups_cube(k, v, grid, r, crit, **kw):
    """today's structure: non-first picks best axis, budget r reused, chains -> group root (H, N)"""
    sc = key_scores(k, v, grid, crit, **kw)
    best, ax = sc.min(-1)
    sel = select_budget(best, r)
    idx, c, st, L = coords(grid)
    strides = torch.tensor([st[a] for a in AX])
    src = torch.where(sel, idx - strides[ax], idx)
    for _ in range(3):
        src = src.gather(1, src)
    return src

def key_groups_pairs_greedy(k, v, grid, r, crit, **kw):
    """pairs only: greedy disjoint matching of candidate pairs in ascending score, r pairs per head"""
    sc = key_scores(k, v, grid, crit, **kw)  # (H, N, 3)
    idx, c, st, L = coords(grid)
    H, N, _ = sc.shape
    srcs = []
    for h in range(H):
        flat = sc[h].flatten()
        order = flat.argsort()
        free = torch.ones(N, dtype=torch.bool)
        src = idx.clone()
        taken = 0
        strides = [st[a] for a in AX]
        for o in order.tolist():
            if taken >= r or not math.isfinite(flat[o].item()):
                break
            i, a = divmod(o, 3)
            j = i - strides[a]
            if free[i] and free[j]:
                free[i] = free[j] = False
                src[i] = j
                taken += 1
        srcs.append(src)
    return torch.stack(srcs)

def key_groups_pairs_cube(k, v, grid, r, crit, **kw):
    """pairs only, GPU-friendly: per 2x2x2 cube the axis with the smallest summed score; its pairs are candidates"""
    sc = key_scores(k, v, grid, crit, **kw)
    idx, c, st, L = coords(grid)
    H, N, _ = sc.shape
    cube = (c["t"] // 2) * 100000 + (c["y"] // 2) * 1000 + c["x"] // 2
    _, cube_id = torch.unique(cube, return_inverse=True)
    nc = int(cube_id.max()) + 1
    fin = torch.where(torch.isfinite(sc), sc, torch.zeros_like(sc))
    cnt = torch.zeros(H, nc, 3, dtype=sc.dtype).index_add_(1, cube_id, torch.isfinite(sc).to(sc.dtype))
    tot = torch.zeros(H, nc, 3, dtype=sc.dtype).index_add_(1, cube_id, fin)
    mean = torch.where(cnt > 0, tot / cnt.clamp_min(1), math.inf)
    cube_ax = mean.argmin(-1)  # (H, nc)
    ax_tok = cube_ax.gather(1, cube_id[None].expand(H, N))  # (H, N)
    s = sc.gather(2, ax_tok[..., None])[..., 0]
    sel = select_budget(s, r)
    strides = torch.tensor([st[a] for a in AX])
    return torch.where(sel, idx - strides[ax_tok], idx)

def key_groups_t(k, v, grid, r, crit, **kw):
    sc = key_scores(k, v, grid, crit, **kw)[..., 0]
    idx, c, st, L = coords(grid)
    sel = select_budget(sc, r)
    return torch.where(sel, idx - st["t"], idx)

def key_reps(k, v, src, rep):
    H, N, D = k.shape
    cnt = torch.zeros(H, N, dtype=k.dtype).scatter_add_(1, src, torch.ones(H, N, dtype=k.dtype))
    vs = torch.zeros_like(v).scatter_add_(1, src[..., None].expand(H, N, D), v)
    kept = cnt > 0
    vm = vs / cnt.clamp_min(1)[..., None]
    if rep == "first":
        km = k
    else:
        km = torch.zeros_like(k).scatter_add_(1, src[..., None].expand(H, N, D), k) / cnt.clamp_min(1)[..., None]
    bias = torch.where(kept, cnt.clamp_min(1).log(), -math.inf)
    return km, vm, bias, kept

# ---------------- query side ----------------
def q_scores(q, grid, kind):
    idx, c, st, L = coords(grid)
    H, N, D = q.shape
    out = torch.full((H, N, 3), math.inf, dtype=q.dtype)
    for a_i, a in enumerate(AX):
        odd = c[a] % 2 == 1
        prev = torch.where(odd, idx - st[a], idx)
        has_next = odd & (c[a] + 1 < L[a])
        nxt = torch.where(has_next, idx + st[a], prev)
        if kind == "interp":
            d = q - 0.5 * (q[:, prev] + q[:, nxt])
        elif kind == "mean":
            d = (q - q[:, prev]) / 2
        else:
            d = q - q[:, prev]
        s = d.norm(dim=-1)
        out[..., a_i] = torch.where(odd[None], s, math.inf)
    return out

def q_plan(q, grid, r, rule):
    """returns (q_eval (H,N,D), fill function out_comp -> out_final, kept bool)"""
    idx, c, st, L = coords(grid)
    H, N, D = q.shape
    strides = torch.tensor([st[a] for a in AX])
    kind = {"copy": "copy", "mean": "mean", "interp": "interp"}[rule]
    sc = q_scores(q, grid, kind)
    best, ax = sc.min(-1)
    sel = select_budget(best, r)
    prev = torch.where(sel, idx - strides[ax], idx)
    if rule in ("copy", "mean"):
        src = prev
        for _ in range(3):
            src = src.gather(1, src)
        kept = src == idx
        if rule == "mean":
            cnt = torch.zeros(H, N, dtype=q.dtype).scatter_add_(1, src, torch.ones(H, N, dtype=q.dtype))
            qm = torch.zeros_like(q).scatter_add_(1, src[..., None].expand(H, N, D), q) / cnt.clamp_min(1)[..., None]
            q_eval = torch.where(kept[..., None], qm, q)
        else:
            q_eval = q
        def fill(oc):
            return oc.gather(1, src[..., None].expand(H, N, oc.shape[-1]))
        return q_eval, fill, kept
    # interp
    Lt = torch.tensor([L[a] for a in AX])
    cax = torch.stack([c[a] for a in AX])  # (3, N)
    mycoord = cax.T[None].expand(H, N, 3).gather(2, ax[..., None])[..., 0]  # coordinate on chosen axis
    has_next = sel & (mycoord + 1 < Lt[ax])
    nxt = torch.where(has_next, idx + strides[ax], prev)
    kept = ~sel
    def fill(oc):
        out = oc.clone()
        for _ in range(3):
            nb = 0.5 * (out.gather(1, prev[..., None].expand_as(out)) + out.gather(1, nxt[..., None].expand_as(out)))
            out = torch.where(kept[..., None], oc, nb)
        return out
    return q, fill, kept

def run_plan(q, k, v, grid, fq, fk, kgroup="cube", krep="mean", kcrit="rms", qrule="copy", nsample=0, **kw):
    """q,k,v (H,N,D) float64. fq, fk: fractions of eligible... here: counts of reused tokens."""
    H, N, D = q.shape
    rk = round(fk * N)
    rq = round(fq * N)
    if nsample:
        g = torch.Generator().manual_seed(0)
        kw["qs"] = q[:, torch.randperm(N, generator=g)[:nsample]]
    if rk > 0:
        fn = {"cube": key_groups_cube, "greedy": key_groups_pairs_greedy, "pcube": key_groups_pairs_cube, "t": key_groups_t}[kgroup]
        src_k = fn(k, v, grid, rk, kcrit, **kw)
    else:
        src_k = torch.arange(N).expand(H, N)
    km, vm, bias, kept_k = key_reps(k, v, src_k, krep)
    if rq > 0:
        q_eval, fill, kept_q = q_plan(q, grid, rq, qrule)
    else:
        q_eval, fill, kept_q = q, (lambda o: o), torch.ones(H, N, dtype=torch.bool)
    oc = F.scaled_dot_product_attention(q_eval, km, vm, attn_mask=bias[:, None, :])
    out = fill(oc)
    sav = (1 - kept_q.sum(-1).double() * kept_k.sum(-1).double() / N**2).mean().item()
    return out, sav
