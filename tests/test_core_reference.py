"""The float64 loop reference itself, on cases small enough to check by hand, and against the
kernels' independent plain-torch token attention."""

import math

import torch

from timeripple.kernels.token_attention_torch import token_attention_ref
from timeripple.testing import reference_attention, reference_sources


def test_reference_sources_by_hand():
    # grid (2, 2, 1): tokens (t, y) = 0:(0,0) 1:(0,1) 2:(1,0) 3:(1,1), one channel.
    x = torch.tensor([0.0, 0.1, 0.05, 5.0]).view(1, 1, 4, 1)
    # t windows {0,2}: Δ = 0.025, {1,3}: Δ = 2.45; y windows {0,1}: Δ = 0.05, {2,3}: Δ = 2.475
    src = reference_sources(x, (2, 2, 1), {"t": 0.1, "y": 0.1, "x": 0.1})
    assert src.flatten().tolist() == [0, 0, 0, 3]  # 2 -> 0 via t; 1 -> 0 via y; 3 fails both
    src = reference_sources(x, (2, 2, 1), {"t": 3.0, "y": 3.0}, priority=("y", "t"))
    assert src.flatten().tolist() == [0, 0, 0, 0]  # 3 -> 2 via y, then 2 -> 0 via t (a 2-hop chain)
    src = reference_sources(x, (2, 2, 1), {"t": 0.03})
    assert src.flatten().tolist() == [0, 1, 0, 3]


def test_reference_channel_attention_by_hand():
    # Two tokens on grid (2, 1, 1), D = 2; channel 0 passes (Δ = 0.05), channel 1 does not (Δ = 1).
    q = torch.tensor([[1.0, 0.0], [1.1, 2.0]]).view(1, 1, 2, 2)
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 1, 2, 2)
    out, info = reference_attention(q, q, v, grid=(2, 1, 1), threshold=0.1, scale=1.0)
    qt = torch.tensor([[1.0, 0.0], [1.0, 2.0]], dtype=torch.float64)  # q[1, 0] takes q[0, 0]
    expected = torch.softmax(qt @ qt.T, dim=-1) @ v[0, 0].double()
    torch.testing.assert_close(out[0, 0], expected)
    # per channel: c0 has r = 1 on both sides -> 4 - 1 = 3 skipped of 4; c1 none -> 3 / 8
    assert info["qk_savings"].item() == 3 / 8


def test_reference_token_attention_agrees_with_kernel_reference():
    g = torch.Generator().manual_seed(0)
    T, Hg, Wg, text = 3, 3, 4, 3
    base = torch.randn(1, 2, 1, 1, 1, 8, generator=g)
    video = (base + 0.05 * torch.randn(1, 2, T, Hg, Wg, 8, generator=g)).reshape(1, 2, T * Hg * Wg, 8)
    q = torch.cat([video, torch.randn(1, 2, text, 8, generator=g)], dim=2)
    k = q + 0.01 * torch.randn(q.shape, generator=g)
    v = torch.randn(q.shape, generator=g)
    mask = torch.ones(1, 1, 1, q.shape[2], dtype=torch.bool)
    mask[..., -1] = False
    out, info = reference_attention(q, k, v, grid=(T, Hg, Wg), threshold=0.2, text_len=text, mode="token",
                                    attn_mask=mask)
    ar = torch.arange(q.shape[2])
    assert (info["q_src"] != ar).any() and (info["k_src"] != ar).any()
    kernel = token_attention_ref(q.double(), k.double(), v.double(), info["q_src"], info["k_src"],
                                 key_bias=mask[:, 0, 0])
    torch.testing.assert_close(out, kernel)
    kept = [(s == ar).sum(-1) for s in (info["q_src"], info["k_src"])]
    N = q.shape[2]
    torch.testing.assert_close(info["pair_savings"], (1 - kept[0] * kept[1] / N**2).double().mean(0))
    assert not math.isnan(out.sum().item())
