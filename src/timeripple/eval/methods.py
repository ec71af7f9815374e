"""The method registry of ``timeripple eval``: every attention method the harness can compare, in one place.

A [`Method`] says what it is (name, description), which knob controls its savings and in which space the
search moves it, how its savings are counted, and how it runs: ``build(knob, config)`` returns a
[`MethodSetup`], the TimeRipple config to install (its schedule decides the dense and the reusing steps)
and optionally an attention callable that replaces ``ripple_attention`` on the reusing steps. The harness
runs the same setup inside the pipeline's self-attention layers (through ``apply_timeripple(...,
attention_fn=...)``) and on q/k/v captured from them (tensor-level error). Methods that do not run through
TimeRipple's processors (e.g. a diffusers cache) pass ``install`` instead.

Adding a method from outside is one call:

```py
>>> from timeripple.eval import Method, MethodSetup, register_method
>>> register_method(Method(
...     name="channel-t", description="channel mode, temporal axis only", knob="threshold scale",
...     savings="q·kᵀ partial products",
...     build=lambda s, cfg: MethodSetup(scaled(cfg.replace(axes=("t",)), s)),   # any TimeRippleConfig
...     bounds=(1e-4, 1e3), log_knob=True))
```

The attention callable's contract (also used by ``apply_timeripple(..., attention_fn=...)``)::

    fn(q, k, v, *, grid, text_len, text_position, attn_mask, attention_kwargs, step, num_steps, layer)
        -> (out (B, H, N, D), RippleStats)      # q, k, v: (B, H, N, D), post-norm, post-RoPE

``attention_kwargs`` is the step's ``config.attention_kwargs(step, num_steps)`` (scheduled θ, window,
axes, ...); the returned ``RippleStats.qk_savings`` is what the harness counts as the call's savings.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any, Callable, Dict, Optional, Tuple

from .._validation import type_error, value_error
from ..config import TimeRippleConfig

__all__ = ["Method", "MethodSetup", "Geometry", "register_method", "get_method", "list_methods", "scaled"]

AttentionFn = Callable[..., Tuple[Any, Any]]
_THRESHOLD_FIELDS = ("threshold_start", "threshold_end", "fixed_threshold")


@dataclasses.dataclass(frozen=True)
class Geometry:
    """What a first guess may use: the video token grid ``(T, H, W)``, the text tokens of a self-attention
    call, and the base config's ``window`` and ``axes``."""

    grid: Tuple[int, int, int]
    text_len: int
    window: int
    axes: Tuple[str, ...]

    @property
    def num_video(self) -> int:
        return math.prod(self.grid)

    @property
    def num_tokens(self) -> int:
        return self.num_video + self.text_len


@dataclasses.dataclass(frozen=True)
class MethodSetup:
    """What one knob value of a method runs.

    Args:
        config ([`TimeRippleConfig`]): installed with ``apply_timeripple``; its schedule gives the dense
            and the reusing steps, and (without ``attention``) its ``attention_kwargs`` drive ``ripple_attention``.
        attention (`Callable`, *optional*): replaces ``ripple_attention`` on the reusing steps (contract in
            the module docstring). `None` = ``ripple_attention`` with ``config``'s step arguments.
    """

    config: TimeRippleConfig
    attention: Optional[AttentionFn] = None

    def __call__(self, q, k, v, *, grid, text_len=0, text_position="after", attn_mask=None,
                 attention_kwargs=None, step, num_steps, layer=None):
        """Run the setup's attention on one call, as the processors would at ``step`` of ``num_steps``."""
        if self.attention is not None:
            return self.attention(q, k, v, grid=grid, text_len=text_len, text_position=text_position,
                                  attn_mask=attn_mask, attention_kwargs=attention_kwargs, step=step,
                                  num_steps=num_steps, layer=layer)
        from ..attention import ripple_attention

        kwargs = self.config.attention_kwargs(step, num_steps)
        if kwargs is None:
            raise value_error("step", step, f"is a dense step of config {self.config.name!r}",
                              "evaluate attention only on the schedule's reusing steps")
        return ripple_attention(q, k, v, grid=grid, text_len=text_len, text_position=text_position,
                                attn_mask=attn_mask, return_stats=True, **kwargs)


@dataclasses.dataclass(frozen=True)
class Method:
    r"""
    One entry of the registry: an attention method and the knob that sets its savings.

    Args:
        name (`str`): the registry key, used on the command line (``--methods channel token-budget``).
        description (`str`): one line for tables and ``--help``.
        knob (`str`): what the knob is (``"threshold scale"``, ``"budget"``, ...); `None` for a method
            without one (measured once, reported at the savings it reaches).
        savings (`str`): what a saving counts for this method (``"q·kᵀ partial products"``, ``"q·k pairs"``).
        build (`Callable[[float, TimeRippleConfig], MethodSetup]`, *optional*): knob and base config ->
            what runs. Needed for the tensor-level error (methods without it report none).
        install (`Callable`, *optional*): ``install(pipe, knob, config) -> handle`` for methods that do not
            run through TimeRipple's processors; ``handle.stats`` is a ``GenerationStats`` (per-step
            ``thresholds``, ``None`` = dense step, and ``step_savings``), ``handle.remove()`` undoes it.
            Default: ``apply_timeripple(pipe, setup.config, attention_fn=setup.attention)``.
        bounds (`tuple[float, float]`): the knob's search range; savings must not fall as the knob rises.
        log_knob (`bool`, defaults to `True`): search in ``log(knob)`` (scales) instead of ``knob``
            (fractions).
        first_guess (`Callable[[float, Geometry], float]`, *optional*): a starting knob for a target saving.
        default_knob (`float`, defaults to 1.0): the start when there is no ``first_guess``.
        integer (`bool`, defaults to `False`): the knob only takes whole values (a cache interval, a skip
            range); the search then rounds every knob it tries.
    """

    name: str
    description: str
    knob: Optional[str]
    savings: str
    build: Optional[Callable[[Optional[float], TimeRippleConfig], MethodSetup]] = None
    install: Optional[Callable[..., Any]] = None
    bounds: Optional[Tuple[float, float]] = (1e-4, 1e3)
    log_knob: bool = True
    first_guess: Optional[Callable[[float, Geometry], float]] = dataclasses.field(default=None, repr=False)
    default_knob: float = 1.0
    integer: bool = False

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip() or " " in self.name:
            raise value_error("name", self.name, "must be a non-empty string without spaces", "e.g. 'token-budget'")
        if self.build is None and self.install is None:
            raise value_error("build", None, f"method {self.name!r} needs `build` or `install`",
                              "pass build=lambda knob, config: MethodSetup(config, attention_fn)")
        for field in ("build", "install", "first_guess"):
            value = getattr(self, field)
            if value is not None and not callable(value):
                raise type_error(field, value, "a callable or None", f"pass a function as `{field}`")
        if self.knob is None:
            return
        lo, hi = self.bounds if self.bounds is not None else (None, None)
        if lo is None or not lo < hi or (self.log_knob and lo <= 0):
            raise value_error("bounds", self.bounds, "must be (low, high) with low < high (low > 0 when log_knob)",
                              "pass e.g. bounds=(1e-4, 1e3)")

    def setup(self, knob: Optional[float], config: TimeRippleConfig) -> MethodSetup:
        if self.build is None:
            raise value_error("method", self.name, "has no `build`, so it cannot run on captured tensors",
                              "give the method a `build` to get its tensor-level error")
        return self.build(knob, config.with_mode("channel"))  # the base lends its schedule; the method sets the rest


_REGISTRY: Dict[str, Method] = {}


def register_method(method: Method, *, replace: bool = False) -> Method:
    """Add ``method`` to the registry (``replace=True`` to overwrite an entry of the same name)."""
    if not isinstance(method, Method):
        raise type_error("method", method, "a timeripple.eval.Method", "build one with Method(name=..., ...)")
    if method.name in _REGISTRY and not replace:
        raise value_error("method.name", method.name, "is already registered",
                          "pick another name, or pass replace=True")
    _REGISTRY[method.name] = method
    return method


def get_method(name) -> Method:
    """The registered method ``name`` (a [`Method`] is returned as is); unknown names list the valid ones."""
    if isinstance(name, Method):
        return name
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise value_error("method", name, f"is not a registered method; valid: {', '.join(list_methods())}",
                          f"{hint}pick one of those, or add yours with timeripple.eval.register_method(Method(...))")
    return _REGISTRY[name]


def list_methods() -> list:
    """Registered method names, in registration order."""
    return list(_REGISTRY)


# -- the built-in methods ----------------------------------------------------------------------------


def scaled(config: TimeRippleConfig, scale: float) -> TimeRippleConfig:
    """``config`` with its thresholds (start, end, fixed) multiplied by ``scale``; the schedule is kept."""
    changes = {f: None if getattr(config, f) is None else getattr(config, f) * scale for f in _THRESHOLD_FIELDS}
    return config.replace(name=f"{config.name or 'custom'}-x{scale:.4g}", **changes)


def _channel(scale, config):
    return MethodSetup(scaled(config.replace(mode="channel", budget=None), scale))


def _token(criterion):
    def build(scale, config):
        return MethodSetup(scaled(config.replace(mode="token", token_criterion=criterion, budget=None,
                                                 channel_alpha=None), scale))
    return build


def _token_budget(budget, config):
    return MethodSetup(config.replace(mode="token", budget=float(budget), channel_alpha=None,
                                      name=f"{config.name or 'custom'}-budget{budget:.4g}"))


def _budget_guess(target: float, geo: Geometry) -> float:
    from ..detect import budget_for_pair_savings

    try:
        return budget_for_pair_savings(target, geo.grid, geo.window, geo.axes, geo.text_len)
    except ValueError:  # not reachable even if every eligible token is reused
        return 1.0


def _magnitude(fraction, config):
    from ..baselines import magnitude_mask_attention

    def attention(q, k, v, *, grid, text_len, text_position, attn_mask, attention_kwargs, step, num_steps, layer):
        return magnitude_mask_attention(q, k, v, fraction=fraction, grid=grid, text_len=text_len,
                                        text_position=text_position, attn_mask=attn_mask, return_stats=True)

    return MethodSetup(config, attention)


def _magnitude_guess(target: float, geo: Geometry) -> float:
    # products (i, j, c) are kept iff neither side is zeroed: 1 - (1 - f·Nv/N)² if zeros spread over channels
    return min(1.0, (1 - math.sqrt(1 - target)) * geo.num_tokens / geo.num_video)


def _skip(scale, config):
    from ..baselines import skip_attention

    def attention(q, k, v, *, grid, text_len, text_position, attn_mask, attention_kwargs, step, num_steps, layer):
        theta = attention_kwargs["threshold"]
        theta = {a: t * scale for a, t in theta.items()} if isinstance(theta, dict) else theta * scale
        return skip_attention(q, k, v, grid=grid, threshold=theta, text_len=text_len, text_position=text_position,
                              attn_mask=attn_mask, window=attention_kwargs["window"], axes=attention_kwargs["axes"],
                              priority=attention_kwargs["priority"], channel_alpha=attention_kwargs["channel_alpha"],
                              return_stats=True)

    return MethodSetup(config.replace(mode="channel", budget=None), attention)


_SCALE = dict(knob="threshold scale", bounds=(1e-4, 1e3), log_knob=True)
for _method in (
    Method("channel", "channel mode (the paper): element-wise reuse, thresholds scaled",
           savings="q·kᵀ partial products", build=_channel, **_SCALE),
    Method("token-strict", "token mode, strict criterion (every channel below θ), thresholds scaled",
           savings="q·k pairs", build=_token("strict"), **_SCALE),
    Method("token-budget", "token mode, budget: a fixed share of the eligible tokens per head and side",
           knob="budget", savings="q·k pairs", build=_token_budget, bounds=(1e-4, 1.0), log_knob=False,
           first_guess=_budget_guess),
    Method("token-rms", "token mode, rms criterion (RMS of Δ over channels below θ), thresholds scaled",
           savings="q·k pairs", build=_token("rms"), **_SCALE),
    Method("magnitude", "Fig. 7 baseline a: zero the smallest-magnitude q/k video elements",
           knob="masked fraction", savings="q·kᵀ products", build=_magnitude, bounds=(0.0, 1.0),
           log_knob=False, first_guess=_magnitude_guess),
    Method("skip", "Fig. 7 baseline b: TimeRipple's channel detection, reused elements zeroed",
           savings="q·kᵀ products", build=_skip, **_SCALE),
):
    register_method(_method)

