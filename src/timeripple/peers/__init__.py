"""Peer methods, written here from their papers' descriptions, to compare with TimeRipple at matched savings.

Attention functions on ``(B, H, N, D)`` (same conventions as :func:`timeripple.ripple_attention`):

* :func:`svg_attention`: Sparse-VideoGen-style per-head spatial / temporal masks chosen online
  (FlexAttention block masks on CUDA, masked SDPA elsewhere).
* :func:`minference_attention`: MInference-style A-shape / vertical-slash / block-sparse patterns.
* :func:`ripple_svg_attention`: TimeRipple channel reuse inside the SVG-style masks.

On a pipeline: :func:`apply_svg`, :func:`apply_minference`, :func:`apply_ripple_svg` (attention peers),
:func:`apply_delta_dit` (Δ-DiT-style block cache), :func:`enable_diffusers_cache` (diffusers' PAB,
FirstBlockCache, MagCache, TaylorSeer) and :func:`apply_timeripple_with_cache` (TimeRipple composed with
one of those). Every figure they report is counted, never timed.
"""

from .apply_peers import apply_minference, apply_ripple_svg, apply_svg
from .caches import CACHE_KINDS, CacheHandle, cache_config, calibrate_mag_ratios, enable_diffusers_cache
from .compose import ComposedHandle, apply_timeripple_with_cache
from .counting import ComputeCounter
from .delta_dit import DeltaDiTHandle, apply_delta_dit
from .install import PeerHandle, PeerSchedule, install_attention_peer
from .minference import minference_attention
from .ripple_svg import ripple_svg_attention
from .stats import PeerCallStats
from .svg import svg_attention

__all__ = [
    "CACHE_KINDS", "CacheHandle", "ComposedHandle", "ComputeCounter", "DeltaDiTHandle", "PeerCallStats",
    "PeerHandle", "PeerSchedule", "apply_delta_dit", "apply_minference", "apply_ripple_svg", "apply_svg",
    "apply_timeripple_with_cache", "cache_config", "calibrate_mag_ratios", "enable_diffusers_cache",
    "install_attention_peer", "minference_attention", "ripple_svg_attention", "svg_attention",
]
