"""Issue 9 allocation experiment: keys merged where a dimensionless merge error s·|q|·kv/σ_v is below one threshold shared by all calls (bisection on the first prompt), pooled, keys only, capped; with a 4th argument `pool` the normalised score is only pooled over the heads. Usage: python alloc_global_threshold.py TARGET CAP NORM [pool] (NORM: q, qonly, sigma or none). Monkeypatches token_fidelity; research code."""
import json, sys, math
import torch
import timeripple
from timeripple import token_fidelity as tf
from timeripple.attention import ripple_attention
from timeripple.demo import load_tiny_pipeline
from timeripple.eval import EVAL_PROMPTS, psnr, ssim

torch.set_num_threads(2)
pipe = load_tiny_pipeline(); pipe.set_progress_bar_config(disable=True)
base = timeripple.load_config("wan2.1", mode="channel")
S = {"qs": None, "tau": None, "norm": "q"}
orig_kv = tf.kv_score_table
def kv_norm(k, v, grid, axes, window):
    t = orig_kv(k, v, grid, axes, window)  # (B,H,Nv,3)
    vf = v.float(); sigma = vf.flatten(2).std(-1, correction=0)[..., None, None]
    D = k.shape[-1]
    if S["norm"] == "q":
        qs = S["qs"][..., None, None]  # (B,H,1,1)
        return t * qs * D ** -0.5 / sigma
    if S["norm"] == "none":
        return t
    if S["norm"] == "qonly":
        return t * S["qs"][..., None, None] * D ** -0.5
    return t / sigma
tf.kv_score_table = kv_norm
orig_pool = tf.pool_over_heads
def pool_thresh(table, budget):
    if S["tau"] is None:
        return orig_pool(table, budget)
    capped = orig_pool(table, budget)  # pooled cap
    return torch.where(capped < S["tau"], capped, math.nan)
tf.pool_over_heads = pool_thresh
CAP = float(sys.argv[2]) if len(sys.argv) > 2 else 0.9
S["tau"] = 0.0
def fn(q, k, v, *, grid, text_len, text_position, attn_mask, attention_kwargs, step, num_steps, layer):
    kw = dict(attention_kwargs); kw.pop("budget", None)
    kw.update(mode="token", key_repr="mean", key_score="kv", query_repr="interp", budget_scope="call", key_share=1.0, pair_savings=CAP)
    S["qs"] = q.float().square().sum(-1).mean(-1).sqrt()  # (B,H) rms |q|
    out, st = ripple_attention(q, k, v, grid=grid, text_len=text_len, text_position=text_position, attn_mask=attn_mask, return_stats=True, **kw)
    LOG.append(st.qk_savings_mean)
    return out, st
LOG = []
def gen(p):
    return pipe(p, num_inference_steps=20, guidance_scale=5.0, generator=torch.Generator().manual_seed(0)).frames[0]
def run(p):
    LOG.clear()
    timeripple.apply_timeripple(pipe, base.replace(mode="token"), attention_fn=fn)
    try:
        vid = gen(p)
    finally:
        timeripple.remove_timeripple(pipe)
    return vid, sum(LOG) / len(LOG)
target = float(sys.argv[1])
S["norm"] = sys.argv[3] if len(sys.argv) > 3 else "q"
prompts = EVAL_PROMPTS[:2]
dense = {p: gen(p) for p in prompts}
# bisection on tau in log space on prompt 0
lo, hi = 1e-6, 1e3
if sys.argv[4:] == ["pool"]:
    S["tau"] = None
for it in range(14 if S["tau"] is not None or sys.argv[4:] != ["pool"] else 0):
    S["tau"] = math.sqrt(lo * hi)
    _, sav = run(prompts[0])
    print(f"  tau={S['tau']:.4g} savings={sav:.4f}", file=sys.stderr, flush=True)
    if abs(sav - target) < 0.004: break
    if sav < target: lo = S["tau"]
    else: hi = S["tau"]
res = []
for p in prompts:
    vid, sav = run(p)
    res.append((psnr(dense[p], vid), ssim(dense[p], vid), sav))
print(json.dumps(dict(target=target, cap=CAP, norm=S["norm"], tau=S["tau"], psnr=sum(r[0] for r in res)/2, per=[r[0] for r in res], ssim=sum(r[1] for r in res)/2, savings=[r[2] for r in res])), flush=True)
