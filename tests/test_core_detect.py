"""Detection primitives against the float64 loop reference and against closed forms."""

import math

import pytest
import torch

from _core_helpers import firsts_on_all_axes, pick_alpha, pick_threshold, structured
from timeripple.detect import (
    axis_partners,
    budget_for_pair_savings,
    detect_channel_sources,
    detect_token_sources,
    eligible_count,
    resolve_sources,
    window_deltas,
)
from timeripple.testing import reference_deltas, reference_sources


@pytest.mark.parametrize("grid,window", [((3, 5, 7), 2), ((4, 3, 5), 3), ((5, 4, 3), 4), ((2, 2, 9), 4)])
@pytest.mark.parametrize("axis", ["t", "y", "x"])
def test_window_deltas_match_reference(grid, window, axis):
    x = structured(1, 2, grid, 4)
    got = window_deltas(x, grid, axis, window)
    ref = reference_deltas(x, grid, axis, window)
    _, non_first = axis_partners(grid, axis, window)
    assert torch.isnan(ref[:, :, ~non_first]).all()  # first members carry no Δ in the reference
    torch.testing.assert_close(got[:, :, non_first].double(), ref[:, :, non_first], rtol=1e-5, atol=1e-6)


def test_window_two_is_half_the_difference():
    x = torch.tensor([1.0, 4.0, -2.0, 2.0]).view(1, 1, 4, 1)  # grid (4, 1, 1): windows [1, 4], [-2, 2]
    assert window_deltas(x, (4, 1, 1), "t", 2).flatten().tolist() == [1.5, 1.5, 2.0, 2.0]


def test_trailing_window_of_size_one_is_nan_and_never_reused():
    x = torch.zeros(1, 1, 5, 1)  # grid (5, 1, 1), window 2: [0, 1] [2, 3] [4]
    d = window_deltas(x, (5, 1, 1), "t", 2).flatten()
    assert d[:4].tolist() == [0.0] * 4 and math.isnan(d[4])
    src, _ = detect_channel_sources(x, (5, 1, 1), {"t": 1.0})
    assert src.flatten().tolist() == [0, 0, 2, 2, 4]


@pytest.mark.parametrize("case", range(8))
def test_channel_sources_match_reference(case):
    grids = [(3, 5, 7), (4, 4, 3), (5, 3, 2), (2, 6, 5)]
    grid, window = grids[case % 4], (2, 3, 4, 2)[case % 4]
    x = structured(2, 2, grid, 6, seed=case)
    if case % 3 == 0:  # one shared threshold
        thresholds = {a: pick_threshold([x], grid, a, window, 0.5) for a in ("t",)}
        thresholds = {a: thresholds["t"] for a in ("t", "y", "x")}
    elif case % 3 == 1:  # per-axis thresholds, subset of axes
        thresholds = {a: pick_threshold([x], grid, a, window, 0.4 + 0.1 * i) for i, a in enumerate(("t", "x"))}
    else:  # three separate thresholds
        thresholds = {a: pick_threshold([x], grid, a, window, 0.3) for a in ("t", "y", "x")}
    priority = ("t", "y", "x") if case < 4 else ("x", "t", "y")
    src, via = detect_channel_sources(x, grid, thresholds, window=window, priority=priority)
    ref = reference_sources(x, grid, thresholds, window=window, priority=priority)
    assert torch.equal(src, ref)
    reused = (via >= 0).float().mean()
    assert 0.1 < reused < 0.95, f"threshold gives no partial reuse ({reused:.2f})"


def test_channel_alpha_matches_reference():
    grid, window = (3, 5, 4), 2
    x = structured(1, 2, grid, 8, seed=3)
    alpha = pick_alpha([x], grid, ("t", "y", "x"), window)
    thresholds = {"t": 0.5, "y": 0.5, "x": 0.5}  # values replaced by alpha, but must be > 0
    src, via = detect_channel_sources(x, grid, thresholds, window=window, channel_alpha=alpha)
    ref = reference_sources(x, grid, thresholds, window=window, channel_alpha=alpha)
    assert torch.equal(src, ref)
    assert 0.05 < (via >= 0).float().mean() < 0.95


def test_every_source_is_computed_and_chains_are_short():
    grid = (5, 5, 5)
    x = structured(1, 3, grid, 4, noise=0.01)
    src, via = detect_channel_sources(x, grid, {"t": 1.0, "y": 1.0, "x": 1.0})
    assert torch.equal(torch.gather(src, 2, src), src)  # a source is its own source
    assert ((via >= 0) == (src != torch.arange(125).view(1, 1, -1, 1))).all()
    # a 3-hop chain exists: (1, 1, 1) -> (0, 1, 1) -> (0, 0, 1) -> (0, 0, 0)
    assert (src[:, :, 1 * 25 + 1 * 5 + 1] == 0).all()


def test_resolve_sources_rejects_cycles():
    src = torch.tensor([1, 0]).view(1, 1, 2)  # a cycle: never produced by detection
    with pytest.raises(AssertionError):
        resolve_sources(src, 2)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_never_pass(bad):
    grid = (4, 4, 4)
    x = torch.zeros(1, 1, 64, 3)  # every window has Δ = 0: all 56 non-first members pass
    x[0, 0, 21, 1] = bad  # (1, 1, 1): non-first on every axis, channel 1
    x[0, 0, 0, 2] = bad  # (0, 0, 0): the first member of its windows, channel 2
    src, via = detect_channel_sources(x, grid, {"t": 1e30, "y": 1e30, "x": 1e30})
    reused = (via[0, 0] >= 0).sum(0)  # (D,)
    assert reused[0] == 56  # a clean channel is unaffected
    assert reused[1] == 55 and via[0, 0, 21, 1] == -1  # the bad element is not reused
    # windows holding element 0 fail, so 1, 4 and 16 (non-first only with 0) are not reused;
    # everything else still resolves, and nothing takes its value from element 0
    assert reused[2] == 53 and (via[0, 0, [1, 4, 16], 2] == -1).all()
    assert (src[0, 0, 1:, 2] != 0).all()
    assert torch.isfinite(torch.gather(x, 2, src)[0, 0, :, 0]).all()
    tsrc, tvia = detect_token_sources(x, grid, {"t": 1e30, "y": 1e30, "x": 1e30})
    assert tvia[0, 0, 21] == -1 and (tsrc[0, 0, 1:] != 0).all()
    assert (tvia[0, 0] >= 0).sum() == 56 - 4


@pytest.mark.parametrize("grid,window,axes", [((3, 5, 7), 2, ("t", "y", "x")), ((4, 5, 3), 3, ("t", "x")),
                                              ((5, 2, 6), 4, ("y",))])
def test_huge_threshold_reuses_every_non_first_member(grid, window, axes):
    # A token is computed iff it is the first member of its window on every checked axis, so the
    # computed count is prod_{checked} ceil(L / K) * prod_{unchecked} L and all others are reused.
    x = structured(1, 2, grid, 3)
    src, _ = detect_channel_sources(x, grid, {a: 1e9 for a in axes}, window=window)
    nv = math.prod(grid)
    computed = (src == torch.arange(nv).view(1, 1, -1, 1)).sum() / (2 * 3)
    assert computed == firsts_on_all_axes(grid, window, axes)
    assert eligible_count(grid, window, axes) == nv - firsts_on_all_axes(grid, window, axes)


@pytest.mark.parametrize("criterion", ["strict", "fraction", "rms"])
@pytest.mark.parametrize("grid,window", [((3, 5, 7), 2), ((4, 3, 5), 3)])
def test_token_sources_match_reference(criterion, grid, window):
    x = structured(2, 2, grid, 8, noise=0.05, seed=5)
    thresholds = {a: pick_threshold([x], grid, a, window, 0.5, criterion=criterion) for a in ("t", "y", "x")}
    src, via = detect_token_sources(x, grid, thresholds, window=window, criterion=criterion, fraction=0.75)
    ref = reference_sources(x, grid, thresholds, window=window, granularity="token", criterion=criterion,
                            fraction=0.75)
    assert torch.equal(src, ref)
    assert 0.1 < (via >= 0).float().mean() < 0.95


@pytest.mark.parametrize("budget", [0.25, 0.5, 1.0])
@pytest.mark.parametrize("criterion", ["strict", "rms"])
def test_budget_sources_match_reference(budget, criterion):
    grid, window = (3, 5, 7), 2
    x = structured(2, 2, grid, 8, seed=7)
    thresholds = {"t": 0.0, "y": 0.0, "x": 0.0}  # values ignored in budget mode
    src, via = detect_token_sources(x, grid, thresholds, window=window, criterion=criterion, budget=budget)
    ref = reference_sources(x, grid, thresholds, window=window, granularity="token", criterion=criterion,
                            budget=budget)
    assert torch.equal(src, ref)
    expected = round(budget * eligible_count(grid, window, ("t", "y", "x")))
    assert ((via >= 0).sum(-1) == expected).all()  # the same count for every (b, h)
    assert torch.equal(torch.gather(src, 2, src), src)


def test_budget_for_pair_savings():
    grid = (4, 4, 4)  # E = 64 - 8 = 56
    b = budget_for_pair_savings(0.75, grid)
    assert b == pytest.approx(32 / 56)  # keep 32 of 64 tokens per side: 1 - (32/64)^2 = 0.75
    assert budget_for_pair_savings(0.0, grid) == 0.0
    with pytest.raises(ValueError, match="target"):
        budget_for_pair_savings(0.999, grid)  # at most 56 of 64 reusable
    with pytest.raises(ValueError, match="target"):
        budget_for_pair_savings(1.5, grid)


@pytest.mark.parametrize("budget", [0.3, 0.75, 1.0])
def test_budget_select_takes_the_smallest_scores_ties_in_index_order(budget):
    from timeripple.detect import budget_select

    g = torch.Generator().manual_seed(0)
    best = torch.randint(0, 5, (2, 3, 40), generator=g).float()  # many ties
    best[..., ::7] = float("inf")                                # ineligible tokens
    got = budget_select(best, budget)
    order = torch.argsort(best, dim=-1, stable=True)
    n = torch.round(torch.isfinite(best).sum(-1).double() * budget).long()
    want = torch.zeros_like(got)
    for b in range(2):
        for h in range(3):
            want[b, h, order[b, h, : n[b, h]]] = True
    assert torch.equal(got, want)


def test_axis_partners_are_cached_per_grid_and_match_a_fresh_computation():
    from timeripple import detect

    detect._GEOMETRY.clear()
    first = detect.axis_partners((3, 4, 5), "y", 2)
    again = detect.axis_partners((3, 4, 5), "y", 2)
    assert again[0] is first[0]                       # the same tensors: no arithmetic per call
    detect._GEOMETRY.clear()
    fresh = detect.axis_partners((3, 4, 5), "y", 2)
    assert torch.equal(fresh[0], first[0]) and torch.equal(fresh[1], first[1])
    assert detect.axis_partners((3, 4, 5), "x", 2)[0] is not fresh[0]
