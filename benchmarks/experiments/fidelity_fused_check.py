"""GPU check of the fused fidelity kernels (issue 10): fused vs plain-torch scores, epilogue and the whole
README setting at the real Wan2.1-1.3B / HunyuanVideo attention shapes (structured inputs of
bench_attention.py). Prints max differences; the CPU tests (tests/test_kernels_fidelity.py) are the spec."""

import math
import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 2)[0])
from bench_attention import FIDELITY, SHAPES, structured, torch_fidelity  # noqa: E402

import timeripple  # noqa: E402
from timeripple import token_fidelity  # noqa: E402
from timeripple.kernels import fidelity_fused  # noqa: E402

for name in ("wan1.3b", "hunyuan"):
    H, grid, text_len, pos, D, note = SHAPES[name]
    q, k, v = (structured(1, H, grid, text_len, pos, D, "cuda", torch.bfloat16, seed=s) for s in range(3))
    nv = math.prod(grid)
    kv, vv, qv = k[:, :, :nv], v[:, :, :nv], q[:, :, :nv]
    a, b = token_fidelity.kv_score_table(kv, vv, grid, "tyx", 2), fidelity_fused.kv_score_table_fused(kv, vv, grid, "tyx", 2)
    print(name, "kv table: same NaN", torch.equal(a.isnan(), b.isnan()), "max rel diff",
          float(((a - b).abs() / a.abs().clamp_min(1e-6)).nan_to_num().max()))
    a, b = token_fidelity.interp_score_table(qv, grid, "tyx", 2), fidelity_fused.interp_score_table_fused(qv, grid, "tyx", 2)
    print(name, "interp table: same NaN", torch.equal(a.isnan(), b.isnan()), "max abs diff", float((a - b).abs().nan_to_num().max()))
    kw = dict(grid=grid, text_len=text_len, text_position=pos, threshold=0.5, mode="token", pair_savings=0.75, **FIDELITY)
    fused, st = timeripple.ripple_attention(q, k, v, return_stats=True, **kw)
    with torch_fidelity():
        ref = timeripple.ripple_attention(q, k, v, **kw)
    exact = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    print(name, "README setting fused vs torch: max abs diff", float((fused.float() - ref.float()).abs().max()),
          "mse vs dense fused", float(((fused.float() - exact.float()) ** 2).mean()),
          "torch", float(((ref.float() - exact.float()) ** 2).mean()), "savings", float(st.qk_savings_mean),
          "finite", bool(torch.isfinite(fused).all()))
    torch.cuda.synchronize()
