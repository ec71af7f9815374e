"""Fused kernels of the fidelity setting (kernels/fidelity_fused.py) against their torch specifications in
token_fidelity, the static kept sizes of the compaction path, and the CUDA-graph option (token_graph)."""

from __future__ import annotations

import logging
import math

import pytest
import torch

import timeripple
from timeripple import token_fidelity, token_graph, token_plan
from timeripple.kernels import fidelity_fused, token_attention
from timeripple.token_plan import build_token_plan

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
GRID = (3, 4, 5)  # odd lengths: partial windows at the edges
N = math.prod(GRID)
README = dict(mode="token", pair_savings=0.75, key_repr="mean", key_score="kv", query_repr="interp")


# the kernels run on the GPU where there is one, else under the Triton interpreter (tests/conftest.py)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _smooth(seed, B=1, H=2, D=16, n=N, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, n, D, generator=g).cumsum(2) * 0.05 + 0.1 * torch.randn(B, H, n, D, generator=g)).to(device)


@pytest.mark.parametrize("axes,window,D", [(("t", "y", "x"), 2, 16), (("t", "x"), 2, 24), (("y",), 3, 16)])
def test_kv_score_table_fused_equals_torch(axes, window, D):
    k, v = _smooth(0, D=D), _smooth(1, D=D)
    want = token_fidelity.kv_score_table(k, v, GRID, axes, window)
    got = fidelity_fused.kv_score_table_fused(k, v, GRID, axes, window)
    assert torch.equal(want.isnan(), got.isnan()) and not want.isnan().all()
    torch.testing.assert_close(got.nan_to_num(), want.nan_to_num(), rtol=1e-5, atol=1e-6)


def test_kv_score_table_fused_non_finite_value_poisons_its_head_only():
    k, v = _smooth(2), _smooth(3)
    v[0, 1, 7, 3] = math.inf
    want = token_fidelity.kv_score_table(k, v, GRID, "tyx", 2)
    got = fidelity_fused.kv_score_table_fused(k, v, GRID, "tyx", 2)
    assert torch.equal(want.isnan(), got.isnan())
    assert got[0, 1].isnan().all() and not got[0, 0].isnan().all()


@pytest.mark.parametrize("axes,window,D", [(("t", "y", "x"), 2, 16), (("y", "x"), 3, 24)])
def test_interp_score_table_fused_equals_torch(axes, window, D):
    q = _smooth(4, D=D)
    want = token_fidelity.interp_score_table(q, GRID, axes, window)
    got = fidelity_fused.interp_score_table_fused(q, GRID, axes, window)
    assert torch.equal(want.isnan(), got.isnan())
    torch.testing.assert_close(got.nan_to_num(), want.nan_to_num(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("axes,text", [(("t", "y", "x"), (0, "after")), (("t", "y", "x"), (4, "before")),
                                       (("t", "x"), (4, "after")), (("x",), (0, "after"))])
def test_interp_epilogue_fused_is_the_torch_fixed_point_in_place(axes, text):
    text_len, position = text
    q = _smooth(5, n=N + text_len)
    q_src, _, via_q, _ = build_token_plan(q, q, grid=GRID, thresholds={a: 1.0 for a in axes}, text_len=text_len,
                                          text_position=position, budget=0.9, fused=False, query_score="interp")
    assert (via_q >= 0).float().mean() > 0.3  # chains of several hops occur at this budget
    out = torch.randn(1, 2, N + text_len, 8).to(DEVICE)
    start = text_len if position == "before" else 0
    want = token_fidelity.interpolate_reused_rows(out, via_q, GRID, 2, start, len(axes))
    got = out.clone()
    res = fidelity_fused.interpolate_reused_rows_fused(got, via_q, GRID, 2, start, len(axes))
    assert res is got  # in place
    assert torch.equal(got, want)


def test_readme_setting_fused_equals_torch_path(monkeypatch):
    q, k, v = _smooth(6), _smooth(7), _smooth(8)
    want, st = timeripple.ripple_attention(q, k, v, grid=GRID, threshold=0.5, return_stats=True, **README)
    calls = []
    real = fidelity_fused.interpolate_reused_rows_fused
    monkeypatch.setattr(fidelity_fused, "interpolate_reused_rows_fused", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(token_plan, "_FUSED_ON_CPU", True)
    got, st2 = timeripple.ripple_attention(q, k, v, grid=GRID, threshold=0.5, return_stats=True, **README)
    assert calls  # the fused epilogue ran
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert st2.qk_savings_mean == pytest.approx(st.qk_savings_mean)


def test_compaction_with_static_kept_sizes_equals_reference_and_poisons_a_wrong_size():
    q, k, v = _smooth(9), _smooth(10), _smooth(11)
    q_src, k_src, _, _ = build_token_plan(q, k, grid=GRID, thresholds={"t": 1, "y": 1, "x": 1}, budget=0.6,
                                          key_budget=0.8, fused=False)
    ar = torch.arange(N, device=DEVICE)
    mq, mk = int((q_src == ar).sum(-1).amax()), int((k_src == ar).sum(-1).amax())
    ref = token_attention(q, k, v, q_src, k_src, method="reference", key_repr="mean")
    got = token_attention(q, k, v, q_src, k_src, method="compact", kept=[mq, mk], key_repr="mean")
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    for wrong in ([mq - 1, mk], [mq, mk + 1]):
        bad = token_attention(q, k, v, q_src, k_src, method="compact", kept=wrong, key_repr="mean")
        assert bad.isnan().all()


def test_kept_sizes_of_budget_mode_match_the_plan():
    q, k, v = _smooth(12, device="cpu"), _smooth(13, device="cpu"), _smooth(14, device="cpu")
    budget, key_budget = token_fidelity.budgets_for_pair_savings(0.75, 0.7, GRID, "tyx", 2, 0, "chain")
    q_src, k_src, _, _ = build_token_plan(q, k, v=v, grid=GRID, thresholds={"t": 1, "y": 1, "x": 1}, budget=budget,
                                          key_budget=key_budget, query_score="interp", key_score="kv", fused=False)
    eligible = timeripple.detect.eligible_count(GRID, 2, "tyx")
    ar = torch.arange(N)
    assert ((q_src == ar).sum(-1) == N - round(eligible * budget)).all()
    assert ((k_src == ar).sum(-1) == N - round(eligible * key_budget)).all()


def test_cuda_graph_on_cpu_runs_eagerly_with_one_warning(caplog):
    q, k, v = _smooth(15, device="cpu"), _smooth(16, device="cpu"), _smooth(17, device="cpu")
    want = timeripple.ripple_attention(q, k, v, grid=GRID, threshold=0.5, **README)
    token_graph._warned.clear()
    with caplog.at_level(logging.WARNING, logger="timeripple.token_graph"):
        got = [timeripple.ripple_attention(q, k, v, grid=GRID, threshold=0.5, cuda_graph=True, **README)
               for _ in range(2)]
    assert all(torch.equal(g, want) for g in got)
    msgs = [r.getMessage() for r in caplog.records if "cuda_graph" in r.getMessage()]
    assert len(msgs) == 1 and "not a CUDA tensor" in msgs[0]


def test_cuda_graph_argument_checks():
    q = _smooth(18, device="cpu")
    with pytest.raises(TypeError, match="cuda_graph"):
        timeripple.ripple_attention(q, q, q, grid=GRID, threshold=0.5, mode="token", budget=0.5, cuda_graph=1)
    with pytest.raises(ValueError, match="cuda_graph.*mode='token'"):
        timeripple.ripple_attention(q, q, q, grid=GRID, threshold=0.5, cuda_graph=True)
    with pytest.raises(ValueError, match="cuda_graph"):
        timeripple.load_config("wan2.1", mode="channel").replace(cuda_graph=True)


@requires_cuda
@pytest.mark.parametrize("setting", [README, dict(mode="token", budget=0.5, key_budget=1.0, token_keys="pairs")])
def test_cuda_graph_equals_eager_on_cuda(setting):
    # The graph runs the path with static sizes (compaction, or the classes of a pairs plan). Eagerly, a chain
    # plan runs the path its host-read sizes pick (the count classes by demotion, or compaction with the read
    # lengths): the same plan, another exact formulation, so equal up to bf16 rounding (H200: 2^-6 at most).
    grid = (4, 8, 8)
    n = math.prod(grid) + 8
    kw = dict(grid=grid, text_len=8, threshold=0.5, **setting)
    token_graph.clear_graphs()
    for seed in (0, 1):  # the second call replays the captured graph on new inputs
        q, k, v = (_smooth(20 + 3 * seed + i, D=64, n=n, device="cuda").bfloat16() for i in range(3))
        got, st2 = timeripple.ripple_attention(q, k, v, return_stats="device", cuda_graph=True, **kw)
        want, st = timeripple.ripple_attention(q, k, v, return_stats="device", **kw)
        exact = setting.get("token_keys") == "pairs"  # both runs take the pairs plan's static classes
        torch.testing.assert_close(got, want, rtol=0, atol=0 if exact else 3 * 2.0 ** -6)
        torch.testing.assert_close(st2.qk_savings, st.qk_savings)
    assert len(token_graph._graphs) == 1 and not token_graph._failed


@requires_cuda
def test_fused_fidelity_kernels_equal_torch_on_cuda():
    grid = (5, 6, 10)
    k, v, q = (_smooth(30 + i, D=128, n=math.prod(grid), device="cuda").bfloat16() for i in range(3))
    a, b = token_fidelity.kv_score_table(k, v, grid, "tyx", 2), fidelity_fused.kv_score_table_fused(k, v, grid, "tyx", 2)
    assert torch.equal(a.isnan(), b.isnan())
    torch.testing.assert_close(b.nan_to_num(), a.nan_to_num(), rtol=1e-5, atol=1e-6)
    a, b = token_fidelity.interp_score_table(q, grid, "tyx", 2), fidelity_fused.interp_score_table_fused(q, grid, "tyx", 2)
    torch.testing.assert_close(b.nan_to_num(), a.nan_to_num(), rtol=1e-5, atol=1e-6)
