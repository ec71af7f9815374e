"""Issue 9 allocation experiment (videos, tiny model, CPU): pair_savings varied by step at an equal mean over the reusing steps, and key_share / budget_scope sweeps. Usage: python alloc_videos.py RUNS TARGETS RULES [JSON_EXTRA], e.g. `2 0.5 const {"budget_scope": "call", "key_share": 1.0}`."""
import json, sys
import torch
import timeripple
from timeripple.attention import ripple_attention
from timeripple.demo import load_tiny_pipeline
from timeripple.eval import EVAL_PROMPTS, psnr, ssim

torch.set_num_threads(2)
pipe = load_tiny_pipeline(); pipe.set_progress_bar_config(disable=True)
FID = dict(mode="token", key_repr="mean", key_score="kv", query_repr="interp")
base = timeripple.load_config("wan2.1", mode="channel")
runs = int(sys.argv[1]) if len(sys.argv) > 1 else 2
prompts = EVAL_PROMPTS[:runs]
dense = {}
def gen(p, seed=0):
    return pipe(p, num_inference_steps=20, guidance_scale=5.0, generator=torch.Generator().manual_seed(seed)).frames[0]
for p in prompts: dense[p] = gen(p)
layers = {}
def make_fn(rule, target, extra):
    log = []
    def fn(q, k, v, *, grid, text_len, text_position, attn_mask, attention_kwargs, step, num_steps, layer):
        kw = dict(attention_kwargs); kw.update(FID); kw.update(extra)
        li = layers.setdefault(layer, len(layers))
        ps = rule(step, li, target)
        kw["pair_savings"] = ps
        kw.pop("budget", None)
        out, st = ripple_attention(q, k, v, grid=grid, text_len=text_len, text_position=text_position, attn_mask=attn_mask, return_stats=True, **kw)
        log.append(st.qk_savings_mean)
        return out, st
    return fn, log
# reusing steps of 20: 4..18
R0, R1 = 4, 18
def const(s, l, t): return t
def ramp(a):
    def r(s, l, t):
        rel = (s - R0) / (R1 - R0)
        return min(max(t + a * (2 * rel - 1), 0.0), 0.95)
    return r
def layer_w(ws):
    def r(s, l, t):
        return min(max(t + ws[l], 0), 0.95)
    return r
configs = {
    "const": const,
    "ramp+0.15": ramp(0.15), "ramp-0.15": ramp(-0.15), "ramp+0.3": ramp(0.3),
}
if len(sys.argv) > 3:
    configs = {k: v for k, v in configs.items() if k in sys.argv[3].split(",")}
targets = [float(x) for x in (sys.argv[2].split(",") if len(sys.argv) > 2 else ["0.5"])]
extra = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
for t in targets:
    for name, rule in configs.items():
        ps_, ss_, sv = [], [], []
        for p in prompts:
            fn, log = make_fn(rule, t, extra)
            timeripple.apply_timeripple(pipe, base.replace(mode="token"), attention_fn=fn)
            try:
                vid = gen(p)
            finally:
                timeripple.remove_timeripple(pipe)
            ps_.append(psnr(dense[p], vid)); ss_.append(ssim(dense[p], vid)); sv.append(sum(log) / len(log))
        print(json.dumps(dict(target=t, rule=name, extra=extra, psnr=sum(ps_) / len(ps_), per=ps_, ssim=sum(ss_)/len(ss_), savings=sum(sv) / len(sv))), flush=True)
