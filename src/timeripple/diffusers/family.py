"""``FamilySpec``: how TimeRipple plugs into one model family (which layers, which grid, which processor).

The processor modules each define one (``FAMILY``); ``registry.py`` maps transformer classes to them.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Tuple, Union

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
        stock_processors (`tuple[type or str]`, *optional*): the processor classes (or class names, for
            models not importable here) a layer may carry when TimeRipple is applied; any other processor
            is refused, since TimeRipple would silently replace it. Empty = the stock class that
            ``processor_cls`` derives from.
    """

    name: str
    processor_cls: type
    select: SelectFn
    grid: GridFn
    attention_types: Tuple[type, ...]
    label: str
    stock_processors: Tuple[Union[type, str], ...] = ()

    def is_stock(self, processor) -> bool:
        """Whether ``processor`` is exactly one of the family's stock processor classes."""
        stock = self.stock_processors or tuple(
            base for base in self.processor_cls.__mro__[1:]
            if base is not object and not getattr(base, "_is_timeripple_processor", False)
        )
        cls = type(processor)
        if vars(cls).get("_timeripple_stock_stand_in", False) and any(issubclass(cls, s) for s in stock
                                                                        if isinstance(s, type)):
            return True  # the project's context-parallel version of the stock processor
        return any(cls is s if isinstance(s, type) else cls.__name__ == s for s in stock)

    def self_attention_layers(self, transformer: torch.nn.Module) -> Dict[str, torch.nn.Module]:
        """``{name: module}`` of the transformer's video self-attention layers of this family (what
        ``select`` accepts), whatever processor they carry now."""
        return {
            name: module for name, module in transformer.named_modules()
            if isinstance(module, self.attention_types) and hasattr(module, "processor") and self.select(name, module)
        }
