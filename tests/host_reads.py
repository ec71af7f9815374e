"""Count the host reads of device values made by timeripple's own code (test helper).

On a GPU each read is a host synchronisation: the host waits until the GPU has run everything enqueued, and
the GPU then waits for the host's next launch. On a CPU nothing waits, but the same calls happen on the same
code path (under ``TRITON_INTERPRET=1``), so counting them here checks the count a GPU would see.

Counted: ``Tensor.tolist / item / cpu / numpy`` and ``bool / int / float / index`` of a tensor called from a
frame in ``src/timeripple``, a Python number written into a tensor by indexing (``t[i] = 0``: on CUDA a copy
from pageable host memory, which waits for the stream; round 6 found one in the class layout), and the
data-dependent ops (``nonzero``, ``masked_select``, ``unique*``,
``_local_scalar_dense``, ...) dispatched while such a frame is on the stack. Reads made by the Triton
interpreter itself (its frames call these on the kernels' arguments) are not counted, nor those of the
functions in ``HOST_SIDE``, which compute on CPU tensors built from values already on the host.
"""

from __future__ import annotations

import collections
import contextlib
import os
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import timeripple

_ROOT = os.path.dirname(os.path.abspath(timeripple.__file__))
_METHODS = ("tolist", "item", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")
_DATA_DEPENDENT = ("nonzero", "masked_select", "unique", "_local_scalar_dense", "repeat_interleave.Tensor",
                   "masked_scatter", "_assert_async")


HOST_SIDE = {"_host_values"}  # kernels/class_attention.py: a layout's read, recomputed from known host values


def _where(frame):
    return f"{os.path.relpath(frame.f_code.co_filename, _ROOT)}:{frame.f_lineno}"


def _ours(frame):
    return frame.f_code.co_filename.startswith(_ROOT) and frame.f_code.co_name not in HOST_SIDE


class _DataDependent(TorchDispatchMode):
    def __init__(self, reads):
        super().__init__()
        self.reads = reads

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if any(s in name for s in _DATA_DEPENDENT):
            f = sys._getframe(1)
            while f is not None and not _ours(f):
                f = f.f_back
            if f is not None:
                self.reads[f"{name} at {_where(f)}"] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def count_host_reads():
    """``with count_host_reads() as reads:`` -> ``reads``: a Counter of ``"what at file:line"``."""
    reads = collections.Counter()
    saved = {name: getattr(torch.Tensor, name) for name in _METHODS}

    def patch(name, orig):
        def read(self, *a, **kw):
            f = sys._getframe(1)
            if _ours(f):
                reads[f"{name} at {_where(f)}"] += 1
            return orig(self, *a, **kw)
        return read

    for name, orig in saved.items():
        setattr(torch.Tensor, name, patch(name, orig))
    setitem = torch.Tensor.__setitem__

    def write(self, index, value):
        f = sys._getframe(1)
        if _ours(f) and isinstance(value, (bool, int, float)):
            reads[f"__setitem__ of a host number at {_where(f)}"] += 1
        return setitem(self, index, value)

    torch.Tensor.__setitem__ = write
    saved["__setitem__"] = setitem
    try:
        with _DataDependent(reads):
            yield reads
    finally:
        for name, orig in saved.items():
            setattr(torch.Tensor, name, orig)
