"""Capture post-RoPE q/k/v of the tiny model self-attention at steps 5, 9, 13, 17 of a dense 20-step run (issue 9 lab)."""
import sys, torch, timeripple
import timeripple.attention as A
import torch.nn.functional as F
torch.set_num_threads(1)
from timeripple.demo import load_tiny_pipeline


PROMPTS = [
    ("a white circle moving left quickly on a navy background", 101),
    ("a magenta triangle moving right quickly on a black textured background", 202),
    ("a cyan square moving up slowly on a maroon gradient background", 303),
]
STEPS = (5, 9, 13, 17)
pipe = load_tiny_pipeline()
pipe.set_progress_bar_config(disable=True)
cfg = timeripple.load_config("wan2.1").replace(mode="channel", ramp_start_step=0, ramp_end_step=0, fixed_threshold=0.5, dense_last_step=False)
store = []
state = {}
def cap(q, k, v, *, grid, return_stats=False, **kw):
    step = state["ctx"].step
    if step in STEPS:
        store.append(dict(step=step, prompt=state["p"], q=q.detach().clone(), k=k.detach().clone(), v=v.detach().clone(), grid=grid))
    out = F.scaled_dot_product_attention(q, k, v)
    return (out, timeripple.RippleStats.dense(q.shape, ("t","y","x"))) if return_stats else out
A.ripple_attention = cap
timeripple.apply_timeripple(pipe, cfg)
proc = next(p for p in pipe.transformer.attn_processors.values() if hasattr(p, "context") and p.context is not None)
state["ctx"] = proc.context
for i, (p, s) in enumerate(PROMPTS):
    state["p"] = i
    pipe(p, num_inference_steps=20, guidance_scale=5.0, generator=torch.Generator().manual_seed(s))
    print(i, len(store), flush=True)
torch.save(store, "/tmp/fid/qkv.pt")
print(store[0]["q"].shape, store[0]["grid"])
