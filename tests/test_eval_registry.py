"""``timeripple eval``'s method registry and savings search, without a model: unknown names list the valid
ones, a method registered from outside is one call, the search converges on a fake monotone savings curve
and reports what it achieved (and what it reached when the target is out of range), and every built-in
method runs on small tensors with savings that grow with its knob."""

import math

import pytest
import torch

from timeripple import load_config
from timeripple.eval import Geometry, Method, MethodSetup, get_method, list_methods, match_savings, register_method
from timeripple.eval import methods as registry
from timeripple.detect import budget_for_pair_savings

BUILTINS = ("channel", "token-strict", "token-budget", "token-rms", "magnitude", "skip")


@pytest.fixture
def clean_registry(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_builtins_are_registered_in_order():
    assert tuple(list_methods()[: len(BUILTINS)]) == BUILTINS
    for name in BUILTINS:
        method = get_method(name)
        assert method.name == name and method.knob and method.savings and method.build is not None


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ValueError) as err:
        get_method("chanel")
    message = str(err.value)
    assert "'chanel'" in message and "did you mean 'channel'" in message
    assert all(name in message for name in BUILTINS) and "register_method" in message


def test_register_a_method_from_outside_is_one_call(clean_registry):
    def build(scale, config):
        return MethodSetup(registry.scaled(config.replace(axes=("t",), priority=("t", "y", "x")), scale))

    method = register_method(Method("channel-t", "channel mode, temporal axis only", knob="threshold scale",
                                    savings="q·kᵀ partial products", build=build))
    assert get_method("channel-t") is method and "channel-t" in list_methods()
    with pytest.raises(ValueError, match="already registered"):
        register_method(method)
    assert register_method(method, replace=True) is method
    setup = method.setup(0.5, load_config("wan2.1"))
    assert setup.config.axes == ("t",) and setup.config.threshold_start == pytest.approx(0.2)


def test_method_definition_errors():
    with pytest.raises(ValueError, match="needs `build` or `install`"):
        Method("x", "no way to run", knob="k", savings="pairs")
    with pytest.raises(ValueError, match="low < high"):
        Method("x", "bad bounds", knob="k", savings="pairs", build=lambda k, c: None, bounds=(1.0, 0.5))
    with pytest.raises(ValueError, match="low > 0"):
        Method("x", "log of 0", knob="k", savings="pairs", build=lambda k, c: None, bounds=(0.0, 1.0))
    with pytest.raises(TypeError, match="a timeripple.eval.Method"):
        register_method("channel")


def _curve(knob):  # monotone, sigmoid in log(knob), savings 50% at knob 0.05
    return 1 - 1 / (1 + (knob / 0.05) ** 1.5)


@pytest.mark.parametrize("target", [0.3, 0.5, 0.75, 0.875])
def test_search_converges_and_reports_achieved(target):
    calls = []

    def savings(knob):
        calls.append(knob)
        return _curve(knob)

    found = match_savings(savings, target, bounds=(1e-4, 1e3), first_guess=1.0, tol=0.005)
    assert found.converged and found.reachable and not found.message
    assert abs(found.achieved - target) <= 0.005
    assert found.achieved == _curve(found.knob)  # the measured value, never the target
    assert len(set(calls)) == len(calls) <= 10  # no knob measured twice


def test_search_in_linear_space_and_history_reuse():
    history = {}
    curve = lambda b: 1 - (1 - 0.9 * b) ** 2  # noqa: E731
    first = match_savings(curve, 0.5, bounds=(1e-4, 1.0), log_knob=False, first_guess=0.2, history=history)
    n = len(history)
    second = match_savings(curve, 0.5, bounds=(1e-4, 1.0), log_knob=False, first_guess=0.9, history=history)
    assert first.converged and second.converged and len(history) == n  # answered from the history
    assert second.knob == first.knob


def test_unreachable_targets_say_what_was_reached():
    high = match_savings(lambda b: 0.8 * b, 0.9, bounds=(0.01, 1.0), log_knob=False, first_guess=0.5)
    assert not high.converged and not high.reachable and high.knob == 1.0 and high.achieved == pytest.approx(0.8)
    assert "cannot be reached" in high.message and "at most 80.00%" in high.message
    low = match_savings(lambda s: 0.6, 0.3, bounds=(1e-3, 10.0), first_guess=1.0)
    assert not low.reachable and "at least 60.00%" in low.message and low.knob == 1e-3
    jump = match_savings(lambda s: 0.3 if s < 1 else 0.8, 0.5, bounds=(1e-3, 1e3), first_guess=0.1)
    assert not jump.converged and jump.reachable and "jump" in jump.message and jump.achieved in (0.3, 0.8)
    with pytest.raises(ValueError, match="target"):
        match_savings(_curve, 1.0, bounds=(1e-3, 1.0))


@pytest.mark.parametrize("target, log_knob", [(0.62, True), (0.815, True), (0.75, False), (0.815, False)])
def test_integer_knobs_are_searched_on_whole_values_only(target, log_knob):
    calls = []

    def savings(knob):  # a cache interval: the setting only sees whole values
        calls.append(knob)
        return 1 - 1 / int(knob)

    found = match_savings(savings, target, bounds=(1.0, 64.0), log_knob=log_knob, first_guess=2.0, tol=0.005,
                          integer=True)
    assert all(k == int(k) for k in calls) and len(set(calls)) == len(calls)  # never one setting twice
    assert found.knob == int(found.knob) and found.achieved == 1 - 1 / found.knob
    if target == 0.75:  # exactly k = 4
        assert found.converged and found.knob == 4.0
    else:  # between two neighbouring integers: stops there and says so
        lo = int(1 / (1 - target))
        assert not found.converged and "jump" in found.message and found.knob in (lo, lo + 1)
        assert {lo, lo + 1} <= set(calls) and len(calls) <= 8


def test_first_guesses_use_the_closed_forms():
    geo = Geometry(grid=(4, 4, 4), text_len=0, window=2, axes=("t", "y", "x"))
    assert get_method("token-budget").first_guess(0.75, geo) == budget_for_pair_savings(0.75, (4, 4, 4), 2)
    assert get_method("magnitude").first_guess(0.75, geo) == pytest.approx(0.5)  # 1 - (1 - f)^2 = 0.75
    assert get_method("token-budget").first_guess(0.999, geo) == 1.0  # beyond reach: the bound


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_methods_run_and_save_more_with_a_larger_knob(name):
    method = get_method(name)
    config = load_config("wan2.1")
    t = torch.linspace(0, 1, 4).view(1, 1, 4, 1, 1, 1)
    q = (t + 0.3 * torch.randn(1, 2, 4, 4, 4, 16)).reshape(1, 2, 64, 16)  # (B, H, N, D), smooth in t
    k = (t + 0.3 * torch.randn(1, 2, 4, 4, 4, 16)).reshape(1, 2, 64, 16)
    v = torch.randn(1, 2, 64, 16)
    kwargs = config.attention_kwargs(30, 50)
    low, high = (0.05, 0.6) if not method.log_knob else (0.05, 2.0)
    saved = []
    for knob in (low, high):
        out, stats = method.setup(knob, config)(q, k, v, grid=(4, 4, 4), attention_kwargs=kwargs, step=30,
                                                num_steps=50, layer="blocks.0.attn1")
        assert out.shape == q.shape and torch.isfinite(out).all()
        saved.append(stats.qk_savings_mean)
    assert 0 <= saved[0] < saved[1] <= 1, saved
    assert not math.isnan(saved[1])


def test_a_similar_curve_aims_the_first_step():
    subset = {}
    first = match_savings(_curve, 0.5, bounds=(1e-4, 1e3), first_guess=1.0, history=subset)
    shifted = lambda k: _curve(k / 1.2)  # noqa: E731  (the full set saves a little less at the same knob)
    aimed = match_savings(shifted, 0.5, bounds=(1e-4, 1e3), first_guess=first.knob, shape=subset)
    blind = match_savings(shifted, 0.5, bounds=(1e-4, 1e3), first_guess=first.knob)
    assert aimed.converged and blind.converged
    assert len({k for k, _ in aimed.evaluations}) < len({k for k, _ in blind.evaluations})
