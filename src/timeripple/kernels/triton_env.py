"""Whether Triton runs in its interpreter, asked without importing Triton (it is an optional dependency)."""

from __future__ import annotations

import os


def interpreting() -> bool:
    """True when Triton runs in its interpreter (``TRITON_INTERPRET=1``): kernels then take CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
