"""RoPE channel groups (t/y/x = 16/16/16 on the tiny model) as the unit of the key similarity test."""
import sys, torch
sys.path.insert(0, __import__("os").path.dirname(__file__))
import token_plan_lab as L
import timeripple
from timeripple.demo import load_tiny_pipeline
from timeripple.eval.capture import capture_attention
from timeripple.eval import EVAL_PROMPTS
torch.set_num_threads(1)
pipe = load_tiny_pipeline(); pipe.set_progress_bar_config(disable=True)
cfg = timeripple.load_config("wan2.1", mode="channel")
calls = []
for i, p in enumerate(EVAL_PROMPTS[2:4]):
    c, geo, _ = capture_attention(pipe, cfg, dict(prompt=p, num_inference_steps=20, guidance_scale=5.0,
                                  generator=torch.Generator().manual_seed(3 + i)), steps=[6, 12, 17])
    calls += c
print(len(calls), "calls", geo, flush=True)
chans = [list(range(0, 16)), list(range(16, 32)), list(range(32, 48))]
res = {}
for c in calls:
    q, k, v = (t[0].double() for t in (c.q, c.k, c.v))  # (H, N, D), batch row 0
    grid = tuple(c.grid) if hasattr(c, "grid") else geo[0]
    ref = L.exact(q, k, v)
    qscale = q.norm(dim=-1).mean() * q.shape[-1] ** -0.5
    for fk in (0.25, 0.5):
        for crit in ("rms", "chan", "strict", "kv"):
            out, sav = L.run_plan(q, k, v, grid, 0.0, fk, kgroup="cube", krep="mean", kcrit=crit, chans=chans, qscale=qscale)
            res.setdefault((fk, crit), []).append((out - ref).square().mean().item())
for (fk, crit), e in sorted(res.items()):
    print(f"keys {fk:.0%} {crit:6s} MSE {sum(e)/len(e):.3e}")
