"""Probe: which SDPA op returns the log-sum-exp on this build, and how fast the bias-free count-class
formulation of token attention runs on it (issue 10).

Checks each candidate op (``aten._scaled_dot_product_cudnn_attention``,
``aten._scaled_dot_product_flash_attention``, ``aten._scaled_dot_product_efficient_attention``) for
output and LSE against float32 torch, then times at the HunyuanVideo / Wan2.1 shapes: dense cuDNN; the
75% plan as two bias-free calls (count-1 and count-2 keys) combined through their LSE; the 87.5% plan
(every video key in a pair: one call); and the biased single call (``vcount``) for reference.

    python benchmarks/probe_lse_ops.py
"""

import math
import sys

import torch
import torch.nn.functional as F
from triton.testing import do_bench

if not torch.cuda.is_available():
    sys.exit("probe_lse_ops.py needs a CUDA device")
dev, dt = "cuda", torch.bfloat16
print(torch.__version__, torch.cuda.get_device_name(), "cudnn", torch.backends.cudnn.version())
A = torch.ops.aten


def ops():
    yield "cudnn", lambda q, k, v, s: A._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, False, False, scale=s)[:2]
    yield "flash", lambda q, k, v, s: A._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=s)[:2]
    yield "efficient", lambda q, k, v, s: A._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0, False, scale=s)[:2]


q = torch.randn(1, 2, 300, 128, device=dev, dtype=dt)
k = torch.randn(1, 2, 257, 128, device=dev, dtype=dt)
v = torch.randn_like(k)
s = q.float() @ k.float().transpose(-1, -2) / math.sqrt(128)
ref, ref_lse = torch.softmax(s, -1) @ v.float(), torch.logsumexp(s, -1)
good = {}
for name, fn in ops():
    try:
        o, lse = fn(q, k, v, 128 ** -0.5)
        print(f"{name}: out {tuple(o.shape)} {o.stride()} lse {tuple(lse.shape)} {lse.dtype} {lse.stride()} "
              f"err out {(o.float() - ref).abs().max().item():.2e} lse {(lse.reshape(ref_lse.shape).float() - ref_lse).abs().max().item():.2e}")
        good[name] = fn
    except Exception as exc:
        print(f"{name}: FAILED {exc!r:.300}")

for label, H, N in (("hunyuan", 24, 67320), ("wan14b", 40, 32760), ("wan1.3b", 12, 32760)):
    sc = 128 ** -0.5
    full = [torch.randn(1, H, N, 128, device=dev, dtype=dt) for _ in range(3)]
    t_dense = do_bench(lambda: F.scaled_dot_product_attention(*full), warmup=5, rep=40)
    half, quarter = N // 2, N // 4
    q2 = full[0][:, :, :half].contiguous()
    q4 = full[0][:, :, :quarter].contiguous()
    k1, v1 = (x[:, :, :N // 4].contiguous() for x in full[1:])   # count-1 keys (N/2 kept: N/4 + N/4)
    k2, v2 = (x[:, :, N // 4:half].contiguous() for x in full[1:])
    kh, vh = (x[:, :, :half].contiguous() for x in full[1:])
    va = torch.randn(1, H, half, 136, device=dev, dtype=dt)
    print(f"{label}: dense cuDNN {t_dense:.2f} ms")
    print(f"  one call, no bias, N/2 x N/2: {do_bench(lambda: F.scaled_dot_product_attention(q2, kh, vh), warmup=5, rep=40):.2f} ms")
    print(f"  vcount (d_v 136) N/2 x N/2: {do_bench(lambda: F.scaled_dot_product_attention(q2, kh, va), warmup=5, rep=40):.2f} ms")
    for name, fn in good.items():
        def two(qq):
            o1, l1 = fn(qq, k1, v1, sc)
            o2, l2 = fn(qq, k2, v2, sc)
            l1, l2 = l1.reshape(qq.shape[:3]).float(), l2.reshape(qq.shape[:3]).float() + math.log(2)
            m = torch.maximum(l1, l2)
            w1, w2 = torch.exp(l1 - m), torch.exp(l2 - m)
            return (o1 * (w1 / (w1 + w2))[..., None] + o2 * (w2 / (w1 + w2))[..., None]).to(dt)
        try:
            t75 = do_bench(lambda: two(q2), warmup=5, rep=40)
            t875 = do_bench(lambda: fn(q4, kh, vh, sc), warmup=5, rep=40)
            traw = do_bench(lambda: (fn(q2, k1, v1, sc), fn(q2, k2, v2, sc)), warmup=5, rep=40)
            print(f"  {name}: 75% two classes + torch combine {t75:.2f} ms ({t_dense / t75:.2f}x), "
                  f"two calls alone {traw:.2f} ms ({t_dense / traw:.2f}x); 87.5% one call {t875:.2f} ms ({t_dense / t875:.2f}x)")
        except Exception as exc:
            print(f"  {name}: FAILED {exc!r:.300}")
    del full, q2, q4, k1, v1, k2, v2, kh, vh, va
    torch.cuda.empty_cache()
