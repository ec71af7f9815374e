"""The option values of TimeRipple and their validators, in one place.

A value is checked by the same rule, with the same message, wherever it comes from: a
:class:`~timeripple.TimeRippleConfig` field (from Python or YAML), a keyword argument of
:func:`~timeripple.ripple_attention`, the detector or a baseline. Every error names the argument, the
value received, the rule and the fix (``_validation.py`` builds the messages).

This module imports only ``_validation`` (``torch`` only inside the tensor checks, so the torch-free CLI
defaults can share its constants); everything else may import it.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Mapping, Optional, Sequence, Tuple

from ._validation import number_kind_error, type_error, value_error

AXES = ("t", "y", "x")  # frames, rows, columns of the latent token grid
MODES = ("channel", "token")
TOKEN_CRITERIA = ("strict", "fraction", "rms")
TEXT_POSITIONS = ("after", "before")
TOKEN_KEYS = ("chain", "pairs")  # how keys merge in token mode (timeripple/pairs.py)
KEY_REPRS = ("source", "mean")  # the key standing for a merged group
QUERY_REPRS = ("copy", "mean", "interp")  # how a reused query row is made (timeripple/token_fidelity.py)
KEY_SCORES = ("delta", "kv")  # how keys are ranked for merging
BUDGET_SCOPES = ("head", "call")  # a budget per head, or pooled over the heads of a call

__all__ = [
    "AXES", "MODES", "TOKEN_CRITERIA", "TEXT_POSITIONS", "TOKEN_KEYS", "KEY_REPRS", "QUERY_REPRS", "KEY_SCORES", "BUDGET_SCOPES",
    "check_token_plan_options", "check_fidelity_options",
    "check_int", "check_real", "check_choice", "check_axes", "check_window", "check_mode_options",
    "check_geometry", "check_text", "check_tensors", "check_mask", "normalize_thresholds",
]


# ----------------------------------------------------------------------------------------------
# scalars


def check_int(name: str, value, minimum: int, *, fix: Optional[str] = None) -> int:
    """An int ``>= minimum``. A non-number is a ``TypeError``, a float (even ``2.0``) a
    :class:`~timeripple._validation.NumberKindError` (both a ``TypeError`` and a ``ValueError``), a smaller
    int a ``ValueError``."""
    fix = fix or f"set `{name}` to a whole number >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, Real):
        raise type_error(name, value, "an int", fix)
    if not isinstance(value, Integral):
        raise number_kind_error(name, value, "an int", fix)
    if value < minimum:
        raise value_error(name, value, f"must be >= {minimum}", fix)
    return int(value)


def check_real(name: str, value, *, allow_none=False, low=None, strict=False, high=None,
               fix: Optional[str] = None) -> Optional[float]:
    """A finite float in ``[low, high]`` (``(low, high]`` when ``strict``), or None when allowed."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, Real):
        expected = "a float or None" if allow_none else "a float"
        raise type_error(name, value, expected, fix or f"write `{name}` as a number, e.g. 0.4")
    value = float(value)
    if not math.isfinite(value):
        raise value_error(name, value, "must be finite", fix or f"set `{name}` to a finite number")
    if low is not None and (value < low or (strict and value == low)) or high is not None and value > high:
        rule = f"must be {'>' if strict else '>='} {low}" + (f" and <= {high}" if high is not None else "")
        raise value_error(name, value, rule, fix or f"set `{name}` to a value that is {rule[8:]}")
    return value


def check_choice(name: str, value, choices: Tuple[str, ...], *, fix: Optional[str] = None) -> str:
    fix = fix or f"set `{name}` to one of {choices}"
    if not isinstance(value, str):
        raise type_error(name, value, f"one of {choices} (a string)", fix)
    if value not in choices:
        raise value_error(name, value, f"must be one of {choices}", fix)
    return value


def check_axes(name: str, value, *, permutation: bool = False) -> Tuple[str, ...]:
    """A non-empty tuple of distinct axes of :data:`AXES` (all three when ``permutation``)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise type_error(name, value, "a list or tuple of axis names", f"pass e.g. `{name}` = ('t', 'y', 'x')")
    value = tuple(value)
    for axis in value:
        if axis not in AXES:
            raise value_error(name, value, f"unknown axis {axis!r}; axes are {AXES}",
                              f"use only 't', 'y' and 'x' in `{name}`")
    if len(set(value)) != len(value):
        raise value_error(name, value, "axes must not repeat", f"list each axis once in `{name}`")
    if permutation and sorted(value) != sorted(AXES):
        raise value_error(name, value, "must be a permutation of ('t', 'y', 'x')", f"list all three axes in `{name}`")
    if not value:
        raise value_error(name, value, "must name at least one axis", f"set `{name}` to e.g. ('t', 'y', 'x')")
    return value


def check_window(window) -> int:
    return check_int("window", window, 2, fix="use window=2 (the paper's default)")


# ----------------------------------------------------------------------------------------------
# the options of one attention call (config fields and ripple_attention arguments alike)


def check_mode_options(mode, *, channel_alpha=None, token_criterion="strict", token_fraction=0.9, budget=None,
                       scale=None) -> None:
    """The mode and the options that depend on it; each option is refused in the mode it does not apply to."""
    check_choice("mode", mode, MODES, fix="pass mode='channel' (the paper) or mode='token' (faster on GPUs)")
    alpha = check_real("channel_alpha", channel_alpha, allow_none=True, low=0, strict=True,
                       fix="pass e.g. channel_alpha=1.0, or None")
    if alpha is not None and mode != "channel":
        raise value_error("channel_alpha", alpha, f"applies only with mode='channel', got mode={mode!r}",
                          "set mode='channel' (YAML `mode: channel`) or channel_alpha=None (`channel_alpha: null`)")
    check_choice("token_criterion", token_criterion, TOKEN_CRITERIA, fix="use token_criterion='strict'")
    check_real("token_fraction", token_fraction, low=0, strict=True, high=1, fix="use e.g. token_fraction=0.9")
    budget = check_real("budget", budget, allow_none=True, low=0, strict=True, high=1,
                        fix="use e.g. budget=0.5, or detect.budget_for_pair_savings(...)")
    if budget is not None and mode != "token":
        raise value_error("budget", budget, f"applies only with mode='token', got mode={mode!r}",
                          "set mode='token' (YAML `mode: token`) or budget=None (`budget: null`)")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, Real) or not math.isfinite(scale)):
        raise value_error("scale", scale, "must be None or a finite real number", "leave scale=None for 1/sqrt(D)")


def check_token_plan_options(mode, *, token_keys="chain", key_budget=None, key_repr="source", budget=None,
                             window=2) -> Optional[float]:
    """``token_keys``, ``key_budget`` and ``key_repr`` (token mode only); returns ``key_budget`` as a float."""
    check_choice("token_keys", token_keys, TOKEN_KEYS, fix="pass token_keys='chain' (default) or 'pairs'")
    check_choice("key_repr", key_repr, KEY_REPRS,
                 fix="pass key_repr='source' (the group's first token) or 'mean' (the group mean)")
    key_budget = check_real("key_budget", key_budget, allow_none=True, low=0, high=1,
                            fix="use e.g. key_budget=1.0, or pairs.pair_budgets_for_pair_savings(...)")
    if mode != "token" and (token_keys != "chain" or key_budget is not None or key_repr != "source"):
        raise value_error("mode", mode, "token_keys, key_budget and key_repr apply to mode='token' only",
                          "set mode='token', or leave them at chain / None / source")
    if key_budget is not None and budget is None:
        raise value_error("key_budget", key_budget, "needs budget (the query side's budget) to be set",
                          "set budget, e.g. from pairs.pair_budgets_for_pair_savings(...), or key_budget=None")
    if token_keys == "pairs" and window != 2:
        raise value_error("window", window, "token_keys='pairs' pairs the members of 2x2x2 cubes",
                          "use window=2, or token_keys='chain'")
    return key_budget


def check_fidelity_options(mode, *, query_repr="copy", key_score="delta", pair_savings=None, key_share=0.7,
                           budget_scope="head", budget=None, key_budget=None, token_keys="chain"):
    """The token-plan fidelity options (``timeripple/token_fidelity.py``); returns ``(pair_savings, key_share)``
    as floats (``pair_savings`` may be None)."""
    check_choice("query_repr", query_repr, QUERY_REPRS, fix="pass query_repr='copy' (today), 'mean' or 'interp'")
    check_choice("key_score", key_score, KEY_SCORES, fix="pass key_score='delta' (today) or 'kv'")
    if not (isinstance(key_share, str) and key_share == "auto"):
        key_share = check_real("key_share", key_share, low=0, high=1, fix="use key_share='auto' or e.g. 0.7")
    pair_savings = check_real("pair_savings", pair_savings, allow_none=True, low=0,
                              fix="use e.g. pair_savings=0.75, or None")
    if pair_savings is not None and pair_savings >= 1:
        raise value_error("pair_savings", pair_savings, "must be < 1", "use e.g. pair_savings=0.75")
    if pair_savings is not None and (budget is not None or key_budget is not None):
        raise value_error("pair_savings", pair_savings, "replaces budget and key_budget; set only one of them",
                          "set budget=None and key_budget=None, or pair_savings=None")
    check_choice("budget_scope", budget_scope, BUDGET_SCOPES, fix="pass budget_scope='head'")
    if budget_scope == "call" and (mode != "token" or (budget is None and pair_savings is None)):
        raise value_error("budget_scope", budget_scope, "'call' pools a token-mode budget over the heads",
                          "set mode='token' with budget or pair_savings, or budget_scope='head'")
    if budget_scope == "call" and token_keys != "chain":
        raise value_error("budget_scope", budget_scope, "'call' needs token_keys='chain' (pairs fix one pairing per cube)",
                          "set token_keys='chain', or budget_scope='head'")
    if mode != "token" and (query_repr != "copy" or key_score != "delta" or pair_savings is not None):
        raise value_error("mode", mode, "query_repr, key_score and pair_savings apply to mode='token' only",
                          "set mode='token', or leave them at copy / delta / None")
    if pair_savings is None and budget is None and (query_repr == "interp" or key_score == "kv"):
        raise value_error("query_repr / key_score", (query_repr, key_score),
                          "the interpolation and kv scores select by rank: they need a budget or pair_savings",
                          "set pair_savings (e.g. 0.75) or budget, or query_repr='copy' / key_score='delta'")
    return pair_savings, key_share


def normalize_thresholds(threshold, axes) -> dict[str, float]:
    """``threshold`` (a number for all ``axes`` or a dict per axis) -> ``{axis: θ}`` for the checked
    axes (dict keys outside ``axes`` are ignored). Rejects negative, NaN and non-numeric values."""
    if isinstance(threshold, Mapping):
        for key in threshold:
            if key not in AXES:
                raise value_error("threshold", dict(threshold), f"unknown axis {key!r}; axes are 't', 'y', 'x'",
                                  "use keys 't', 'y', 'x'")
        items = {a: threshold[a] for a in axes if a in threshold}
    else:
        items = {a: threshold for a in axes}
    out = {}
    for axis, theta in items.items():
        if isinstance(theta, bool) or not isinstance(theta, Real):
            raise type_error(f"threshold[{axis!r}]" if isinstance(threshold, Mapping) else "threshold",
                             theta, "a float, a dict of floats per axis, or None", "pass e.g. threshold=0.4")
        if not math.isfinite(theta) or theta < 0:  # the same rule as TimeRippleConfig
            raise value_error("threshold", threshold, "thresholds must be finite and >= 0",
                              "use 0 for no reuse, None for dense attention, or a positive value such as 0.4")
        out[axis] = float(theta)
    return out


# ----------------------------------------------------------------------------------------------
# geometry and tensors


def check_geometry(grid, window, axes, priority=None) -> None:
    """Validate ``grid``, ``window``, ``axes`` and ``priority`` (which must list every checked axis)."""
    if not isinstance(grid, (tuple, list)) or len(grid) != 3 or not all(
        isinstance(g, Integral) and not isinstance(g, bool) and g >= 1 for g in grid
    ):  # numpy ints are Integral too
        raise value_error("grid", grid, "must be three positive ints (T, H, W) of the latent video grid",
                          "pass e.g. grid=(T, H // patch, W // patch)")
    check_window(window)
    check_axes("axes", axes)
    if priority is not None:
        check_axes("priority", priority)
        missing = [a for a in axes if a not in priority]
        if missing:
            raise value_error("priority", priority, f"axes {missing} are checked but have no priority",
                              "list every axis of `axes` in `priority`")


def check_text(text_len, text_position, grid: Sequence[int], n: int) -> None:
    if not isinstance(text_len, Integral) or isinstance(text_len, bool) or text_len < 0:
        raise value_error("text_len", text_len, "must be an int >= 0", "pass the number of text tokens, or 0")
    if text_position not in TEXT_POSITIONS:
        raise value_error("text_position", text_position, "must be 'before' or 'after'",
                          "use 'after' for [video | text] (HunyuanVideo), 'before' for [text | video] (CogVideoX)")
    nv = math.prod(grid)
    if nv + text_len != n:
        raise value_error("grid", grid, f"T*H*W ({nv}) + text_len ({text_len}) must equal N ({n}) of q",
                          "pass the latent grid after patching and the exact number of text tokens")


def check_tensors(q, k, v) -> None:
    """``q``, ``k``, ``v``: 4-D floating tensors ``(B, H, N, D)`` of one dtype and device; ``k`` like ``q``."""
    import torch

    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise type_error(name, x, "a torch.Tensor (B, H, N, D)", f"pass {name} as a tensor")
        if x.dim() != 4:
            raise value_error(f"{name}.shape", tuple(x.shape), "must be 4-D (B, H, N, D)",
                              "transpose (B, N, H, D) inputs with .transpose(1, 2)")
        if not x.is_floating_point():
            raise type_error(f"{name}.dtype", x.dtype, "a floating dtype", f"cast {name} to float16/bfloat16/float32")
    if q.shape[-1] == 0:
        raise value_error("q.shape", tuple(q.shape), "the head dim D must be >= 1", "pass q, k, v with D >= 1")
    if k.shape != q.shape:
        raise value_error("k.shape", tuple(k.shape), f"must equal q.shape {tuple(q.shape)} (self-attention)",
                          "pass q and k of the same layer")
    if v.shape[:3] != q.shape[:3]:
        raise value_error("v.shape", tuple(v.shape), f"must start with q's (B, H, N) {tuple(q.shape[:3])}",
                          "pass v of the same layer in (B, H, N, D) layout")
    for name, x in (("k", k), ("v", v)):
        if x.dtype != q.dtype:
            raise value_error(f"{name}.dtype", x.dtype, f"must equal q.dtype {q.dtype}", f"cast {name} to {q.dtype}")
        if x.device != q.device:
            raise value_error(f"{name}.device", x.device, f"must equal q.device {q.device}",
                              f"move {name} to {q.device}")


def check_mask(attn_mask, q) -> None:
    """An SDPA mask (bool or additive float) broadcastable to ``(B, H, N, N)`` on ``q``'s device, or None."""
    if attn_mask is None:
        return
    import torch

    if not isinstance(attn_mask, torch.Tensor):
        raise type_error("attn_mask", attn_mask, "a torch.Tensor or None", "pass a bool or float mask tensor")
    if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
        raise type_error("attn_mask.dtype", attn_mask.dtype, "bool (True = attend) or a float dtype (additive)",
                         "pass `mask.bool()` for a keep-mask, or `mask.to(q.dtype)` for an additive bias")
    B, H, N, _ = q.shape
    try:
        ok = torch.broadcast_shapes(attn_mask.shape, (B, H, N, N)) == (B, H, N, N)
    except RuntimeError:
        ok = False
    if not ok:
        raise value_error("attn_mask.shape", tuple(attn_mask.shape), f"must broadcast to (B, H, N, N) = {(B, H, N, N)}",
                          "reshape the mask, e.g. a key-padding mask to (B, 1, 1, N)")
    if attn_mask.device != q.device:
        raise value_error("attn_mask.device", attn_mask.device, f"must equal q.device {q.device}",
                          f"move attn_mask to {q.device}")
