"""Token-plan fidelity options (timeripple.token_fidelity): scores, interpolated query rows, the mean
query, the pair-savings target, pooling over heads, and their argument checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import timeripple
from timeripple import detect, token_fidelity
from timeripple.config import TimeRippleConfig
from timeripple.token_plan import build_token_plan

GRID = (4, 6, 6)
N = math.prod(GRID)


def _smooth(seed, B=1, H=2, D=16, noise=0.05):
    """Slowly varying head vectors on GRID plus noise: (B, H, N, D)."""
    g = torch.Generator().manual_seed(seed)
    t, y, x = torch.meshgrid(*(torch.linspace(0, 1, n) for n in GRID), indexing="ij")
    basis = torch.stack([t, y, x, t * y, y * x, torch.ones_like(t)], -1).reshape(N, 6)
    mix = torch.randn(B, H, 6, D, generator=g)
    return basis @ mix + noise * torch.randn(B, H, N, D, generator=g)


def test_kv_score_table_matches_a_loop():
    k, v = _smooth(0), _smooth(1)
    table = token_fidelity.kv_score_table(k, v, GRID, ("t", "y", "x"), 2)
    sigma = v.flatten(2).std(-1, correction=0)
    T, Hg, Wg = GRID
    for idx in (1, Wg, Hg * Wg, Hg * Wg + Wg + 1, N - 1):
        t, y, x = idx // (Hg * Wg), (idx // Wg) % Hg, idx % Wg
        for a, (c, stride) in enumerate(((t, Hg * Wg), (y, Wg), (x, 1))):
            got = table[0, 1, idx, a]
            if c % 2 == 0:
                assert torch.isnan(got)
                continue
            p = idx - stride
            dk = ((k[0, 1, idx] - k[0, 1, p]) / 2).norm()
            dv = ((v[0, 1, idx] - v[0, 1, p]) / 2).norm()
            assert got == pytest.approx(float(dk * (dv + 0.5 * dk * sigma[0, 1])), rel=1e-5)


def test_interp_score_is_zero_on_a_linear_axis_and_copy_error_at_the_edge():
    q = torch.arange(N, dtype=torch.float32).view(1, 1, N, 1).expand(1, 1, N, 3).clone()  # linear in the index
    table = token_fidelity.interp_score_table(q, GRID, ("t", "y", "x"), 2)
    Wg = GRID[2]
    assert table[0, 0, 1, 2] == 0  # x = 1: exactly between x = 0 and x = 2
    assert table[0, 0, Wg - 1, 2] == pytest.approx(1.0)  # x = 5, last column: only x = 4, one step away
    assert torch.isnan(table[0, 0, 0]).all()  # the first token reuses nothing


@pytest.mark.parametrize("text", [(0, "after"), (5, "after"), (5, "before")])
def test_interpolated_rows_are_the_fixed_point_of_their_rule(text):
    text_len, position = text
    q, k = _smooth(2, B=2), _smooth(3, B=2)
    if text_len:
        extra = torch.randn(2, 2, text_len, 16)
        q, k = ((torch.cat([x, extra], 2) if position == "after" else torch.cat([extra, x], 2)) for x in (q, k))
    q_src, _, via_q, _ = build_token_plan(q, k, grid=GRID, thresholds={"t": 1, "y": 1, "x": 1}, text_len=text_len,
                                          text_position=position, budget=0.6, fused=False, query_score="interp")
    out = torch.randn(*q.shape[:3], 8)
    start = text_len if position == "before" else 0
    res = token_fidelity.interpolate_reused_rows(out, via_q, GRID, 2, start, 3)
    nv = via_q.shape[2]
    assert (via_q >= 0).float().mean() > 0.4
    assert torch.equal(res[:, :, :start], out[:, :, :start]) and torch.equal(res[:, :, start + nv:], out[:, :, start + nv:])
    T, Hg, Wg = GRID
    strides, lengths = (Hg * Wg, Wg, 1), GRID
    for b, h, i in torch.nonzero(via_q >= 0).tolist()[::7]:
        a = int(via_q[b, h, i])
        c = (i // strides[a]) % lengths[a]
        prev = i - (c % 2) * strides[a]
        nxt = prev + 2 * strides[a] if c - c % 2 + 2 < lengths[a] else prev
        w = 0.5 if nxt != prev else 0.0
        want = (1 - w) * res[b, h, start + prev] + w * res[b, h, start + nxt]
        assert torch.allclose(res[b, h, start + i], want, atol=1e-6)
    kept = (via_q < 0)
    assert torch.equal(res[:, :, start:start + nv][kept], out[:, :, start:start + nv][kept])


@pytest.mark.parametrize("target,share,keys", [(0.5, 0.75, "chain"), (0.75, 0.7, "chain"), (0.875, 0.7, "chain"),
                                               (0.5, 0.6, "pairs"), (0.75, 0.3, "pairs")])
def test_pair_savings_target_is_met(target, share, keys):
    q, k, v = _smooth(4), _smooth(5), _smooth(6)
    _, stats = timeripple.ripple_attention(q, k, v, grid=GRID, threshold=0.5, mode="token", pair_savings=target,
                                           key_share=share, token_keys=keys, key_repr="mean", key_score="kv",
                                           query_repr="interp", return_stats=True)
    assert stats.qk_savings_mean == pytest.approx(target, abs=0.02)


def test_unreachable_pair_savings_says_what_is_reachable():
    with pytest.raises(ValueError, match="pair_savings.*reaches at most"):
        token_fidelity.budgets_for_pair_savings(0.95, 0.75, GRID, ("t",), 2, 0, "pairs")


def test_mean_query_equals_copy_when_groups_hold_equal_queries():
    q = _smooth(7)
    q = q.view(1, 2, 2, 2, 36, 16)[:, :, :, :1].expand(1, 2, 2, 2, 36, 16).reshape(1, 2, N, 16).contiguous()  # t pairs equal
    k, v = _smooth(8), _smooth(9)
    kw = dict(grid=GRID, threshold={"t": 0.5}, axes=("t",), priority=("t", "y", "x"), mode="token", budget=1.0)
    copy = timeripple.ripple_attention(q, k, v, **kw)
    mean = timeripple.ripple_attention(q, k, v, query_repr="mean", **kw)
    assert torch.allclose(copy, mean, atol=1e-6)


def test_fidelity_plan_beats_todays_plan_on_smooth_fields():
    q, k, v = _smooth(10, noise=0.2), _smooth(11, noise=0.2), _smooth(12, noise=0.2)
    exact = F.scaled_dot_product_attention(q, k, v)
    old = timeripple.ripple_attention(q, k, v, grid=GRID, threshold=0.5, mode="token",
                                      budget=detect.budget_for_pair_savings(0.75, GRID))
    new = timeripple.ripple_attention(q, k, v, grid=GRID, threshold=0.5, mode="token", pair_savings=0.75,
                                      key_share=0.7, key_repr="mean", key_score="kv", query_repr="interp")
    assert ((new - exact) ** 2).mean() < 0.7 * ((old - exact) ** 2).mean()


def test_pooling_over_heads_keeps_the_call_total_and_moves_reuse_to_alike_heads():
    table = torch.rand(1, 3, 10, 3)
    table[:, 0] *= 0.01  # head 0 is much more alike
    table[..., 0, :] = math.nan  # token 0 cannot reuse
    pooled = token_fidelity.pool_over_heads(table, 0.5)
    reused = torch.isfinite(pooled.nan_to_num(nan=math.inf).amin(-1))  # (1, 3, 10)
    assert int(reused.sum()) == round(0.5 * 27)
    assert int(reused[0, 0].sum()) == 9


def test_budget_scope_call_runs_and_saves():
    q, k, v = _smooth(13), _smooth(14), _smooth(15)
    _, stats = timeripple.ripple_attention(q, k, v, grid=GRID, threshold=0.5, mode="token", pair_savings=0.75,
                                           key_repr="mean", key_score="kv", query_repr="interp",
                                           budget_scope="call", return_stats=True)
    assert 0.6 < stats.qk_savings_mean <= 0.76


@pytest.mark.parametrize("kwargs,match", [
    (dict(query_repr="lerp", budget=0.5), "query_repr"),
    (dict(key_score="v", budget=0.5), "key_score"),
    (dict(pair_savings=0.75, budget=0.5), "pair_savings"),
    (dict(pair_savings=1.0), "pair_savings"),
    (dict(query_repr="interp"), "budget or pair_savings"),
    (dict(key_share=1.5, pair_savings=0.5), "key_share"),
    (dict(budget_scope="call", budget=0.5, token_keys="pairs"), "budget_scope"),
    (dict(budget_scope="all", budget=0.5), "budget_scope"),
])
def test_bad_options_name_the_argument(kwargs, match):
    q = _smooth(16)
    with pytest.raises(ValueError, match=match):
        timeripple.ripple_attention(q, q, q, grid=GRID, threshold=0.5, mode="token", **kwargs)


def test_channel_mode_refuses_the_token_options():
    q = _smooth(17)
    with pytest.raises(ValueError, match="mode='token' only"):
        timeripple.ripple_attention(q, q, q, grid=GRID, threshold=0.5, query_repr="interp", pair_savings=0.5)


def test_config_fields_validate_and_round_trip(tmp_path):
    cfg = TimeRippleConfig(mode="token", pair_savings=0.75, key_share=0.7, key_repr="mean", key_score="kv",
                           query_repr="interp", budget_scope="call")
    assert TimeRippleConfig.from_yaml(_write(tmp_path, cfg)) == cfg
    assert cfg.attention_kwargs(30, 50)["pair_savings"] == 0.75
    for bad, match in ((dict(pair_savings=0.5, budget=0.5), "pair_savings"), (dict(query_repr="interp"), "budget"),
                       (dict(pair_savings=1.2), "pair_savings"), (dict(budget_scope="call", budget=0.3,
                                                                      token_keys="pairs"), "budget_scope")):
        with pytest.raises(ValueError, match=match):
            TimeRippleConfig(mode="token", **bad)
    with pytest.raises(ValueError, match="mode='token'"):
        TimeRippleConfig(mode="channel", pair_savings=0.5)


def _write(tmp_path, cfg):
    path = tmp_path / "c.yaml"
    cfg.to_yaml(path)
    return path
