"""``FamilySpec``: how TimeRipple plugs into one model family (which layers, which grid, which processor).

The processor modules each define one (``FAMILY``); ``registry.py`` maps transformer classes to them.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Tuple

import torch

# grid_fn(transformer, bound_forward_arguments) -> (T, H, W) token grid of the video
GridFn = Callable[[torch.nn.Module, Dict[str, object]], Tuple[int, int, int]]
# select_fn(module_name, attention_module) -> True when the module is video self-attention
SelectFn = Callable[[str, torch.nn.Module], bool]


@dataclasses.dataclass(frozen=True)
class FamilySpec:
    r"""
    How TimeRipple plugs into one model family.

    Args:
        name (`str`): the family, as in ``TimeRippleConfig.model_family`` (``"wan"``, ``"cogvideox"``, ...).
        processor_cls (`type`): the [`TimeRippleAttnProcessor`] subclass installed on selected modules.
        select (`Callable[[str, nn.Module], bool]`): whether the attention module ``name`` is video
            self-attention (everything else keeps its stock processor).
        grid (`Callable[[nn.Module, dict], tuple]`): the token grid ``(T, H, W)`` from the transformer and
            its bound ``forward`` arguments.
        attention_types (`tuple[type]`): classes of the attention modules to consider.
        label (`str`): human-readable name for messages, e.g. ``"Wan 2.1 / 2.2"``.
    """

    name: str
    processor_cls: type
    select: SelectFn
    grid: GridFn
    attention_types: Tuple[type, ...]
    label: str
