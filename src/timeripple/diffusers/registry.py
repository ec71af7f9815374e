"""Model families TimeRipple knows, keyed by transformer class (the torchao way: a registry, not an
``isinstance`` chain).

A [`FamilySpec`] tells [`apply_timeripple`] four things about a transformer class: which attention
modules are self-attention over the video (only those are swapped), which processor class replaces
their processor, how to read the token grid ``(T, H, W)`` from the transformer's ``forward`` arguments,
and which bundled configs were tuned for it. Each processor module defines its family
(``FAMILY``); they are registered here on first use; a model that is not on PyPI (Open-Sora-Plan) or a
subclass with another name is added with [`register_model`].
"""

from __future__ import annotations

import logging
from typing import Dict, Optional

import torch

from .._validation import type_error, value_error
from .family import FamilySpec

logger = logging.getLogger(__name__)

__all__ = ["FamilySpec", "register_family", "register_model", "get_family", "supported_models"]

_REGISTRY: Dict[type, FamilySpec] = {}
_BUILTIN_DONE: list = []  # non-empty once the built-in families are registered


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
    """Register the built-in families (each processor module's ``FAMILY``) once; explicit registrations
    made before keep precedence."""
    if _BUILTIN_DONE:
        return
    from .processors import BUILTIN_FAMILIES

    for model_cls, spec in BUILTIN_FAMILIES:
        _REGISTRY.setdefault(model_cls, spec)
    _BUILTIN_DONE.append(True)


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
