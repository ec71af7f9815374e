"""ripple_attention, token mode and budget mode: against the float64 reference and closed forms."""

import math

import pytest
import torch
import torch.nn.functional as F

import timeripple
from _core_helpers import firsts_on_all_axes, pick_threshold, structured, video_slice, with_text
from timeripple.detect import budget_for_pair_savings, eligible_count
from timeripple.testing import reference_attention
from timeripple.token_plan import build_token_plan

CASES = [  # grid, window, text_len, text_position, B, H, criterion
    ((3, 5, 7), 2, 0, "after", 2, 2, "strict"),
    ((3, 5, 7), 3, 4, "after", 1, 3, "fraction"),
    ((4, 3, 5), 2, 5, "before", 2, 2, "rms"),
    ((5, 2, 3), 4, 3, "before", 2, 1, "strict"),
    ((2, 4, 6), 2, 2, "after", 1, 2, "fraction"),
]


def _qkv(grid, text_len, pos, B, H, D=8, seed=0, noise=0.05):
    q = with_text(structured(B, H, grid, D, seed=seed, noise=noise), text_len, pos, seed=seed + 10)
    k = with_text(structured(B, H, grid, D, seed=seed + 1, noise=noise), text_len, pos, seed=seed + 11)
    v = torch.randn(q.shape, generator=torch.Generator().manual_seed(seed + 2))
    return q, k, v


def _plan_and_out(q, k, v, **kw):
    out, stats = timeripple.ripple_attention(q, k, v, mode="token", return_stats=True, **kw)
    ref, info = reference_attention(q, k, v, mode="token", **kw)
    return out, stats, ref, info


@pytest.mark.parametrize("case", range(len(CASES)))
def test_token_mode_matches_reference(case):
    grid, window, text_len, pos, B, H, criterion = CASES[case]
    q, k, v = _qkv(grid, text_len, pos, B, H, seed=case)
    videos = [video_slice(x, text_len, pos) for x in (q, k)]
    theta = pick_threshold(videos, grid, "t", window, 0.3, criterion=criterion, fraction=0.75)
    kw = dict(grid=grid, threshold=theta, text_len=text_len, text_position=pos, window=window,
              token_criterion=criterion, token_fraction=0.75)
    out, stats, ref, info = _plan_and_out(q, k, v, **kw)
    plan = build_token_plan(q, k, grid=grid, thresholds={a: theta for a in "tyx"}, text_len=text_len,
                            text_position=pos, window=window, criterion=criterion, fraction=0.75)
    assert plan[0].dtype == torch.int32 and plan[0].shape == q.shape[:3]
    assert torch.equal(plan[0].long(), info["q_src"]) and torch.equal(plan[1].long(), info["k_src"])
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats.pair_savings, info["pair_savings"])
    torch.testing.assert_close(stats.qk_savings, stats.pair_savings)
    assert 0.05 < stats.qk_savings_mean < 0.95
    assert (out - F.scaled_dot_product_attention(q, k, v)).abs().max() > 1e-3  # not a silent no-op


def test_per_axis_thresholds_and_priority_match_reference():
    grid = (4, 4, 5)
    q, k, v = _qkv(grid, 3, "after", 2, 2, seed=4)
    videos = [video_slice(x, 3, "after") for x in (q, k)]
    threshold = {"y": pick_threshold(videos, grid, "y", 2, 0.5), "x": pick_threshold(videos, grid, "x", 2, 0.6)}
    kw = dict(grid=grid, threshold=threshold, text_len=3, priority=("x", "y", "t"))
    out, stats, ref, info = _plan_and_out(q, k, v, **kw)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    assert stats.reused_fraction_q["t"] == 0 and stats.reused_fraction_q["x"] > 0


@pytest.mark.parametrize("mask_kind", ["bool", "float"])
def test_key_mask_matches_reference(mask_kind):
    grid, text_len = (3, 4, 4), 6
    q, k, v = _qkv(grid, text_len, "after", 2, 2, seed=2)
    N = q.shape[2]
    if mask_kind == "bool":
        mask = torch.ones(2, 1, 1, N, dtype=torch.bool)
        mask[1, ..., -3:] = False  # padded text keys
    else:
        mask = torch.randn(2, 1, 1, N) * 0.5
    kw = dict(grid=grid, threshold=0.3, text_len=text_len, attn_mask=mask, scale=0.25)
    out, stats, ref, _ = _plan_and_out(q, k, v, **kw)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    assert stats.qk_savings_mean > 0.05
    with pytest.raises(ValueError, match="mode='channel'"):
        timeripple.ripple_attention(q, k, v, grid=grid, threshold=0.3, text_len=text_len, mode="token",
                                    attn_mask=torch.ones(1, 2, N, N, dtype=torch.bool))


@pytest.mark.parametrize("budget", [0.3, 0.5, 1.0])
@pytest.mark.parametrize("pos", ["before", "after"])
def test_budget_mode_matches_reference_and_counts(budget, pos):
    grid, text_len, B, H = (3, 5, 7), 4, 2, 2
    q, k, v = _qkv(grid, text_len, pos, B, H, seed=3)
    kw = dict(grid=grid, threshold=0.0, text_len=text_len, text_position=pos, budget=budget)
    out, stats, ref, info = _plan_and_out(q, k, v, **kw)  # threshold value ignored in budget mode
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    N = q.shape[2]
    kept = N - round(budget * eligible_count(grid, 2, ("t", "y", "x")))  # the same in every head
    torch.testing.assert_close(stats.pair_savings, torch.full((H,), 1 - kept * kept / N**2, dtype=torch.float64))
    q_src = info["q_src"]
    assert torch.equal(torch.gather(q_src, 2, q_src), q_src)  # sources are computed tokens
    dense = timeripple.ripple_attention(q, k, v, mode="token", budget=budget, grid=grid, threshold=None,
                                        text_len=text_len, text_position=pos)
    assert torch.equal(dense, F.scaled_dot_product_attention(q, k, v))  # None still means dense


@pytest.mark.parametrize("target", [0.5, 0.75, 0.875])
def test_budget_for_pair_savings_reaches_target(target):
    grid, text_len = (4, 6, 6), 0
    q, k, v = _qkv(grid, text_len, "after", 1, 2, D=8, seed=6)
    budget = budget_for_pair_savings(target, grid, window=2)
    _, stats = timeripple.ripple_attention(q, k, v, grid=grid, threshold=1.0, mode="token", budget=budget,
                                           return_stats=True)
    assert stats.pair_savings.sub(target).abs().max() < 0.01  # rounding to whole tokens only


def test_huge_threshold_token_closed_form():
    # Every non-first member is reused on both sides: kept = F + text_len with F the tokens that are
    # first on every checked axis, so pair savings = 1 - ((F + text_len) / N)² in every head.
    grid, window, text_len, axes = (5, 4, 3), 2, 3, ("t", "x")
    q, k, v = _qkv(grid, text_len, "before", 2, 3, seed=8)
    _, stats = timeripple.ripple_attention(q, k, v, grid=grid, threshold=1e9, text_len=text_len,
                                           text_position="before", axes=axes, window=window, mode="token",
                                           return_stats=True)
    kept = firsts_on_all_axes(grid, window, axes) + text_len
    N = math.prod(grid) + text_len
    torch.testing.assert_close(stats.pair_savings, torch.full((3,), 1 - (kept / N) ** 2, dtype=torch.float64))
    assert sum(stats.reused_fraction_k.values()) == pytest.approx(1 - firsts_on_all_axes(grid, window, axes) / 60)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 3e-3), (torch.bfloat16, 2e-2)])
def test_token_mode_low_precision_close_to_fp32(dtype, tol):
    grid = (3, 5, 7)
    q, k, v = _qkv(grid, 4, "after", 1, 2, D=16, noise=0.01)
    kw = dict(grid=grid, text_len=4, mode="token", budget=0.5, threshold=1.0)  # budget: same plan count
    ref = timeripple.ripple_attention(q, k, v, **kw)
    out = timeripple.ripple_attention(q.to(dtype), k.to(dtype), v.to(dtype), **kw)
    assert out.dtype == dtype
    # rounding may swap near-tied tokens at the budget boundary; compare the bulk of the rows
    err = (out.float() - ref).abs()
    assert err.mean() < tol, f"max {err.max():.3g} mean {err.mean():.3g}"


@pytest.mark.parametrize("mask_kind", ["bool", "float"])
def test_per_head_key_mask_matches_reference_and_each_head_alone(mask_kind):
    grid, text_len, B, H = (3, 4, 4), 3, 2, 3
    q, k, v = _qkv(grid, text_len, "after", B, H, seed=5)
    N = q.shape[2]
    gen = torch.Generator().manual_seed(1)
    if mask_kind == "bool":
        mask = torch.rand(B, H, 1, N, generator=gen) > 0.3
        mask[..., 0] = True  # every query row keeps a key
    else:
        mask = torch.randn(B, H, 1, N, generator=gen)
    kw = dict(grid=grid, threshold=0.3, text_len=text_len, scale=0.25)
    out, stats, ref, _ = _plan_and_out(q, k, v, attn_mask=mask, **kw)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    assert stats.qk_savings_mean > 0.05
    for h in range(H):  # each head as if it ran alone with its own key mask (up to the float32 rounding of a
        # batched matmul against one head's: BLAS may block the two differently; bit equality is not promised)
        alone = timeripple.ripple_attention(q[:, h : h + 1], k[:, h : h + 1], v[:, h : h + 1], mode="token",
                                            attn_mask=mask[:, h : h + 1], **kw)
        torch.testing.assert_close(out[:, h : h + 1], alone, rtol=0, atol=1e-6)


def test_key_mask_repeated_per_head_equals_the_shared_mask():
    # Open-Sora-Plan passes its key mask repeated per head, (B, heads, 1, S), additive -10000
    grid, B, H = (3, 4, 4), 2, 2
    q, k, v = _qkv(grid, 0, "after", B, H, seed=7)
    N = q.shape[2]
    shared = torch.zeros(B, 1, 1, N)
    shared[1, ..., -5:] = -10000.0
    kw = dict(grid=grid, threshold=0.3, mode="token")
    base = timeripple.ripple_attention(q, k, v, attn_mask=shared, **kw)
    repeated = timeripple.ripple_attention(q, k, v, attn_mask=shared.repeat_interleave(H, dim=1), **kw)
    assert torch.equal(repeated, base)
    with pytest.raises(ValueError, match=r"\(B, H, 1, N\)"):
        timeripple.ripple_attention(q, k, v, attn_mask=torch.zeros(B, H, N, N), **kw)


def test_token_mode_runs_without_triton(tmp_path):
    """The README's install (`pip install -e ".[video]"`, a CPU build of torch) has no Triton: the bundled token
    mode must run on the plain torch path, never import Triton on the way (it once did: `interpreting()`)."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import sys
        sys.modules["triton"] = None  # `import triton` raises ImportError, as on a machine without it
        import torch, timeripple
        from timeripple.kernels import token_attention
        torch.manual_seed(0)
        q, k, v = (torch.randn(1, 2, 1, 32) + 0.3 * torch.randn(1, 2, 4 * 6 * 6, 32) for _ in range(3))
        kw = timeripple.load_config("wan2.1").attention_kwargs(30, 50)
        kw.pop("cuda_graph")
        kw["key_share"] = 0.6
        out, stats = timeripple.ripple_attention(q, k, v, grid=(4, 6, 6), return_stats=True, **kw)
        assert torch.isfinite(out).all() and float(stats.pair_savings.mean()) > 0.3
        src = torch.arange(144, dtype=torch.int32).expand(1, 2, 144).contiguous()
        for method in ("auto", "classes"):
            torch.testing.assert_close(token_attention(q, k, v, src, src, method=method),
                                       torch.nn.functional.scaled_dot_product_attention(q, k, v))
        print("ok", "triton" in sys.modules and sys.modules["triton"] is not None)
    """)
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok False"
