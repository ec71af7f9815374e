"""Shared pytest setup.

Triton kernels run under the Triton interpreter on machines without CUDA. The interpreter is chosen
when a kernel is decorated, so the variable is set here, before anything imports ``timeripple``.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
