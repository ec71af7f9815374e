"""Probe: is cuDNN's varlen attention fast enough to run token attention without any bias?

Background (BENCHMARKS.md, "Where the time goes in token mode"): the per-key ``log(count)`` weight of
merged keys costs cuDNN about a third of its rate. An exact bias-free alternative splits the kept keys
by the bits of their merge count (``count = Σ_p 2^p bit_p``; inside group ``p`` every key weighs
``2^p``, a constant that moves into the group's log-sum-exp), runs plain attention per group with its
log-sum-exp, and combines the groups. Group sizes differ per head, so each group needs a varlen call
(``aten._cudnn_attention_forward`` with cumulative lengths, one segment per (batch, head)).

This script checks that call's output and log-sum-exp against float32 torch, and times it against
batched cuDNN SDPA on the same compacted sizes (HunyuanVideo and Wan2.1-14B at 75% pair savings).

    python benchmarks/experiments/probe_cudnn_varlen.py
"""

import sys

import torch
import torch.nn.functional as F
from triton.testing import do_bench
if not torch.cuda.is_available():
    sys.exit("probe_cudnn_varlen.py needs a CUDA device")
torch.manual_seed(0)
dev = "cuda"
print(torch.__version__, torch.cuda.get_device_name(), "cudnn", torch.backends.cudnn.version())
op = torch.ops.aten._cudnn_attention_forward
D = 128

def varlen(q, k, v, cq, ck, mq, mk, scale):
    r = op(q, k, v, None, cq, ck, mq, mk, True, 0.0, False, False, scale=scale)
    return r[0], r[1]

# correctness: 3 segments of different lengths
lq = [100, 257, 64]; lk = [300, 33, 129]
q = torch.randn(sum(lq), 1, D, device=dev, dtype=torch.bfloat16)
k = torch.randn(sum(lk), 1, D, device=dev, dtype=torch.bfloat16)
v = torch.randn(sum(lk), 1, D, device=dev, dtype=torch.bfloat16)
cq = torch.tensor([0] + list(torch.tensor(lq).cumsum(0)), device=dev, dtype=torch.int32)
ck = torch.tensor([0] + list(torch.tensor(lk).cumsum(0)), device=dev, dtype=torch.int32)
try:
    o, lse = varlen(q, k, v, cq, ck, max(lq), max(lk), D ** -0.5)
    print("out", tuple(o.shape), o.dtype, "lse", tuple(lse.shape), lse.dtype, lse.stride())
    errs = []
    for i in range(3):
        qs = q[cq[i]:cq[i+1], 0].float(); ks = k[ck[i]:ck[i+1], 0].float(); vs = v[ck[i]:ck[i+1], 0].float()
        s = qs @ ks.T * D ** -0.5
        ref = torch.softmax(s, -1) @ vs
        l = torch.logsumexp(s, -1)
        errs.append(((o[cq[i]:cq[i+1], 0].float() - ref).abs().max().item(), (lse.reshape(-1)[cq[i]:cq[i+1]].float() - l).abs().max().item()))
    print("seg errors (out, lse)", errs)
except Exception as e:
    print("VARLEN FAILED", repr(e)[:2000])

# zero-length key segment
try:
    lk0 = [300, 0, 129]
    ck0 = torch.tensor([0, 300, 300, 429], device=dev, dtype=torch.int32)
    o0, l0 = varlen(q, k[:429], v[:429], cq, ck0, max(lq), 300, D ** -0.5)
    seg = o0[cq[1]:cq[2]]
    print("zero-len seg: out finite", bool(torch.isfinite(seg).all()), "absmax", seg.float().abs().max().item(), "lse", l0.reshape(-1)[cq[1]:cq[1]+3].tolist())
except Exception as e:
    print("ZERO-LEN FAILED", repr(e)[:500])

# speed: Hunyuan-like compacted: 24 heads x 33788 q, 33788 k
for H, M in ((24, 33788), (40, 16380)):
    qd = torch.randn(1, H, M, D, device=dev, dtype=torch.bfloat16)
    kd = torch.randn_like(qd); vd = torch.randn_like(qd)
    t_dense = do_bench(lambda: F.scaled_dot_product_attention(qd, kd, vd), warmup=5, rep=50)
    qv = qd[0].reshape(H * M, 1, D); kv = kd[0].reshape(H * M, 1, D); vv = vd[0].reshape(H * M, 1, D)
    cs = torch.arange(0, H + 1, device=dev, dtype=torch.int32) * M
    try:
        t_var = do_bench(lambda: varlen(qv, kv, vv, cs, cs, M, M, D ** -0.5), warmup=5, rep=50)
    except Exception as e:
        t_var = float("nan"); print("speed varlen failed", repr(e)[:300])
    # split keys into 2 groups of M/2 + M/4 + M/4 (sizes vary per head)
    print(f"H={H} M={M}: dense batched cuDNN {t_dense:.2f} ms, varlen (B*H segments) {t_var:.2f} ms")
    # groups: keys split in 3 groups, per-head random sizes
    sizes = []
    for h in range(H):
        a = int(M * (0.5 + 0.2 * (torch.rand(1).item() - 0.5))); b = int((M - a) * 0.7); sizes.append((a, b, M - a - b))
    calls = []
    for g in range(3):
        lens = torch.tensor([s[g] for s in sizes])
        ckg = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)]).to(dev, torch.int32)
        kg = torch.randn(int(lens.sum()), 1, D, device=dev, dtype=torch.bfloat16); vg = torch.randn_like(kg)
        calls.append((kg, vg, ckg, int(lens.max())))
    def grouped():
        outs = [varlen(qv, kg, vg, cs, ckg, M, mg, D ** -0.5) for kg, vg, ckg, mg in calls]
        return outs
    try:
        t_g = do_bench(grouped, warmup=5, rep=50)
        print(f"   3 key groups varlen: {t_g:.2f} ms")
    except Exception as e:
        print("grouped failed", repr(e)[:300])
    del qd, kd, vd
