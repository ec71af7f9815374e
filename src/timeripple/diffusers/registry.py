"""Model families TimeRipple knows, keyed by transformer class (the torchao way: a registry, not an
``isinstance`` chain).

A [`FamilySpec`] tells [`apply_timeripple`] four things about a transformer class: which attention
modules are self-attention over the video (only those are swapped), which processor class replaces
their processor, how to read the token grid ``(T, H, W)`` from the transformer's ``forward`` arguments,
and which bundled configs were tuned for it. The built-in families register themselves when
``timeripple.diffusers.processors`` is imported; a model that is not on PyPI (Open-Sora-Plan) or a
subclass with another name is added with [`register_model`].
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Dict, Optional, Tuple, Union

import torch

from .._validation import type_error, value_error

logger = logging.getLogger(__name__)

__all__ = ["FamilySpec", "register_family", "register_model", "get_family", "supported_models"]

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
        from .processors.base import TimeRippleAttnProcessor

        stock = self.stock_processors or tuple(
            base for base in self.processor_cls.__mro__[1:]
            if base is not object and not issubclass(base, TimeRippleAttnProcessor)
        )
        cls = type(processor)
        return any(cls is s if isinstance(s, type) else cls.__name__ == s for s in stock)


_REGISTRY: Dict[type, FamilySpec] = {}


def register_family(model_cls: type, spec: FamilySpec) -> None:
    """Register ``spec`` for transformers of class ``model_cls`` (and its subclasses)."""
    if not isinstance(model_cls, type):
        raise type_error("model_cls", model_cls, "a class", "pass the transformer class, not an instance")
    _REGISTRY[model_cls] = spec


def register_model(model_cls: type, family: str) -> None:
    r"""
    Make [`apply_timeripple`] accept transformers of ``model_cls`` as members of a known ``family``.

    Use it for models that are not importable from diffusers, such as Open-Sora-Plan v1.3's
    ``OpenSoraT2V_v1_3`` (its attention modules must follow the family's contract), or for your own
    subclass.

    Args:
        model_cls (`type`): the transformer class.
        family (`str`): a registered family name, see [`supported_models`].

    Example:

    ```py
    >>> from opensora.models.diffusion.opensora_v1_3.modeling_opensora import OpenSoraT2V_v1_3
    >>> from timeripple.diffusers import register_model
    >>> register_model(OpenSoraT2V_v1_3, "open_sora_plan")
    ```
    """
    _ensure_builtin()
    by_name = {spec.name: spec for spec in _REGISTRY.values()}
    if family not in by_name:
        raise value_error("family", family, f"not a registered family; known: {sorted(by_name)}",
                          "pass one of the known family names")
    register_family(model_cls, by_name[family])


def _ensure_builtin() -> None:
    from . import processors  # noqa: F401  (registers the built-in families on import)


def get_family(transformer: torch.nn.Module) -> Optional[FamilySpec]:
    """The spec registered for ``type(transformer)`` or its nearest registered base class, else `None`."""
    _ensure_builtin()
    for cls in type(transformer).__mro__:
        if cls in _REGISTRY:
            return _REGISTRY[cls]
    return None


def supported_models() -> Dict[str, str]:
    """``{transformer class name: family}`` for every registered class."""
    _ensure_builtin()
    return {cls.__name__: spec.name for cls, spec in _REGISTRY.items()}
