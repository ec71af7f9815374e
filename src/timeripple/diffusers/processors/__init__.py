"""TimeRipple processors, one module per model family. Each module defines its ``FAMILY``; the registry
(``diffusers/registry.py``) registers :data:`BUILTIN_FAMILIES` on first use."""

from . import cogvideox, hunyuan_video, ltx, mochi, open_sora_plan, wan
from .base import TimeRippleAttnProcessor
from .cogvideox import CogVideoXTimeRippleAttnProcessor
from .hunyuan_video import HunyuanVideoTimeRippleAttnProcessor
from .ltx import LTXVideoTimeRippleAttnProcessor
from .mochi import MochiTimeRippleAttnProcessor
from .open_sora_plan import OpenSoraPlanTimeRippleAttnProcessor
from .wan import WanTimeRippleAttnProcessor

BUILTIN_FAMILIES = tuple(m.FAMILY for m in (wan, hunyuan_video, cogvideox, ltx, mochi, open_sora_plan))

__all__ = [
    "BUILTIN_FAMILIES",
    "TimeRippleAttnProcessor",
    "WanTimeRippleAttnProcessor",
    "HunyuanVideoTimeRippleAttnProcessor",
    "CogVideoXTimeRippleAttnProcessor",
    "LTXVideoTimeRippleAttnProcessor",
    "MochiTimeRippleAttnProcessor",
    "OpenSoraPlanTimeRippleAttnProcessor",
]
