"""Reading config files: the YAML loader (a ``yaml.SafeLoader`` with YAML 1.2 floats that refuses duplicate
keys) and the file read with the usual messages for a missing path, a folder or bytes that are not UTF-8."""

from __future__ import annotations

import os
import re

import yaml

from ._validation import type_error, value_error

__all__ = ["ConfigLoader", "FrozenDict", "read_config_file"]


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no Python tags) that reads ``5e-2`` and ``1E3`` as floats, as YAML 1.2 does
    (YAML 1.1 wants a dot: ``5.0e-2``), and refuses a key that appears twice (PyYAML keeps the last)."""


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _mapping_without_duplicates(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice (the second would silently win)", key_node.start_mark
            )
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


ConfigLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    lambda loader, node: _mapping_without_duplicates(loader, node, deep=True),
)


def read_config_file(path) -> str:
    """The text of a config file, with the usual message for a path that is missing, a folder or not UTF-8."""
    if not isinstance(path, (str, os.PathLike)):
        raise type_error("path", path, "a path to a YAML file (str or os.PathLike)", "pass e.g. 'my_config.yaml'")
    text = os.fspath(path)
    if os.path.isdir(text):
        raise IsADirectoryError(f"`path` = {text!r} is invalid: it is a folder, not a config file. "
                                "Fix: pass the path of a .yaml file")
    try:
        with open(text, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"`path` = {text!r} is invalid: no such config file. Fix: check the path") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise value_error("path", text, f"is not UTF-8 text ({err.reason} at byte {err.start})",
                          "save the config as UTF-8 YAML (`TimeRippleConfig.to_yaml(path)` does)") from None


class FrozenDict(dict):
    """A dict that refuses changes: the per-axis scale of a frozen config stays what was validated."""

    def _refuse(self, *args, **kwargs):
        raise TypeError("TimeRippleConfig.axis_threshold_scale is read-only; use config.replace(axis_threshold_scale=...)")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self):  # pickle / deepcopy rebuild it from a plain dict
        return (FrozenDict, (dict(self),))
