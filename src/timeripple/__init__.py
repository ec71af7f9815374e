"""TimeRipple: faster video diffusion transformers by reusing attention work between neighbouring
tokens in time and space.

Public API (imported lazily, so ``import timeripple`` stays cheap and does not import diffusers)::

    import timeripple
    out, stats = timeripple.ripple_attention(q, k, v, grid=(T, H, W), threshold=0.4, return_stats=True)
    handle = timeripple.apply_timeripple(pipe, "wan2.1")
    timeripple.remove_timeripple(pipe)
"""

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> submodule that defines it
_EXPORTS = {
    "TimeRippleConfig": "config",
    "load_config": "config",
    "list_configs": "config",
    "threshold_at": "config",
    "ripple_attention": "attention",
    "RippleStats": "ripple_stats",
    "apply_timeripple": "diffusers",
    "remove_timeripple": "diffusers",
    "get_stats": "diffusers",
    "processors_for_model": "diffusers",
    "TimeRippleAttnProcessor": "diffusers",
    "TimeRippleHandle": "diffusers",
    "GenerationStats": "diffusers",
    "register_model": "diffusers",
    "supported_models": "diffusers",
    "enable_context_parallel": "diffusers",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        module = import_module(f".{_EXPORTS[name]}", __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'timeripple' has no attribute {name!r}")


def __dir__():
    return __all__


if TYPE_CHECKING:  # pragma: no cover
    from .attention import ripple_attention
    from .config import TimeRippleConfig, list_configs, load_config, threshold_at
    from .diffusers import (
        GenerationStats,
        TimeRippleAttnProcessor,
        TimeRippleHandle,
        apply_timeripple,
        enable_context_parallel,
        get_stats,
        processors_for_model,
        register_model,
        remove_timeripple,
        supported_models,
    )
    from .ripple_stats import RippleStats
