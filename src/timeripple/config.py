"""`TimeRippleConfig`: the validated, versioned configuration of TimeRipple, its commented YAML form,
and the bundled per-model configs (``hunyuan_video``, ``wan2.1``, ``wan2.2``, ``cogvideox``,
``open_sora_plan``).

YAML is only ever a saved config: it is read with ``yaml.safe_load`` (no Python tags), unknown keys and
wrong types are rejected with the key's name, and every field is written with a comment.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import textwrap
from importlib import resources
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import yaml

from . import schedule
from ._config_io import ConfigLoader, FrozenDict, read_config_file
from ._validation import type_error, value_error
from .options import (AXES, MODES, check_axes, check_choice, check_int, check_fidelity_options, check_mode_options,
                      check_real, check_token_plan_options, check_window)

logger = logging.getLogger(__name__)

__all__ = ["TimeRippleConfig", "load_config", "list_configs", "threshold_at"]

CONFIG_VERSION = 1
NEWLINE_END_OF_DOCUMENT = "\n...\n"  # what yaml.safe_dump puts after a plain scalar
# config fields passed to ripple_attention unchanged (besides the scheduled threshold)
_ATTENTION_FIELDS = ("mode", "window", "axes", "priority", "channel_alpha", "token_criterion", "token_fraction", "budget",
                     "token_keys", "key_budget", "key_repr", "query_repr", "key_score", "pair_savings", "key_share",
                     "budget_scope", "cuda_graph")

# options that only one mode reads (``with_mode`` resets the other mode's to their defaults)
_TOKEN_ONLY_FIELDS = ("token_criterion", "token_fraction", "budget", "token_keys", "key_budget", "key_repr",
                      "query_repr", "key_score", "pair_savings", "key_share", "budget_scope")
_CHANNEL_ONLY_FIELDS = ("channel_alpha",)

# field -> comment written above it in YAML (meaning and unit)
_FIELD_DOCS = {
    "version": "Config format version (integer). Only 1 exists.",
    "name": "Label of this config, e.g. the bundled name (string or null).",
    "model_family": "Model family the values were tuned for: wan, hunyuan_video, cogvideox, open_sora_plan, ltx, "
    "mochi (string or null; informational only).",
    "mode": "channel = the paper's channel-wise reuse (the quality reference; savings are counted); token = "
    "whole-token reuse that skips attention rows/columns (savings are measurable in time). The bundled configs use "
    "token mode with the fidelity plan; load_config(name, mode='channel') gives the paper's channel mode.",
    "threshold_start": "Threshold theta at ramp_start_step. A window of values is reused when their population std "
    "is below theta. Unit: raw values of the post-norm, post-RoPE q/k. Larger = more reuse, more error.",
    "threshold_end": "Threshold theta reached at ramp_end_step and held until the second-to-last step "
    "(same unit as threshold_start).",
    "ramp_start_step": "First step that reuses (0-indexed, counted at reference_num_steps steps); steps before it "
    "run dense attention.",
    "ramp_end_step": "Step (0-indexed, at reference_num_steps steps) where the linear ramp from threshold_start "
    "reaches threshold_end. Must be < reference_num_steps.",
    "reference_num_steps": "Step count that ramp_start_step/ramp_end_step refer to. For a run of n steps a position "
    "s becomes floor(s * n / reference_num_steps + 0.5) (proportional, rounded half up).",
    "fixed_threshold": "If set, this theta on every non-dense step instead of the ramp (the paper's Tbl. 3 'fixed' "
    "variant); dense steps are unchanged. Same unit as threshold_start; null = ramp.",
    "dense_last_step": "Run the last denoising step with dense attention (true/false).",
    "window": "Window size K: number of consecutive positions along an axis whose std is checked (integer >= 2; "
    "larger = fewer windows pass).",
    "axes": "Axes checked for reuse: t (frames), y (rows), x (columns) of the latent token grid.",
    "priority": "Order in which passing axes pick the source of a reused value (a permutation of t, y, x).",
    "axis_threshold_scale": "Per-axis multiplier on the scheduled theta, e.g. {t: 1.0, y: 0.5, x: 0.5}; axes not "
    "listed use 1.0; null = one shared theta (the paper's default).",
    "channel_alpha": "Per-channel adaptive threshold tau = channel_alpha * mean_c |Delta_c| (the paper's Tbl. 4; "
    "dimensionless, > 0); null = off.",
    "token_criterion": "Token mode only: strict = every channel below theta; fraction = at least token_fraction of "
    "the channels; rms = sqrt(mean_c Delta_c^2) below theta.",
    "token_fraction": "Token mode, criterion fraction: share of channels that must pass (0 < f <= 1).",
    "budget": "Token mode only: reuse this fraction of the eligible tokens per head and side, those with the "
    "smallest Delta (0 < b <= 1); null = the threshold alone decides.",
    "token_keys": "Token mode only: chain = keys merge like queries (any group a window allows); pairs = keys "
    "merge only in disjoint pairs (window 2), so attention needs no per-key bias (faster on a GPU).",
    "key_budget": "Token mode with budget only: the key side's budget (with token_keys pairs: the share of the "
    "possible pairs merged, 0..1); null = budget.",
    "key_repr": "Token mode only: the key standing for a merged group: source = its first token's k; mean = "
    "the group's mean k. The value is always the group's mean v.",
    "query_repr": "Token mode only: the output row of a reused query: copy = its source's row; mean = the row "
    "computed at its group's mean query; interp = interpolated between the rows of the window-first tokens "
    "around it on its axis (selected by the interpolation residual; needs budget or pair_savings).",
    "key_score": "Token mode with budget or pair_savings: how merged keys are picked: delta = token_criterion on "
    "k; kv = the merge-error score |dk|*(|dv| + |dk|*std(v)/2) against the window-first partner.",
    "pair_savings": "Token mode only: target share of skipped query-key pairs on the reusing steps, in [0, 1); "
    "both sides' budgets are computed for the grid on every call (the same value gives the same savings on "
    "every model); replaces budget / key_budget; null = off.",
    "key_share": "With pair_savings: the key side's share of the saving, kept_k/N = (1-pair_savings)^key_share, "
    "kept_q/N = (1-pair_savings)^(1-key_share) (0..1; keys are cheaper to merge than queries to reuse); auto = the "
    "split measured best for the target (keys only up to 50%, 0.7 at 75%, 0.6 at 87.5%).",
    "budget_scope": "Token mode with budget or pair_savings: head = the same budget in every head (static "
    "shapes, fastest); call = pooled over the heads of a call (more alike heads reuse more; token_keys chain).",
    "cuda_graph": "Token mode in budget mode on CUDA: true = replay the whole token path as a CUDA graph "
    "(captured once per call signature; the same result, no per-kernel launch cost); other calls run eagerly.",
}


@dataclasses.dataclass(frozen=True)
class TimeRippleConfig:
    r"""
    Configuration of TimeRipple attention reuse: which threshold to use at which denoising step, and how
    reuse is detected and applied. Instances are immutable and validated on construction; derive
    variants with [`~TimeRippleConfig.replace`]. The defaults are the paper's HunyuanVideo row of Tbl. 1.

    Args:
        version (`int`, defaults to 1): config format version; only 1 exists.
        name (`str`, *optional*): a label, e.g. the bundled config's name.
        model_family (`str`, *optional*): family the values were tuned for (``"wan"``,
            ``"hunyuan_video"``, ``"cogvideox"``, ``"open_sora_plan"``, ``"ltx"``, ``"mochi"``).
        mode (`str`, defaults to ``"channel"``): ``"channel"`` (paper-faithful, savings counted) or
            ``"token"`` (whole tokens reused; rows and columns of attention skipped, measurably faster).
        threshold_start (`float`, defaults to 0.2): θ at ``ramp_start_step`` (``>= 0``). Unit: raw values of
            the post-norm, post-RoPE q/k. Higher θ reuses more and costs more quality.
        threshold_end (`float`, defaults to 0.5): θ at ``ramp_end_step``, held until the second-to-last step.
        ramp_start_step (`int`, defaults to 10): first reusing step (0-indexed, at ``reference_num_steps``);
            earlier steps are dense. Higher = more dense steps, less saving.
        ramp_end_step (`int`, defaults to 20): step where the linear ramp reaches ``threshold_end``
            (``ramp_start_step <= ramp_end_step < reference_num_steps``).
        reference_num_steps (`int`, defaults to 50): the step count the two positions refer to; other
            counts scale them by ``floor(s * n / reference_num_steps + 0.5)``.
        fixed_threshold (`float`, *optional*): one θ on every non-dense step instead of the ramp (Tbl. 3).
        dense_last_step (`bool`, defaults to `True`): run the last step dense.
        window (`int`, defaults to 2): window size K (``>= 2``). Larger windows pass less often.
        axes (`tuple[str]`, defaults to ``("t", "y", "x")``): axes checked, a non-empty subset of t/y/x.
        priority (`tuple[str]`, defaults to ``("t", "y", "x")``): order in which passing axes pick the source.
        axis_threshold_scale (`dict[str, float]`, *optional*): per-axis multiplier (``> 0``) on θ; axes of
            ``axes`` not listed use 1.0. `None` = one shared θ.
        channel_alpha (`float`, *optional*): per-channel adaptive threshold ``τ = α·mean_c|Δ_c|`` (``> 0``).
        token_criterion (`str`, defaults to ``"strict"``): token mode: ``"strict"``, ``"fraction"``, ``"rms"``.
        token_fraction (`float`, defaults to 0.9): share of channels that must pass for ``"fraction"``.
        budget (`float`, *optional*): token mode only: fraction (``0 < b <= 1``) of eligible tokens reused.
        token_keys (`str`, defaults to ``"chain"``): token mode: ``"chain"`` or ``"pairs"`` (keys merge in
            disjoint pairs only; window 2; bias-free attention).
        key_budget (`float`, *optional*): token mode with ``budget``: the key side's budget (``0..1``).
        key_repr (`str`, defaults to ``"source"``): token mode: merged key = source ``k`` or group ``"mean"``.
        query_repr (`str`, defaults to ``"copy"``): token mode: a reused query's row is copied (``"copy"``),
            computed at the group's mean query (``"mean"``) or interpolated (``"interp"``).
        key_score (`str`, defaults to ``"delta"``): token mode: keys picked by ``token_criterion`` on k or by
            the merge-error score ``"kv"``.
        pair_savings (`float`, *optional*): token mode: target share of skipped pairs, budgets per call
            from the grid (scale-free); replaces ``budget`` / ``key_budget``.
        key_share (`float` or ``"auto"``, defaults to 0.7): the key side's share of ``pair_savings``;
            ``"auto"`` (the bundled configs) takes the split measured best for the target
            (``token_fidelity.auto_key_share``: keys only up to 50%).
        budget_scope (`str`, defaults to ``"head"``): token mode: the budget per head (static shapes) or
            pooled over the heads of a call (``"call"``).
        cuda_graph (`bool`, defaults to `False`): token mode in budget mode on CUDA: replay the token path
            as a CUDA graph (``timeripple.token_graph``).

    Example:

    ```py
    >>> import timeripple
    >>> cfg = timeripple.load_config("wan2.1")
    >>> cfg.threshold_at(48, 50), cfg.threshold_at(49, 50)
    (0.6, None)
    >>> token_cfg = cfg.replace(mode="token", budget=0.5)
    ```
    """

    version: int = CONFIG_VERSION
    name: Optional[str] = None
    model_family: Optional[str] = None
    mode: str = "channel"
    threshold_start: float = 0.2
    threshold_end: float = 0.5
    ramp_start_step: int = 10
    ramp_end_step: int = 20
    reference_num_steps: int = 50
    fixed_threshold: Optional[float] = None
    dense_last_step: bool = True
    window: int = 2
    axes: Tuple[str, ...] = AXES
    priority: Tuple[str, ...] = AXES
    axis_threshold_scale: Optional[Dict[str, float]] = None
    channel_alpha: Optional[float] = None
    token_criterion: str = "strict"
    token_fraction: float = 0.9
    budget: Optional[float] = None
    token_keys: str = "chain"
    key_budget: Optional[float] = None
    key_repr: str = "source"
    query_repr: str = "copy"
    key_score: str = "delta"
    pair_savings: Optional[float] = None
    key_share: float = 0.7
    budget_scope: str = "head"
    cuda_graph: bool = False

    def __post_init__(self):
        def put(field, value):  # frozen: normalised values are stored with object.__setattr__
            object.__setattr__(self, field, value)

        version = check_int("version", self.version, 1)
        if version != CONFIG_VERSION:
            raise value_error("version", version, f"only version {CONFIG_VERSION} exists", f"set `version: {CONFIG_VERSION}`")
        put("version", version)
        for field in ("name", "model_family"):
            value = getattr(self, field)
            if value is not None and not isinstance(value, str):
                raise type_error(field, value, "a string or None", f"write `{field}` as text, e.g. 'wan2.1'")
        check_mode_options(self.mode, channel_alpha=self.channel_alpha, token_criterion=self.token_criterion,
                           token_fraction=self.token_fraction, budget=self.budget)
        for field in ("threshold_start", "threshold_end", "fixed_threshold"):
            put(field, check_real(field, getattr(self, field), allow_none=field == "fixed_threshold", low=0))
        put("reference_num_steps", check_int("reference_num_steps", self.reference_num_steps, 1))
        start = check_int("ramp_start_step", self.ramp_start_step, 0)
        end = check_int("ramp_end_step", self.ramp_end_step, 0)
        if start > end:
            raise value_error(
                "ramp_start_step", start, f"must be <= ramp_end_step = {end}",
                "swap them or lower `ramp_start_step` (equal values give a step jump)",
            )
        if end >= self.reference_num_steps:
            raise value_error(
                "ramp_end_step", end, f"must be < reference_num_steps = {self.reference_num_steps}",
                "steps are 0-indexed: the last step is reference_num_steps - 1",
            )
        put("ramp_start_step", start)
        put("ramp_end_step", end)
        if not isinstance(self.dense_last_step, bool):
            raise type_error("dense_last_step", self.dense_last_step, "a bool", "write true or false")
        put("window", check_window(self.window))
        put("axes", check_axes("axes", self.axes, permutation=False))
        put("priority", check_axes("priority", self.priority, permutation=True))
        put("axis_threshold_scale", self._checked_scale())
        for field in ("channel_alpha", "budget"):  # checked above, with the mode they depend on
            put(field, None if getattr(self, field) is None else float(getattr(self, field)))
        put("token_fraction", float(self.token_fraction))
        put("token_keys", self.token_keys)
        put("key_repr", self.key_repr)
        put("key_budget", check_token_plan_options(self.mode, token_keys=self.token_keys, key_budget=self.key_budget,
                                                   key_repr=self.key_repr, budget=self.budget, window=self.window))
        pair_savings, key_share = check_fidelity_options(
            self.mode, query_repr=self.query_repr, key_score=self.key_score, pair_savings=self.pair_savings,
            key_share=self.key_share, budget_scope=self.budget_scope, budget=self.budget, key_budget=self.key_budget,
            token_keys=self.token_keys)
        put("pair_savings", pair_savings)
        put("key_share", key_share)
        if not isinstance(self.cuda_graph, bool):
            raise type_error("cuda_graph", self.cuda_graph, "a bool", "write true or false")
        if self.cuda_graph and self.mode != "token":
            raise value_error("cuda_graph", self.cuda_graph, "applies to mode='token' only",
                              "set mode: token, or cuda_graph: false")

    def _checked_scale(self) -> Optional[Dict[str, float]]:
        scale = self.axis_threshold_scale
        if scale is None:
            return None
        if not isinstance(scale, Mapping):
            raise type_error("axis_threshold_scale", scale, "a dict {axis: float} or None", "e.g. {t: 1.0, y: 0.5}")
        for axis in scale:
            if axis not in self.axes:
                rule = f"key {axis!r} is not a checked axis {self.axes}"
                raise value_error("axis_threshold_scale", dict(scale), rule, "use only axes listed in `axes`")
        # a new dict in t, y, x order: the caller's dict is never kept, and equal configs have equal reprs
        return FrozenDict(
            (a, check_real(f"axis_threshold_scale[{a!r}]", scale[a], low=0, strict=True)) for a in AXES if a in scale
        )

    def __hash__(self):  # the per-axis scale is stored in t, y, x order, so equal configs have equal reprs
        return hash(repr(self))

    # -- dict / YAML ---------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TimeRippleConfig":
        r"""
        Build a config from a mapping such as a loaded YAML document. Missing keys take their defaults.

        Raises:
            `ValueError`: for an unknown key (the message lists the valid keys and a close match) or a
                value that breaks a rule. `TypeError`: for a non-mapping or a value of the wrong type.
        """
        if not isinstance(data, Mapping):
            raise type_error("config", data, "a mapping of field names to values", "pass a dict / a YAML mapping")
        cls._check_keys(data)
        return cls(**dict(data))

    @classmethod
    def _check_keys(cls, keys) -> None:
        valid = [f.name for f in dataclasses.fields(cls)]
        for key in keys:
            if key not in valid:
                close = difflib.get_close_matches(str(key), valid, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise value_error(
                    "config key", key, f"unknown key; valid keys are {valid}", f"{hint}remove or rename the key"
                )

    def to_dict(self) -> Dict[str, Any]:
        """Plain-Python form (lists for sequences, a new dict for the per-axis scale), for YAML or JSON."""
        out = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        return {key: list(v) if isinstance(v, tuple) else dict(v) if isinstance(v, dict) else v for key, v in out.items()}

    @classmethod
    def from_yaml(cls, path: Union[str, os.PathLike]) -> "TimeRippleConfig":
        r"""
        Load a config from a YAML file with ``yaml.safe_load`` (Python tags such as ``!!python/object``
        are rejected with a `ValueError`).

        Args:
            path (`str` or `os.PathLike`): the file.
        """
        return cls._from_yaml_text(read_config_file(path), source=os.fspath(path))

    @classmethod
    def _from_yaml_text(cls, text: str, source: str) -> "TimeRippleConfig":
        try:
            data = yaml.load(text, Loader=ConfigLoader)  # a SafeLoader: no Python tags
        except ValueError as err:  # e.g. an int of thousands of digits (Python's int() limit)
            raise value_error("yaml", source, f"holds a value that cannot be read: {err}",
                              "write plain numbers such as 0.4 or 20") from err
        except yaml.YAMLError as err:
            raise value_error(
                "yaml", source, f"is not a plain YAML config (read with yaml.safe_load; Python tags are refused): {err}",
                "write only plain keys and values",
            ) from err
        if not isinstance(data, Mapping):
            raise type_error("yaml", data, f"a mapping of field names to values in {source}", "write `key: value` lines")
        return cls.from_dict(data)

    def to_yaml(self, path: Union[str, os.PathLike, None] = None, *, header: Optional[str] = None) -> str:
        r"""
        The config as YAML with a comment (meaning and unit) above every field. Loads back to an equal
        config with [`~TimeRippleConfig.from_yaml`].

        Args:
            path (`str` or `os.PathLike`, *optional*): if given, the text is also written to this file.
            header (`str`, *optional*): comment lines put at the top (each line gets a ``# ``).

        Returns:
            `str`: the YAML text.
        """
        lines = [f"# {line}".rstrip() for line in header.strip().splitlines()] + [""] if header else []
        for key, value in self.to_dict().items():
            lines += [f"# {line}" for line in textwrap.wrap(_FIELD_DOCS[key], width=98)]
            dumped = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000)
            lines.append(f"{key}: {dumped.replace(NEWLINE_END_OF_DOCUMENT, '').strip()}")
        text = "\n".join(lines) + "\n"
        if path is not None:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text)
        return text

    def replace(self, **changes) -> "TimeRippleConfig":
        """A copy with ``changes`` applied, validated like a new config (unknown fields raise `ValueError`).

        Alternatives replace each other: a new ``mode`` starts from [`with_mode`] (the other mode's options at
        their defaults), ``budget`` / ``key_budget`` clear ``pair_savings`` and ``pair_savings`` clears them,
        unless the same call sets both (which the validation refuses)."""
        self._check_keys(changes)  # unknown names get a suggestion; __post_init__ checks the values
        base = self
        if "mode" in changes and changes["mode"] != self.mode and changes["mode"] in MODES:
            base = self.with_mode(changes["mode"])
        if "pair_savings" not in changes and ("budget" in changes or "key_budget" in changes):
            changes = {"pair_savings": None, **changes}
        elif changes.get("pair_savings") is not None and "budget" not in changes and "key_budget" not in changes:
            changes = {"budget": None, "key_budget": None, **changes}
        return dataclasses.replace(base, **changes)

    def with_mode(self, mode: str) -> "TimeRippleConfig":
        r"""
        A copy in ``mode`` with the other mode's options back at their defaults, so that the schedule, the
        window and the axes carry over unchanged.

        ``replace(mode="channel")`` on a token config with a pair-savings target refuses the token-only
        options; ``with_mode("channel")`` drops them (``budget``, ``key_budget``, ``pair_savings``,
        ``key_share``, ``budget_scope``, ``token_keys``, ``key_repr``, ``query_repr``, ``key_score``,
        ``token_criterion``, ``token_fraction``), and ``with_mode("token")`` drops ``channel_alpha``.

        Example:

        ```py
        >>> import timeripple
        >>> fast = timeripple.load_config("wan2.1")  # token mode, the fidelity plan
        >>> paper = fast.with_mode("channel")  # the paper's channel mode, same schedule
        >>> paper.mode, paper.pair_savings, paper.threshold_end == fast.threshold_end
        ('channel', None, True)
        ```
        """
        check_choice("mode", mode, MODES, fix="pass mode='token' or mode='channel'")
        if mode == self.mode:
            return self
        other = _TOKEN_ONLY_FIELDS if mode == "channel" else _CHANNEL_ONLY_FIELDS
        defaults = {f.name: f.default for f in dataclasses.fields(type(self)) if f.name in other}
        return dataclasses.replace(self, mode=mode, **defaults)

    # -- schedule ------------------------------------------------------------------------------------

    def threshold_at(self, step: int, num_steps: int) -> Optional[float]:
        """θ for 0-indexed ``step`` of ``num_steps``, or `None` on a dense step. See [`~schedule.scheduled_threshold`]."""
        return schedule.scheduled_threshold(self, step, num_steps)

    def attention_kwargs(self, step: int, num_steps: int) -> Optional[Dict[str, Any]]:
        r"""
        Keyword arguments for [`ripple_attention`] at ``step`` of ``num_steps``, or `None` on a dense step.

        ``threshold`` is the scheduled float, or ``{axis: θ * scale}`` over ``axes`` when
        ``axis_threshold_scale`` is set (axes not in the scale use 1.0).

        Example:

        ```py
        >>> import timeripple
        >>> kwargs = timeripple.load_config("hunyuan_video").attention_kwargs(15, 50)
        >>> kwargs["threshold"], kwargs["mode"], kwargs["window"]
        (0.35, 'channel', 2)
        ```
        """
        theta = self.threshold_at(step, num_steps)
        if theta is None:
            return None
        if self.axis_threshold_scale is not None:
            theta = {axis: theta * self.axis_threshold_scale.get(axis, 1.0) for axis in self.axes}
        return {"threshold": theta, **{name: getattr(self, name) for name in _ATTENTION_FIELDS}}


# -- bundled configs ---------------------------------------------------------------------------------


def _bundled_dir():
    return resources.files("timeripple").joinpath("configs")


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def list_configs() -> list:
    """Names of the bundled configs, sorted, e.g. ``['cogvideox', 'hunyuan_video', ...]``."""
    return sorted(entry.name[: -len(".yaml")] for entry in _bundled_dir().iterdir() if entry.name.endswith(".yaml"))


def load_config(name_or_path: Union[str, os.PathLike, TimeRippleConfig], *, mode: Optional[str] = None) -> TimeRippleConfig:
    r"""
    Load a bundled config by name or a config from a YAML file.

    Args:
        name_or_path (`str`, `os.PathLike` or [`TimeRippleConfig`]): a bundled name (see
            [`list_configs`]; case-insensitive, ``-`` and ``_`` interchangeable), a path to a ``.yaml`` /
            ``.yml`` file, or a config (returned unchanged).
        mode (`str`, *optional*): ``"channel"`` or ``"token"``: the config switched to that mode with
            [`TimeRippleConfig.with_mode`] (the other mode's options reset, the schedule kept). The bundled
            configs are token mode with the fidelity plan (measurably faster on a GPU);
            ``load_config(name, mode="channel")`` is the paper's channel mode on the same schedule.

    Returns:
        [`TimeRippleConfig`]: the validated config.

    Example:

    ```py
    >>> import timeripple
    >>> timeripple.load_config("Hunyuan-Video").name
    'hunyuan_video'
    ```
    """
    if mode is not None:
        check_choice("mode", mode, MODES, fix="pass mode='token', mode='channel' or leave it None")
        return load_config(name_or_path).with_mode(mode)
    if isinstance(name_or_path, TimeRippleConfig):
        return name_or_path
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise type_error(
            "name_or_path", name_or_path, "a bundled config name or a path to a YAML file",
            f"pass one of {list_configs()} or 'path/to/config.yaml'",
        )
    text = os.fspath(name_or_path)
    names = {_normalise(name): name for name in list_configs()}
    key = _normalise(text)
    looks_like_path = isinstance(name_or_path, os.PathLike) or text.endswith((".yaml", ".yml")) or os.sep in text
    if not looks_like_path and key in names:  # a bundled name wins over a file of that name in the cwd
        if os.path.isfile(text):
            logger.warning("load_config(%r) loads the bundled config; for the file of that name in the working "
                           "directory pass './%s' or a pathlib.Path", text, text)
    elif looks_like_path or os.path.isfile(text):
        return TimeRippleConfig.from_yaml(text)
    else:
        close = difflib.get_close_matches(key, list(names), n=1)
        hint = f"did you mean {names[close[0]]!r}? " if close else ""
        raise value_error(
            "name_or_path", text, f"not a bundled config; bundled configs are {list_configs()}",
            f"{hint}pass a bundled name or a path to a .yaml file",
        )
    entry = _bundled_dir().joinpath(f"{names[key]}.yaml")
    logger.debug("loading bundled config %s", names[key])
    return TimeRippleConfig._from_yaml_text(entry.read_text(encoding="utf-8"), source=f"bundled:{names[key]}")


def threshold_at(config: Union[TimeRippleConfig, str], step: int, num_steps: int) -> Optional[float]:
    r"""
    The reuse threshold θ for 0-indexed ``step`` of ``num_steps``, or ``None`` for a dense step; see
    [`~schedule.scheduled_threshold`] for the rules.

    Args:
        config ([`TimeRippleConfig`] or `str`): the configuration, or the name of a bundled one.
        step (`int`), num_steps (`int`): the 0-indexed step and the number of steps of the run.

    Example:

    ```py
    >>> import timeripple
    >>> [timeripple.threshold_at("hunyuan_video", i, 50) for i in (9, 10, 15, 20, 48, 49)]
    [None, 0.2, 0.35, 0.5, 0.5, None]
    ```
    """
    if isinstance(config, str):
        config = load_config(config)
    elif not isinstance(config, TimeRippleConfig):
        raise type_error(
            "config", config, "a TimeRippleConfig or a bundled config name",
            "pass timeripple.load_config('wan2.1') or a TimeRippleConfig(...)",
        )
    return schedule.scheduled_threshold(config, step, num_steps)
