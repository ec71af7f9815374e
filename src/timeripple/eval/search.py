"""Savings matching: move a method's knob until its achieved savings hit a target.

:func:`match_savings` takes ``savings(knob)`` (monotone non-decreasing, e.g. the mean counted savings on
the reusing steps over a set of runs), a target and the knob's range. It starts at a first guess and
brackets the target with secant steps on ``logit(savings)`` (savings curves are sigmoid-like in the knob,
so this is close to linear; the slope comes from the points seen, from a similar curve, or a shallow
default), each at most a factor of 4 in ``log(knob)`` for scales or half the distance to a bound for
fractions; then it narrows the bracket with the Illinois variant of regula falsi on
``logit(savings) - logit(target)``. It stops as soon as an evaluated knob is within ``tol`` of the target and always reports the
**achieved** savings of the knob it returns, never the target.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Dict, List, Optional, Tuple

from .._validation import value_error

__all__ = ["match_savings", "SearchResult"]


@dataclasses.dataclass
class SearchResult:
    r"""
    The outcome of one savings search.

    Args:
        target (`float`): the savings asked for.
        knob (`float`): the knob value returned (the closest one evaluated when not converged).
        achieved (`float`): the savings measured at ``knob`` (what every report shows).
        converged (`bool`): ``|achieved - target| <= tol``.
        reachable (`bool`): `False` when even the knob's bound does not reach the target.
        message (`str`): empty when converged, else what was reached and why not more.
        evaluations (`list[tuple[float, float]]`): ``(knob, savings)`` in the order evaluated.
    """

    target: float
    knob: float
    achieved: float
    converged: bool
    reachable: bool = True
    message: str = ""
    evaluations: List[Tuple[float, float]] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _logit(s: float) -> float:
    s = min(max(s, 1e-6), 1 - 1e-6)
    return math.log(s / (1 - s))


def match_savings(
    savings: Callable[[float], float],
    target: float,
    *,
    bounds: Tuple[float, float],
    log_knob: bool = True,
    first_guess: Optional[float] = None,
    tol: float = 0.005,
    max_evals: int = 16,
    history: Optional[Dict[float, float]] = None,
    shape: Optional[Dict[float, float]] = None,
    name: str = "method",
    knob_name: str = "knob",
    integer: bool = False,
) -> SearchResult:
    r"""
    Find a knob whose ``savings(knob)`` is within ``tol`` of ``target``.

    Args:
        savings (`Callable[[float], float]`): achieved savings for a knob, non-decreasing in the knob.
        target (`float`): savings in ``[0, 1)``.
        bounds (`tuple[float, float]`): the knob range searched.
        log_knob (`bool`, defaults to `True`): step and interpolate in ``log(knob)`` (for scales).
        first_guess (`float`, *optional*): the first knob tried (clipped to ``bounds``); default: the
            geometric (log) or arithmetic mean of the bounds.
        tol (`float`, defaults to 0.005): absolute tolerance on the savings.
        max_evals (`int`, defaults to 16): most new evaluations before giving up (closest one reported).
        history (`dict[float, float]`, *optional*): knob -> savings already measured with the same
            ``savings`` function (they bracket the target for free; new evaluations are added to it).
        shape (`dict[float, float]`, *optional*): knob -> savings of a similar curve (e.g. measured on fewer
            runs); only its slope is used, to aim the first steps while fewer than two points are known.
        name, knob_name (`str`): for the messages.
        integer (`bool`, defaults to `False`): the knob only takes whole values (e.g. a cache interval):
            every knob tried is rounded, so no two evaluations run the same setting, and the search stops
            when the target lies between two neighbouring integers.

    Returns:
        [`SearchResult`]: achieved savings of the returned knob, and a message when the target was missed.

    Example:
        >>> from timeripple.eval.search import match_savings
        >>> r = match_savings(lambda s: 1 - 1 / (1 + s), 0.75, bounds=(1e-3, 1e3), first_guess=1.0)
        >>> r.converged, abs(r.achieved - 0.75) <= 0.005
        (True, True)
    """
    if not 0 <= target < 1 or math.isnan(target):
        raise value_error("target", target, "savings targets must be in [0, 1)", "pass e.g. 0.75")
    lo, hi = (float(b) for b in bounds)
    to_u = math.log if log_knob else (lambda x: x)
    from_u = math.exp if log_knob else (lambda u: u)
    slope0 = 1.0 if log_knob else 4.0 / (hi - lo)  # logit(savings) per unit of u, when nothing better is known
    seen: Dict[float, float] = {} if history is None else history
    order: List[Tuple[float, float]] = []
    budget = [max_evals]

    def f(x: float) -> float:
        x = _whole(x, lo, hi) if integer else min(max(x, lo), hi)
        if x not in seen:
            if budget[0] <= 0:
                raise _OutOfEvals
            budget[0] -= 1
            seen[x] = float(savings(x))
        order.append((x, seen[x]))
        return seen[x]

    def result(x: float, message: str = "", reachable: bool = True) -> SearchResult:
        s = seen[x]
        return SearchResult(target, x, s, abs(s - target) <= tol, reachable, message, order)

    def closest() -> float:
        return min(seen, key=lambda x: (abs(seen[x] - target), x))

    try:
        if any(abs(s - target) <= tol for s in seen.values()):
            return result(closest())
        x = first_guess if first_guess is not None else from_u((to_u(lo) + to_u(hi)) / 2)
        x = _whole(x, lo, hi) if integer else min(max(float(x), lo), hi)
        if abs(f(x) - target) <= tol:
            return result(x)
        # -- bracket: the largest knob below the target and the smallest above it ----------------
        while True:
            below = [k for k, s in seen.items() if s < target]
            above = [k for k, s in seen.items() if s > target]
            a = max(below) if below else None
            b = min(above) if above else None
            if a is not None and b is not None and a < b:
                break
            if b is None:  # need more savings: raise the knob
                start = a if a is not None else x
                if start >= hi:
                    return result(hi, f"{name}: target {target:.1%} cannot be reached; at most {seen[hi]:.2%} "
                                      f"at the bound {knob_name} = {hi:.4g}", reachable=False)
                nxt = from_u(to_u(start) + math.log(4)) if log_knob else _halfway(start, hi, lo, hi)
                nxt = _aim(start, nxt, +1, target, seen, shape, to_u, from_u, slope0)
                nxt = max(nxt, start + 1) if integer else nxt
                s = f(min(nxt, hi))
            else:  # need less savings: lower the knob
                if b <= lo:
                    return result(lo, f"{name}: target {target:.1%} cannot be reached; at least {seen[lo]:.2%} "
                                      f"at the bound {knob_name} = {lo:.4g}", reachable=False)
                nxt = from_u(to_u(b) - math.log(4)) if log_knob else _halfway(b, lo, lo, hi)
                nxt = _aim(b, nxt, -1, target, seen, shape, to_u, from_u, slope0)
                nxt = min(nxt, b - 1) if integer else nxt
                s = f(max(nxt, lo))
            if abs(s - target) <= tol:
                return result(closest())
        # -- Illinois regula falsi on logit(savings) over u = log(knob) or knob --------------------
        ua, ub = to_u(a), to_u(b)
        ga, gb = _logit(seen[a]) - _logit(target), _logit(seen[b]) - _logit(target)
        side = 0
        while True:
            if ub - ua <= (1e-3 if log_knob else 1e-3 * (hi - lo)) or (integer and b - a <= 1):
                x = closest()
                return result(x, f"{name}: savings jump from {seen[a]:.2%} to {seen[b]:.2%} "
                                 f"between {knob_name} {a:.6g} and {b:.6g}; the closest "
                                 f"({seen[x]:.2%}) is reported")
            u = (ua * gb - ub * ga) / (gb - ga) if gb != ga else (ua + ub) / 2
            if not ua < u < ub:
                u = (ua + ub) / 2
            x = from_u(u)
            if integer:  # a whole knob strictly inside the bracket
                x = min(max(_whole(x, lo, hi), a + 1), b - 1)
                u = to_u(x)
            s = f(x)
            if abs(s - target) <= tol:
                return result(x)
            g = _logit(s) - _logit(target)
            if g < 0:
                a, ua, ga = x, u, g
                if side == -1:
                    gb /= 2
                side = -1
            else:
                b, ub, gb = x, u, g
                if side == 1:
                    ga /= 2
                side = 1
    except _OutOfEvals:
        x = closest()
        return result(x, f"{name}: no {knob_name} within {tol:.1%} of {target:.1%} after {max_evals} evaluations; "
                         f"the closest ({seen[x]:.2%} at {knob_name} = {x:.6g}) is reported")


def _aim(start, capped, direction, target, seen, shape, to_u, from_u, default_slope) -> float:
    """A secant step from ``start`` towards the target on ``logit(savings)``, 5% long so that it tends to
    bracket, never further than ``capped`` (the plain bracketing step)."""
    points = sorted(seen.items(), key=lambda kv: abs(_logit(kv[1]) - _logit(target)))
    if len({k for k, _ in points}) < 2 and shape:
        points = sorted(shape.items(), key=lambda kv: abs(_logit(kv[1]) - _logit(target)))
    pairs = [(to_u(k), _logit(v)) for k, v in points]
    for (u1, g1), (u2, g2) in zip(pairs, pairs[1:]):
        if u1 != u2 and (g2 - g1) / (u2 - u1) > 0:
            slope = (g2 - g1) / (u2 - u1)
            break
    else:  # one point: a shallow slope (1 logit unit per e-fold / per quarter range), so the step overshoots
        slope = default_slope
    u0 = to_u(start)
    step = 1.05 * (_logit(target) - _logit(seen[start])) / slope
    limit = to_u(capped) - u0
    if step * direction <= 0:
        return capped
    return from_u(u0 + (min(step, limit) if direction > 0 else max(step, limit)))


def _whole(x: float, lo: float, hi: float) -> float:
    """``x`` rounded to a whole number inside ``[lo, hi]`` (as a float, the key of the evaluations)."""
    return float(min(max(round(float(x)), math.ceil(lo)), math.floor(hi)))


def _halfway(start: float, bound: float, lo: float, hi: float) -> float:
    """Half the way from ``start`` to ``bound``; the bound itself once within 2% of the range."""
    return bound if abs(bound - start) <= 0.02 * (hi - lo) else start + (bound - start) / 2


class _OutOfEvals(Exception):
    pass
