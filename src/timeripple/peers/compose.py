r"""TimeRipple together with one of diffusers' caches, in either order, with the combined counted savings.

TimeRipple swaps the processors of the video self-attention layers and registers one transformer hook;
diffusers' caches register hooks on attention modules (PAB, TaylorSeer) or on transformer blocks
(FirstBlockCache, MagCache). Nothing of one touches the other's objects, so both orders build the same
model: a cache that skips a layer or block simply never calls TimeRipple's processor there, and a layer
that does run uses TimeRipple. :func:`apply_timeripple_with_cache` applies both, in the order asked, and
checks that the other's state survived (processors still TimeRipple's, cache still enabled); removal in
any order restores the stock model exactly.

Combined savings are **counted** in q·kᵀ partial products over the whole generation: the full count is
``forwards × first forward's products`` (see :mod:`~timeripple.peers.counting`); what ran is TimeRipple's
recorded dense count of the calls that ran minus the products TimeRipple skipped in them.
"""

from __future__ import annotations

import dataclasses
import logging


from .._validation import value_error
from ..diffusers import apply as tr_apply
from .caches import CacheHandle, enable_diffusers_cache

logger = logging.getLogger(__name__)

__all__ = ["apply_timeripple_with_cache", "ComposedHandle", "ORDERS"]

ORDERS = ("timeripple_first", "cache_first")


@dataclasses.dataclass(eq=False)
class ComposedHandle:
    """TimeRipple's handle and the cache's handle, with the combined counted savings."""

    timeripple: object
    cache: CacheHandle

    @property
    def total_savings(self) -> float:
        """Counted share of the whole generation's self-attention q·kᵀ partial products not computed."""
        t = self.cache.counter.totals
        full = t.first_attn * t.forwards
        tr = self.timeripple.stats
        done = tr.qk_products - tr.skipped_products
        return 1.0 - done / full if full else 0.0

    @property
    def cache_savings(self) -> float:
        """Counted share skipped by the cache alone (calls it did not run)."""
        return self.cache.attention_savings

    @property
    def stats(self):
        """``GenerationStats`` of the combination: TimeRipple's per-step thresholds (None = its dense steps),
        per-step savings of cache and TimeRipple together, and the combined total."""
        tr = self.timeripple.stats
        cache = self.cache.stats
        steps = [1.0 - (1.0 - c) * (1.0 - r) for c, r in zip(cache.step_savings, tr.step_savings)]
        thresholds = [th if th is not None else self.cache.kind for th in tr.thresholds]
        return dataclasses.replace(tr, step_savings=steps, thresholds=thresholds, total_savings=self.total_savings)

    def remove(self) -> None:
        """Remove both (TimeRipple first; any order is fine)."""
        try:
            self.timeripple.remove()
        finally:
            self.cache.remove()


def apply_timeripple_with_cache(pipe, config, kind: str, knob, *, order: str = "timeripple_first",
                                **cache_kwargs) -> ComposedHandle:
    r"""Apply TimeRipple (``config``) and a diffusers cache (``kind``, ``knob``) to ``pipe``, in ``order``.

    Args:
        pipe: a diffusers pipeline of a family TimeRipple supports (``pipe.transformer`` has ``enable_cache``).
        config: a [`TimeRippleConfig`] or a bundled config name.
        kind (`str`), knob: the cache, see :func:`timeripple.peers.cache_config`.
        order (`str`, defaults to `"timeripple_first"`): ``"timeripple_first"`` or ``"cache_first"``; both
            build the same model (the tests check the outputs are equal).
        **cache_kwargs: passed to :func:`~timeripple.peers.cache_config` (e.g. MagCache's ratios).

    Returns:
        [`ComposedHandle`]: ``.total_savings`` (combined, counted), ``.remove()``.

    Raises:
        `ValueError`: bad ``order``, a cache already enabled or TimeRipple already applied (nothing stays
            installed on error).

    Example:

    ```py
    >>> from timeripple.peers import apply_timeripple_with_cache
    >>> handle = apply_timeripple_with_cache(pipe, "wan2.1", "fbc", 0.1)
    >>> video = pipe(prompt).frames[0]
    >>> handle.total_savings, handle.cache_savings
    >>> handle.remove()
    ```
    """
    if order not in ORDERS:
        raise value_error("order", order, f"must be one of {ORDERS}", "pass order='timeripple_first'")
    transformer = getattr(pipe, "transformer", None)
    if transformer is not None and getattr(transformer, "is_cache_enabled", False):
        raise value_error("pipe.transformer", type(transformer).__name__,
                          f"already has a diffusers cache ({type(transformer._cache_config).__name__})",
                          "call `pipe.transformer.disable_cache()` first")
    handles = {}
    try:
        for step in (("tr", "cache") if order == "timeripple_first" else ("cache", "tr")):
            if step == "tr":
                handles["tr"] = tr_apply.apply_timeripple(pipe, config)
            else:
                handles["cache"] = enable_diffusers_cache(pipe, kind, knob, **cache_kwargs)
        _check_both_installed(handles["tr"], handles["cache"])
    except BaseException:
        for name in ("tr", "cache"):
            if name in handles:
                handles[name].remove()
        raise
    return ComposedHandle(timeripple=handles["tr"], cache=handles["cache"])


def _check_both_installed(tr_handle, cache_handle) -> None:
    """Refuse (ValueError) if installing the second method undid the first."""
    for name, transformer in tr_handle.transformers.items():
        modules = dict(transformer.named_modules())
        lost = [layer for layer in tr_handle.originals[name] if not _is_timeripple(modules[layer].processor)]
        if lost:
            raise value_error("order", None, f"the cache replaced TimeRipple's processors in {lost[:3]}",
                              "apply the cache first, then TimeRipple")
    if not cache_handle.transformer.is_cache_enabled:
        raise value_error("order", None, "TimeRipple disabled the cache", "apply TimeRipple first, then the cache")


def _is_timeripple(processor) -> bool:
    from ..diffusers.processors.base import TimeRippleAttnProcessor

    return isinstance(processor, TimeRippleAttnProcessor)


