"""One call per attention peer on a whole pipeline: ``apply_svg``, ``apply_minference``, ``apply_ripple_svg``.

Each returns a [`PeerHandle`] (``.stats``: counted q·kᵀ savings per step and in total, FLOP-weighted;
``.remove()``: the stock model again).
"""

from __future__ import annotations

from ..config import TimeRippleConfig, load_config
from .install import PeerHandle, PeerSchedule, install_attention_peer
from .minference import minference_attention
from .ripple_svg import ripple_svg_attention
from .svg import svg_attention

__all__ = ["apply_svg", "apply_minference", "apply_ripple_svg", "SVG_DENSE_FRACTION"]

# SVG keeps the first 12 of 50 steps dense (the TimeRipple paper's SVG 70% configuration).
SVG_DENSE_FRACTION = 12 / 50


def apply_svg(pipe, sparsity: float, *, dense_fraction: float = SVG_DENSE_FRACTION, num_sampled: int = 64,
              backend: str = "auto") -> PeerHandle:
    r"""SVG-style sparse attention (:func:`~timeripple.peers.svg_attention`) in every video self-attention
    layer, on all steps after the first ``dense_fraction`` of them.

    Example:

    ```py
    >>> handle = apply_svg(pipe, sparsity=0.7)
    >>> video = pipe(prompt).frames[0]
    >>> handle.stats.total_savings; handle.remove()
    ```
    """
    schedule = PeerSchedule(kwargs={"sparsity": sparsity, "num_sampled": num_sampled, "backend": backend},
                            dense_fraction=dense_fraction, name=f"svg {sparsity:.0%}")
    svg_attention_check(sparsity)
    return install_attention_peer(pipe, svg_attention, schedule)


def svg_attention_check(sparsity) -> None:
    from .svg import check_sparsity

    check_sparsity(sparsity)


def apply_minference(pipe, density: float, *, pattern: str = "auto", dense_fraction: float = 0.0,
                     num_sampled: int = 64) -> PeerHandle:
    r"""MInference-style patterns (:func:`~timeripple.peers.minference_attention`) on every step after the
    first ``dense_fraction``."""
    schedule = PeerSchedule(kwargs={"density": density, "pattern": pattern, "num_sampled": num_sampled},
                            dense_fraction=dense_fraction, name=f"minference {pattern} {density:.0%}")
    return install_attention_peer(pipe, minference_attention, schedule)


def apply_ripple_svg(pipe, config, sparsity: float, *, threshold_scale: float = 1.0, num_sampled: int = 64,
                     backend: str = "auto") -> PeerHandle:
    r"""TimeRipple channel reuse inside SVG-style masks (:func:`~timeripple.peers.ripple_svg_attention`).

    The steps follow TimeRipple's schedule in ``config``: its dense steps are stock, its reusing steps get
    the scheduled ``θ`` (times ``threshold_scale``) and the SVG-style mask of ``sparsity``.

    Args:
        config ([`TimeRippleConfig`] or `str`): the TimeRipple config (channel mode; ``window``, ``axes``,
            ``priority`` are taken from it).
    """
    config = load_config(config) if not isinstance(config, TimeRippleConfig) else config

    def step_kwargs(step, num_steps):
        kwargs = config.attention_kwargs(step, num_steps)
        if kwargs is None:
            return None
        theta = kwargs["threshold"]
        theta = {a: t * threshold_scale for a, t in theta.items()} if isinstance(theta, dict) else theta * threshold_scale
        return {"threshold": theta, "sparsity": sparsity, "window": kwargs["window"], "axes": kwargs["axes"],
                "priority": kwargs["priority"], "num_sampled": num_sampled, "backend": backend}

    schedule = PeerSchedule(step_kwargs=step_kwargs, name=f"timeripple+svg {sparsity:.0%}",
                            model_family=config.model_family)
    svg_attention_check(sparsity)
    return install_attention_peer(pipe, ripple_svg_attention, schedule, takes_threshold=True)
