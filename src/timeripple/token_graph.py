"""Token mode replayed as a CUDA graph (``ripple_attention(..., cuda_graph=True)``, budget mode).

In budget mode (``budget`` or ``pair_savings``, ``budget_scope="head"``) every head keeps a known number
of queries and keys, so the whole token path (detection or fidelity scores, selection, layout, attention,
the interp epilogue, the device-side savings) has static shapes and no host synchronisation. It is then
captured once per distinct call signature (shapes, dtype, device, grid and every option, the budgets
included) and replayed: each call copies ``q``, ``k``, ``v`` into the graph's input buffers, replays, and
returns a copy of the output. This removes the ~90 kernel launches' CPU cost per call (Wan2.1 is
launch-bound: docs/kernels.md).

Capture keeps one graph per signature, at most ``MAX_GRAPHS`` (further signatures run eagerly, with one
warning: no eviction, so a long schedule never recaptures every step); the memory of their intermediates
is one shared pool. A per-step schedule of ``pair_savings`` values captures one graph per distinct value. Where a call cannot be captured (a CPU tensor, threshold mode, ``budget_scope="call"``,
an attention mask, ``return_stats=True``, or a capture error) it runs eagerly, with one warning per
reason; the result is the same either way. The graphs and their input buffers stay allocated until
:func:`clear_graphs` (about three inputs' bytes per shape plus the pool of the largest graph).
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

__all__ = ["MAX_GRAPHS", "graph_unsupported_reason", "run_graphed", "clear_graphs"]

MAX_GRAPHS = 8
_graphs: dict = {}
_failed: dict = {}
_buffers: dict = {}
_pool = None
_warned: set = set()


def warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        logger.warning("timeripple cuda_graph=True runs this call eagerly: %s", reason)


def graph_unsupported_reason(q: torch.Tensor, *, budget, budget_scope: str, attn_mask, return_stats) -> str | None:
    """Why this token-mode call cannot replay a CUDA graph (None when it can)."""
    if not q.is_cuda:
        return "q is not a CUDA tensor"
    if budget is None:
        return "threshold mode has data-dependent shapes (set budget or pair_savings)"
    if budget_scope != "head":
        return "budget_scope='call' gives per-head shapes"
    if attn_mask is not None:
        return "an attention mask is not captured"
    if return_stats is True:
        return "return_stats=True reads statistics on the host (use return_stats='device' or False)"
    return None


def clear_graphs() -> None:
    """Drop every captured graph and its buffers (frees their memory)."""
    global _pool
    _graphs.clear()
    _failed.clear()
    _buffers.clear()
    _pool = None


def _static_inputs(q, k, v):
    """Input buffers shared by every graph of these shapes (a replay reads them, then they are free)."""
    key = (tuple(q.shape), tuple(v.shape), q.dtype, q.device)
    if key not in _buffers:
        _buffers[key] = tuple(torch.empty(x.shape, dtype=x.dtype, device=x.device) for x in (q, k, v))
    return _buffers[key]


def _capture(fn, q, k, v):
    global _pool
    qs, ks, vs = _static_inputs(q, k, v)
    qs.copy_(q)
    ks.copy_(k)
    vs.copy_(v)
    side = torch.cuda.Stream(device=q.device)
    side.wait_stream(torch.cuda.current_stream(q.device))
    with torch.cuda.stream(side):  # warm-up: Triton compiles, cuDNN plans, lazy allocations
        fn(qs, ks, vs)
    torch.cuda.current_stream(q.device).wait_stream(side)
    if _pool is None:
        _pool = torch.cuda.graph_pool_handle()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=_pool):
        out = fn(qs, ks, vs)
    return graph, (qs, ks, vs), out


def run_graphed(fn, q, k, v, signature):
    """``fn(q, k, v)`` (a token-mode call returning a tensor or a tuple of tensors) through its CUDA graph;
    returns copies of the outputs, or None when capture failed (the caller runs eagerly)."""
    if torch.cuda.is_current_stream_capturing():  # inside the caller's own capture: nothing to add
        return fn(q, k, v)
    key = (signature, tuple(q.shape), tuple(v.shape), q.dtype, str(q.device))
    if key in _failed:
        warn_once(_failed[key])
        return None
    entry = _graphs.get(key)
    if entry is None and len(_graphs) >= MAX_GRAPHS:  # no eviction: a long schedule would recapture every step
        warn_once(f"{MAX_GRAPHS} graphs are captured already (token_graph.MAX_GRAPHS); further call signatures, "
                  "e.g. more distinct pair_savings values, run eagerly")
        return None
    if entry is None:
        try:
            entry = _capture(fn, q, k, v)
        except Exception as exc:  # an op that cannot be captured on this build: eager from now on
            try:
                torch.cuda.synchronize(q.device)
            except RuntimeError:  # the aborted capture's error, already reported below
                pass
            _failed[key] = f"capture failed ({exc!r:.200})"
            warn_once(_failed[key])
            return None
        _graphs[key] = entry
    else:
        for dst, src in zip(entry[1], (q, k, v)):
            dst.copy_(src)
    entry[0].replay()
    out = entry[2]
    return tuple(x.clone() for x in out) if isinstance(out, tuple) else out.clone()
