"""TimeRipple processors, one module per model family; importing this package registers them."""

from .base import TimeRippleAttnProcessor
from .cogvideox import CogVideoXTimeRippleAttnProcessor
from .hunyuan_video import HunyuanVideoTimeRippleAttnProcessor
from .ltx import LTXVideoTimeRippleAttnProcessor
from .mochi import MochiTimeRippleAttnProcessor
from .open_sora_plan import OpenSoraPlanTimeRippleAttnProcessor
from .wan import WanTimeRippleAttnProcessor

__all__ = [
    "TimeRippleAttnProcessor",
    "WanTimeRippleAttnProcessor",
    "HunyuanVideoTimeRippleAttnProcessor",
    "CogVideoXTimeRippleAttnProcessor",
    "LTXVideoTimeRippleAttnProcessor",
    "MochiTimeRippleAttnProcessor",
    "OpenSoraPlanTimeRippleAttnProcessor",
]
