"""The paper's ablations of TimeRipple (channel mode) as ``timeripple eval`` methods.

============================  ==============================================  =====================
name                          variant (the paper)                             knob
============================  ==============================================  =====================
``channel-fixed``             one fixed θ on every reusing step (Tbl. 3)      threshold scale
``channel-temporal``          temporal axis only (Tbl. 3 "Temp")              threshold scale
``channel-w3/-w4/-w8``        window of 3 / 4 / 8 positions (Fig. 11)         threshold scale
``channel-alpha``             per-channel τ = α · mean_c |Δ_c| (Tbl. 4)       α
============================  ==============================================  =====================

All keep the base config's schedule (dense and reusing steps); ``channel`` (registered by the harness) is
the adaptive, spatial + temporal, window-2 reference each is compared with.
"""

from __future__ import annotations

from .methods import Method, MethodSetup, register_method, scaled

__all__ = ["ABLATION_METHODS", "WINDOWS"]

WINDOWS = (3, 4, 8)
ABLATION_METHODS = ("channel-fixed", "channel-temporal") + tuple(f"channel-w{w}" for w in WINDOWS) + ("channel-alpha",)


def _channel(config, **changes):
    return config.replace(mode="channel", budget=None, channel_alpha=None, **changes)


def _fixed(scale, config):
    # the fixed θ is the schedule's end value (the paper's θ_max), scaled like the ramp
    return MethodSetup(scaled(_channel(config, fixed_threshold=config.threshold_end), scale))


def _temporal(scale, config):
    return MethodSetup(scaled(_channel(config, axes=("t",)), scale))


def _window(window):
    def build(scale, config):
        return MethodSetup(scaled(_channel(config, window=window), scale))
    return build


def _alpha(alpha, config):
    # θ enables reuse on the reusing steps; τ = α · mean|Δ| decides which elements pass
    return MethodSetup(_channel(config).replace(channel_alpha=float(alpha), name=f"{config.name}-alpha{alpha:.4g}"))


_SCALE = dict(knob="threshold scale", savings="q·kᵀ partial products", bounds=(1e-4, 1e3), log_knob=True)
for _method in (
    Method("channel-fixed", "channel mode, one fixed θ on every reusing step (Tbl. 3 'Fixed')", build=_fixed, **_SCALE),
    Method("channel-temporal", "channel mode, temporal axis only (Tbl. 3 'Temp')", build=_temporal, **_SCALE),
    *[Method(f"channel-w{w}", f"channel mode, window {w} (Fig. 11)", build=_window(w), **_SCALE) for w in WINDOWS],
    Method("channel-alpha", "channel mode, per-channel τ = α·mean|Δ| (Tbl. 4)", knob="alpha",
           savings="q·kᵀ partial products", build=_alpha, bounds=(1e-3, 1e2), log_knob=True),
):
    register_method(_method, replace=True)
