"""A pytest plugin that runs diffusers' own model and pipeline tests with TimeRipple applied.

Usage (see ``tools/run_diffusers_tests.sh``)::

    PYTHONPATH=/path/to/timeripple/tools:/path/to/timeripple/src \\
        python -m pytest -p diffusers_tests_plugin --timeripple=dense tests/models/transformers/test_models_transformer_wan.py

``--timeripple`` is ``stock`` (the plugin does nothing), ``dense`` (TimeRipple applied with a schedule that is
dense on every step: every test must give what it gives stock) or ``reuse`` (channel mode, θ = 1.0 on every
call). It acts as a careful user would:

* every Wan, HunyuanVideo and CogVideoX transformer gets TimeRipple on its first forward call (so models built,
  loaded or copied inside a test are covered too);
* the step comes from :class:`AnyTimestepScheduler`: whatever ``timestep`` a test passes is step 1 of 3, so the
  reuse schedule reuses on every call (diffusers' tests call transformers with arbitrary timesteps and drive
  pipelines with their own schedulers, which TimeRipple's step lookup would otherwise refuse);
* ``set_attn_processor``, ``fuse_qkv_projections`` and ``unfuse_qkv_projections`` first remove TimeRipple (its
  documented rule), and the next forward applies it again;
* where ``apply_timeripple`` refuses the model (for example a test installed a non-stock processor), the test
  runs stock and the plugin counts it as *refused* with the reason.

At the end it prints, per outcome, how many tests ran with TimeRipple active, how many were refused, and the
reasons. Nothing here is imported by the library; the diffusers checkout is never part of the project.
"""

from __future__ import annotations

import collections
import functools
import inspect

import pytest
import torch

MODES = ("stock", "dense", "reuse")
FAMILY_CLASSES = ("WanTransformer3DModel", "HunyuanVideoTransformer3DModel", "CogVideoXTransformer3DModel")
_SWITCHES = ("set_attn_processor", "fuse_qkv_projections", "unfuse_qkv_projections")


class AnyTimestepScheduler:
    """A stand-in scheduler for TimeRipple's hook: the timestep of the current call is step ``step`` of
    ``num_steps`` (the other entries are far from it, so they never match, even in bf16)."""

    def __init__(self, step: int = 1, num_steps: int = 3):
        self.step, self.num_steps = step, num_steps
        self.current = torch.zeros(())

    def observe(self, timestep) -> None:
        if timestep is not None:
            self.current = torch.as_tensor(timestep).detach().reshape(-1).max().double().cpu()

    @property
    def timesteps(self) -> torch.Tensor:
        offsets = torch.arange(self.num_steps, dtype=torch.float64) - self.step  # step `step` -> offset 0
        return self.current - 1000.0 * offsets


def plugin_config(mode: str):
    """The TimeRipple config of a mode: all-dense, or channel-mode reuse at θ = 1.0 on step 1 of 3."""
    import timeripple

    if mode == "dense":  # ramp starts after the last step: every step dense
        return timeripple.TimeRippleConfig(ramp_start_step=49, ramp_end_step=49, reference_num_steps=50)
    if mode == "reuse":
        return timeripple.TimeRippleConfig(fixed_threshold=1.0, ramp_start_step=1, ramp_end_step=1,
                                           reference_num_steps=3)
    raise ValueError(f"`--timeripple` = {mode!r} is invalid: must be one of {MODES}. Fix: pass e.g. --timeripple=dense")


class Installer:
    """Patches the family classes so their instances get TimeRipple on their first forward call."""

    def __init__(self, mode: str):
        self.mode = mode
        self.config = plugin_config(mode)
        self.applied = 0  # apply_timeripple calls that succeeded in the current test
        self.calls = 0  # family-model forward calls that ran with TimeRipple in the current test
        self.refusals = []  # reasons apply_timeripple gave in the current test
        self.handles = []  # handles applied in the current test (for the counted savings)
        self._originals = {}

    # -- patching -------------------------------------------------------------------------------------

    def install(self, classes) -> None:
        for cls in classes:
            if (cls, "forward") in self._originals:
                continue
            self._originals[(cls, "forward")] = cls.forward
            cls.forward = _wrap(cls.forward, functools.partial(_lazy_forward, installer=self))
            for name in _SWITCHES:
                if name in vars(cls) or hasattr(cls, name):
                    self._originals[(cls, name)] = getattr(cls, name)
                    setattr(cls, name, _wrap(getattr(cls, name), _removing_first))

    def uninstall(self) -> None:
        for (cls, name), original in self._originals.items():
            setattr(cls, name, original)
        self._originals.clear()

    # -- per model ------------------------------------------------------------------------------------

    def ensure_applied(self, model) -> None:
        import timeripple

        if getattr(model, "_timeripple_handle", None) is not None or getattr(model, "_timeripple_refused", None):
            return
        scheduler = AnyTimestepScheduler()
        try:
            self.handles.append(timeripple.apply_timeripple(model, self.config, scheduler=scheduler))
        except ValueError as err:  # refused: the test runs stock, counted with the reason
            model._timeripple_refused = str(err).split(". Fix:")[0]
            self.refusals.append(model._timeripple_refused)
            return
        signature = inspect.signature(type(model).forward)

        def observe(module, args, kwargs):
            bound = signature.bind_partial(module, *args, **kwargs).arguments
            scheduler.observe(bound.get("timestep"))

        model._timeripple_observer = model.register_forward_pre_hook(observe, with_kwargs=True)
        self.applied += 1


def _wrap(original, behaviour):
    @functools.wraps(original)  # keeps the signature TimeRipple's hook reads
    def method(self, *args, **kwargs):
        return behaviour(self, original, *args, **kwargs)

    return method


def _lazy_forward(self, original, *args, installer: Installer, **kwargs):
    if getattr(self, "_timeripple_handle", None) is None and not getattr(self, "_timeripple_refused", None):
        installer.ensure_applied(self)
        if getattr(self, "_timeripple_handle", None) is not None:
            return self(*args, **kwargs)  # through the forward pre-hook and TimeRipple's hook
    if getattr(self, "_timeripple_handle", None) is not None:
        installer.calls += 1
    return original(self, *args, **kwargs)


def _removing_first(self, method, *args, **kwargs):
    import timeripple

    if getattr(self, "_timeripple_handle", None) is not None:
        timeripple.remove_timeripple(self)
        observer = vars(self).pop("_timeripple_observer", None)
        if observer is not None:
            observer.remove()
    vars(self).pop("_timeripple_refused", None)  # try again at the next forward
    return method(self, *args, **kwargs)


def family_classes():
    import diffusers

    return [getattr(diffusers, name) for name in FAMILY_CLASSES]


# -- pytest hooks -------------------------------------------------------------------------------------------


def pytest_addoption(parser):
    parser.addoption("--timeripple", default="stock", choices=MODES,
                     help="run diffusers' tests stock, with an all-dense TimeRipple schedule, or with reuse")
    parser.addoption("--timeripple-list", action="store_true", help="list every test with its outcome and state")


def pytest_configure(config):
    mode = config.getoption("--timeripple")
    config._timeripple_outcomes = collections.Counter()
    config._timeripple_reasons = collections.Counter()
    config._timeripple_tests = []
    if mode != "stock":
        config._timeripple_installer = Installer(mode)
        config._timeripple_installer.install(family_classes())


def pytest_unconfigure(config):
    installer = getattr(config, "_timeripple_installer", None)
    if installer is not None:
        installer.uninstall()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):  # before the test's fixtures run
    installer = getattr(item.config, "_timeripple_installer", None)
    if installer is not None:
        installer.applied, installer.calls, installer.refusals, installer.handles = 0, 0, [], []


def pytest_runtest_makereport(item, call):
    if call.when != "call":
        return
    installer = getattr(item.config, "_timeripple_installer", None)
    if installer is None:
        state = "stock"
    elif installer.refusals and not installer.calls:
        state = "refused"
        for reason in set(installer.refusals):
            item.config._timeripple_reasons[reason] += 1
    else:  # "ran": a Wan/HunyuanVideo/CogVideoX forward ran with TimeRipple in this test (setup or call)
        reused = any(h.stats.skipped_products > 0 for h in installer.handles)
        state = ("ran, reused" if reused else "ran") if installer.calls else "no model call"
    outcome = "failed" if call.excinfo is not None and not call.excinfo.errisinstance(_skip_types()) else (
        "skipped" if call.excinfo is not None else "passed")
    item.config._timeripple_outcomes[(outcome, state)] += 1
    item.config._timeripple_tests.append((item.nodeid, outcome, state))


def _skip_types():
    import _pytest.outcomes

    return (_pytest.outcomes.Skipped,)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    outcomes = config._timeripple_outcomes
    if not outcomes:
        return
    terminalreporter.section(f"timeripple ({config.getoption('--timeripple')})")
    for (outcome, state), count in sorted(outcomes.items()):
        terminalreporter.write_line(f"{outcome:>8} | TimeRipple {state}: {count}")
    if config.getoption("--timeripple-list"):
        for nodeid, outcome, state in config._timeripple_tests:
            terminalreporter.write_line(f"{outcome:>8} | {state:<13} | {nodeid}")
    for reason, count in config._timeripple_reasons.most_common():
        terminalreporter.write_line(f"refused x{count}: {reason[:200]}")
