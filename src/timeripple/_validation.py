"""Helpers that build user-facing errors: each names the argument, the value received, the rule and
the fix, so a message reads the same wherever it is raised."""

from __future__ import annotations


def _fmt(value) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def value_error(argument: str, value, rule: str, fix: str) -> ValueError:
    """Return a ``ValueError`` for ``argument=value`` that breaks ``rule``; ``fix`` says what to do."""
    return ValueError(f"`{argument}` = {_fmt(value)} is invalid: {rule}. Fix: {fix}")


def type_error(argument: str, value, expected: str, fix: str) -> TypeError:
    """Return a ``TypeError`` for an argument of the wrong type."""
    return TypeError(
        f"`{argument}` must be {expected}, got {type(value).__name__} ({_fmt(value)}). Fix: {fix}"
    )


class NumberKindError(TypeError, ValueError):
    """A number of the wrong kind (a float such as ``2.0`` where an int is required): both a ``TypeError``
    (its type) and a ``ValueError`` (its value), so callers that catch either see it."""


def number_kind_error(argument: str, value, expected: str, fix: str) -> NumberKindError:
    """Return a :class:`NumberKindError`, worded like :func:`type_error`."""
    return NumberKindError(
        f"`{argument}` must be {expected}, got {type(value).__name__} ({_fmt(value)}). Fix: {fix}"
    )
