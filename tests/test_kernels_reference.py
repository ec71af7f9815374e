"""The plain-torch token attention reference against a float64 loop, and the public dispatcher."""

import logging
import math

import pytest
import torch

from timeripple import kernels
from timeripple.kernels import token_attention, token_attention_ref
from timeripple.kernels.token_attention_torch import random_token_plan


def loop_token_attention(q, k, v, q_src, k_src, scale=None, key_bias=None):
    """Token attention written as the contract reads, one (batch, head, query) at a time, in float64."""
    B, H, N, D = q.shape
    scale = 1 / math.sqrt(D) if scale is None else scale
    q, k, v = q.double(), k.double(), v.double()
    out = torch.zeros_like(q)
    for b in range(B):
        for h in range(H):
            qs, ks = q_src[b, h].tolist(), k_src[b, h].tolist()
            kept_k = [s for s in range(N) if ks[s] == s]
            logits_bias, vm = [], []
            for s in kept_k:
                group = [j for j in range(N) if ks[j] == s]
                vm.append(torch.stack([v[b, h, j] for j in group]).mean(0))
                extra = 0.0 if key_bias is None else float(key_bias[b, s])
                logits_bias.append(math.log(len(group)) + extra)
            vm = torch.stack(vm)
            bias = torch.tensor(logits_bias, dtype=torch.float64)
            for i in range(N):
                if qs[i] != i:
                    continue
                logits = torch.stack([q[b, h, i] @ k[b, h, s] for s in kept_k]) * scale + bias
                if torch.isinf(logits).all():
                    continue  # every key masked: zeros
                out[b, h, i] = torch.softmax(logits, 0) @ vm
            for i in range(N):
                out[b, h, i] = out[b, h, qs[i]]
    return out


@pytest.mark.parametrize("text_len,text_position", [(0, "after"), (3, "after"), (4, "before")])
@pytest.mark.parametrize("with_bias", [False, True])
def test_reference_matches_float64_loop(text_len, text_position, with_bias):
    B, H, N, D = 2, 3, 17, 8
    q, k, v = (torch.randn(B, H, N, D, dtype=torch.float64) for _ in range(3))
    keep = torch.tensor([[0.9, 0.2, 0.5], [0.05, 0.7, 1.0]])  # per-head lengths that differ a lot
    q_src, k_src = random_token_plan(B, H, N, keep, text_len=text_len, text_position=text_position)
    key_bias = None
    if with_bias:
        key_bias = torch.randn(B, N, dtype=torch.float64)
        key_bias[0, 1::3] = float("-inf")
    got = token_attention_ref(q, k, v, q_src, k_src, key_bias=key_bias)
    want = loop_token_attention(q, k, v, q_src, k_src, key_bias=key_bias)
    err = (got - want).abs()
    assert got.dtype == torch.float64
    assert err.max() < 1e-10, f"max err {err.max():.3e}, mean err {err.mean():.3e}"


def test_reference_nothing_reused_equals_sdpa():
    q, k, v = (torch.randn(1, 2, 11, 16) for _ in range(3))
    src = torch.arange(11, dtype=torch.int32).expand(1, 2, 11)
    got = token_attention_ref(q, k, v, src, src)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert (got - want).abs().max() < 1e-5


def test_reference_fully_masked_head_gives_zeros_and_bool_mask():
    B, H, N, D = 1, 2, 9, 8
    q, k, v = (torch.randn(B, H, N, D) for _ in range(3))
    q_src, k_src = random_token_plan(B, H, N, 0.5)
    keep = torch.zeros(B, 1, 1, N, dtype=torch.bool)  # SDPA key-mask shape, all masked
    out = token_attention_ref(q, k, v, q_src, k_src, key_bias=keep)
    assert torch.equal(out, torch.zeros_like(out))
    keep[..., ::2] = True
    as_bool = token_attention_ref(q, k, v, q_src, k_src, key_bias=keep)
    additive = torch.zeros(B, N).masked_fill(~keep.view(B, N), float("-inf"))
    as_float = token_attention_ref(q, k, v, q_src, k_src, key_bias=additive)
    assert torch.equal(as_bool, as_float)
    assert torch.isfinite(as_bool).all()


def test_reference_returns_input_dtype_and_rejects_bad_input():
    q, k, v = (torch.randn(1, 1, 5, 8, dtype=torch.bfloat16) for _ in range(3))
    src = torch.arange(5, dtype=torch.int32).expand(1, 1, 5)
    assert token_attention_ref(q, k, v, src, src).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="k.dtype"):
        token_attention_ref(q, k.float(), v, src, src)
    with pytest.raises(ValueError, match="q_src.shape"):
        token_attention_ref(q, k, v, src[..., :4], src)
    with pytest.raises(ValueError, match="key_bias.shape"):
        token_attention_ref(q, k, v, src, src, key_bias=torch.zeros(3, 5))


def test_dispatcher_on_cpu_uses_reference_without_warning(caplog):
    q, k, v = (torch.randn(1, 2, 13, 64) for _ in range(3))
    q_src, k_src = random_token_plan(1, 2, 13, 0.5)
    with caplog.at_level(logging.WARNING, logger="timeripple.kernels"):
        got = token_attention(q, k, v, q_src, k_src)
    assert not caplog.records  # CPU tensors: the reference is the intended path, not a fallback
    assert torch.equal(got, token_attention_ref(q, k, v, q_src, k_src))


def test_dispatcher_is_a_custom_op_that_compiles():
    q, k, v = (torch.randn(1, 2, 13, 64) for _ in range(3))
    q_src, k_src = random_token_plan(1, 2, 13, 0.5)
    assert hasattr(torch.ops.timeripple, "token_attention")
    torch.library.opcheck(torch.ops.timeripple.token_attention, (q, k, v, q_src, k_src, 0.125, None))
    fn = torch.compile(lambda *a: token_attention(*a) * 2, backend="eager", fullgraph=True)
    assert torch.allclose(fn(q, k, v, q_src, k_src), 2 * token_attention_ref(q, k, v, q_src, k_src))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_dispatcher_warns_once_per_reason_on_cuda_fallback(caplog):
    # head dim 100 is not a multiple of 8 (no compaction + SDPA) and not 64/128 (no varlen Triton kernel)
    q, k, v = (torch.randn(1, 2, 40, 100, device="cuda", dtype=torch.float16) for _ in range(3))
    q_src, k_src = random_token_plan(1, 2, 40, 0.5, device="cuda")
    kernels._warned.clear()
    with caplog.at_level(logging.WARNING, logger="timeripple.kernels"):
        out = token_attention(q, k, v, q_src, k_src)
        token_attention(q, k, v, q_src, k_src)
    assert len([r for r in caplog.records if "head dim 100" in r.getMessage()]) == 1
    assert torch.allclose(out.float(), token_attention_ref(q.float(), k.float(), v.float(), q_src, k_src),
                          atol=1e-2)
