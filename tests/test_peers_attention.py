"""The peer attention functions on tensors: SVG-style masks, MInference-style patterns, TimeRipple + SVG."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import timeripple
from timeripple.peers import masks, minference_attention, ripple_svg_attention, svg_attention
from timeripple.peers.svg import svg_plan

GRID = (4, 4, 4)  # 64 video tokens


def _heads_with_structure(text_len=0, seed=0):
    """(1, 2, N, 16): head 0 attends within frames (frame codes), head 1 along positions (position codes)."""
    g = torch.Generator().manual_seed(seed)
    T, Hg, Wg = GRID
    s = Hg * Wg
    frame_codes = torch.randn(T, 16, generator=g) * 3
    pos_codes = torch.randn(s, 16, generator=g) * 3
    spatial = frame_codes.repeat_interleave(s, 0)  # (64, 16): same vector within a frame
    temporal = pos_codes.repeat(T, 1)  # same vector at the same position
    video = torch.stack([spatial, temporal])[None] + 0.1 * torch.randn(1, 2, T * s, 16, generator=g)
    text = torch.randn(1, 2, text_len, 16, generator=g)
    q = torch.cat([video, text], 2)
    v = torch.randn(q.shape, generator=g)
    return q, q.clone(), v


def test_mask_sizes_reach_the_density_and_keep_the_right_pairs():
    frame, pos = masks.video_index(GRID)
    for density in (0.05, 0.3, 0.5, 0.9):
        r, e, achieved = masks.spatial_params(GRID, density)
        m = masks.spatial_mask(GRID, r, e, n=64)
        assert m.double().mean().item() == pytest.approx(achieved) and achieved >= density
        assert m[frame[:, None] == frame[None, :]].all()  # the own frame is always kept
        e_t, achieved_t = masks.temporal_params(GRID, density)
        mt = masks.temporal_mask(GRID, e_t, n=64)
        assert mt.double().mean().item() == pytest.approx(achieved_t) and achieved_t >= density
        assert mt[pos[:, None] == pos[None, :]].all()  # the own position in every frame
    joint = masks.spatial_mask(GRID, 0, -1, n=70, text_len=6, text_position="before")
    assert joint[:6].all() and joint[:, :6].all() and not joint[6:, 6:].all()


def test_svg_chooses_spatial_and_temporal_heads_and_counts_pairs():
    q, k, v = _heads_with_structure()
    plan = svg_plan(q, k, v, grid=GRID, sparsity=0.7, text_len=0, text_position="after", attn_mask=None,
                    num_sampled=8, scale=0.25)
    assert plan.choice.tolist() == [[False, True]]
    out, stats = svg_attention(q, k, v, grid=GRID, sparsity=0.7, num_sampled=8, return_stats=True)
    kept = torch.tensor([plan.m_s.sum(), plan.m_t.sum()], dtype=torch.float64)
    assert torch.allclose(stats.qk_savings, 1 - (kept + 8 * 64) / 64**2)
    assert stats.details["temporal_heads"] == 0.5
    # the chosen masks keep the heavy pairs: close to dense attention
    dense = F.scaled_dot_product_attention(q, k, v)
    assert (out - dense).pow(2).mean() < 0.05 * dense.pow(2).mean()


def test_svg_without_sparsity_is_dense_and_text_is_never_masked():
    q, k, v = _heads_with_structure(text_len=5)
    out = svg_attention(q, k, v, grid=GRID, sparsity=0.0, text_len=5, num_sampled=4)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
    out = svg_attention(q, k, v, grid=GRID, sparsity=0.9, text_len=5, num_sampled=4)
    # text queries see every key: their rows equal dense attention
    torch.testing.assert_close(out[:, :, 64:], F.scaled_dot_product_attention(q, k, v)[:, :, 64:])


@pytest.mark.parametrize("text", [(0, "after"), (5, "after"), (5, "before")])
def test_svg_flex_block_masks_match_masked_sdpa(text):
    text_len, position = text
    q, k, v = _heads_with_structure(text_len=text_len)
    if position == "before":
        q, k, v = (torch.cat([x[:, :, 64:], x[:, :, :64]], 2) for x in (q, k, v))
    kw = dict(grid=GRID, sparsity=0.6, text_len=text_len, text_position=position, num_sampled=8, return_stats=True)
    ref, s_ref = svg_attention(q, k, v, backend="sdpa", **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager FlexAttention on the CPU warns that it is unfused
        out, s_flex = svg_attention(q, k, v, backend="flex", **kw)
    assert s_flex.details["backend"] == "flex" and s_ref.details["backend"] == "sdpa"
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(s_flex.qk_savings, s_ref.qk_savings)
    if text_len:  # a key-padding mask (HunyuanVideo's padded text): flex folds it into the mask_mod
        keep = torch.ones(1, 1, 1, q.shape[2], dtype=torch.bool)
        keep[..., (64 + 3) if position == "after" else 3 : (64 + 5) if position == "after" else 5] = False
        ref = svg_attention(q, k, v, backend="sdpa", attn_mask=keep, **kw)[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = svg_attention(q, k, v, backend="flex", attn_mask=keep, **kw)[0]
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_svg_bad_input_names_the_argument():
    q, k, v = _heads_with_structure()
    with pytest.raises(ValueError, match="sparsity"):
        svg_attention(q, k, v, grid=GRID, sparsity=1.0)
    with pytest.raises(ValueError, match="backend"):
        svg_attention(q, k, v, grid=GRID, sparsity=0.5, backend="triton")
    with pytest.raises(ValueError, match="grid"):
        svg_attention(q, k, v, grid=(4, 4, 3), sparsity=0.5)


@pytest.mark.parametrize("pattern", ["a_shape", "vertical_slash", "block_sparse", "auto"])
def test_minference_patterns_keep_the_density_and_text(pattern):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 256 + 4, 16, generator=g) for _ in range(3))
    out, stats = minference_attention(q, k, v, grid=(4, 8, 8), density=0.4, pattern=pattern, text_len=4,
                                      num_sampled=16, return_stats=True)
    assert out.shape == q.shape
    assert 0.0 < stats.qk_savings_mean < 0.6  # at most 1 - density of the video pairs, minus the estimate
    assert sum(stats.details["patterns"].values()) == 2
    dense = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out[:, :, 256:], dense[:, :, 256:])  # text rows are dense
    full = minference_attention(q, k, v, grid=(4, 8, 8), density=1.0, pattern=pattern, text_len=4, num_sampled=16)
    torch.testing.assert_close(full, dense)


def test_minference_auto_runs_the_pattern_with_the_smallest_sampled_error():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 1, 256, 16, generator=g) for _ in range(3))
    k[:, :, 200] *= 8  # one heavy key column far from the sinks and the diagonal: vertical-slash fits
    q = q + k[:, :, 200:201]
    kw = dict(grid=(4, 8, 8), density=0.3, num_sampled=32)
    out, stats = minference_attention(q, k, v, pattern="auto", return_stats=True, **kw)
    (chosen,) = [name for name, count in stats.details["patterns"].items() if count]
    torch.testing.assert_close(out, minference_attention(q, k, v, pattern=chosen, **kw))
    rows = torch.linspace(0, 255, 32).round().long()
    exact = F.scaled_dot_product_attention(q, k, v)[:, :, rows]
    errors = {name: (minference_attention(q, k, v, pattern=name, **kw)[:, :, rows] - exact).pow(2).mean().item()
              for name in ("a_shape", "vertical_slash", "block_sparse")}
    assert errors[chosen] == pytest.approx(min(errors.values()), rel=1e-4)
    assert chosen == "vertical_slash"
    with pytest.raises(ValueError, match="pattern"):
        minference_attention(q, k, v, grid=(4, 8, 8), density=0.3, pattern="diagonal")
    with pytest.raises(ValueError, match="density"):
        minference_attention(q, k, v, grid=(4, 8, 8), density=0.0)


def test_ripple_svg_composes_the_two_counts():
    t = torch.linspace(0, 1, 4).view(4, 1, 1, 1)
    g = torch.Generator().manual_seed(2)
    q = (t + 0.05 * torch.randn(4, 4, 4, 16, generator=g)).reshape(1, 1, 64, 16).repeat(1, 2, 1, 1)
    k = q + 0.01 * torch.randn(q.shape, generator=g)
    v = torch.randn(q.shape, generator=g)
    kw = dict(grid=GRID, sparsity=0.5, num_sampled=4, return_stats=True)
    plain, s_plain = ripple_svg_attention(q, k, v, threshold=0.0, **kw)
    svg, s_svg = svg_attention(q, k, v, **kw)
    assert torch.equal(plain, svg) and torch.equal(s_plain.qk_savings, s_svg.qk_savings)
    _, s_both = ripple_svg_attention(q, k, v, threshold=0.03, **kw)
    _, s_tr = timeripple.ripple_attention(q, k, v, grid=GRID, threshold=0.03, return_stats=True)
    assert s_both.details["tr_only"] == pytest.approx(s_tr.qk_savings_mean)
    assert s_both.qk_savings_mean > max(s_tr.qk_savings_mean, s_svg.qk_savings_mean)
    # the count, recomputed element by element: (i, j, c) runs iff (i, j) is in the head's mask and
    # neither q[i, c] nor k[j, c] is reused; plus 4 sampled rows of 64 keys x 16 channels
    from timeripple.attention import channel_reuse
    from timeripple.options import normalize_thresholds

    q_t, k_t, _, _, via_q, via_k = channel_reuse(q, k, grid=GRID, thresholds=normalize_thresholds(0.03, "tyx"),
                                                 text_len=0, text_position="after", window=2,
                                                 priority=("t", "y", "x"), channel_alpha=None)
    plan = svg_plan(q_t, k_t, v, grid=GRID, sparsity=0.5, text_len=0, text_position="after", attn_mask=None,
                    num_sampled=4, scale=0.25)
    for h in range(2):
        m = plan.head_masks()[0, h].double()
        a, b = (via_q[0, h] < 0).double(), (via_k[0, h] < 0).double()  # (64, 16)
        computed = sum((m * torch.outer(a[:, c], b[:, c])).sum() for c in range(16)) + 4 * 64 * 16
        assert s_both.qk_savings[h].item() == pytest.approx(1 - computed.item() / (64 * 64 * 16))


@pytest.mark.parametrize("text_position", ["before", "after"])
def test_ripple_svg_count_without_pair_tensors_equals_the_pair_count(text_position):
    """The count multiplies each (N, N) mask with the computed-channel map; it equals the pair-by-pair count
    (the (B, H, N, N) tensor of computed channels per pair), per head, with text tokens and a batch of 2."""
    from timeripple.attention import channel_reuse
    from timeripple.options import normalize_thresholds
    from timeripple import sequence

    q, k, v = _heads_with_structure(text_len=5)
    q, k, v = (torch.cat([x, x.flip(1)]) for x in (q, k, v))  # (2, 2, N, 16): the heads' roles swapped
    if text_position == "before":
        q, k, v = (torch.cat([x[:, :, 64:], x[:, :, :64]], 2) for x in (q, k, v))
    kw = dict(grid=GRID, sparsity=0.5, num_sampled=4, text_len=5, text_position=text_position)
    _, stats = ripple_svg_attention(q, k, v, threshold=0.2, return_stats=True, **kw)
    q_t, k_t, _, _, via_q, via_k = channel_reuse(q, k, grid=GRID, thresholds=normalize_thresholds(0.2, "tyx"),
                                                 text_len=5, text_position=text_position, window=2,
                                                 priority=("t", "y", "x"), channel_alpha=None)
    plan = svg_plan(q_t, k_t, v, attn_mask=None, scale=0.25, **kw)
    assert 0 < plan.choice.double().mean() < 1, "both masks must be chosen somewhere"
    start = sequence.split_video(q, 5, text_position)[1]
    n = q.shape[2]
    a = torch.ones(2, 2, n, 16, dtype=torch.float64)
    b = a.clone()
    a[:, :, start : start + 64] = (via_q < 0).double()
    b[:, :, start : start + 64] = (via_k < 0).double()
    computed = ((a @ b.transpose(-1, -2)) * plan.head_masks()).sum(dim=(-1, -2)) + 4 * n * 16
    expected = (1 - computed / (n * n * 16)).mean(0)
    assert torch.allclose(stats.qk_savings, expected, rtol=0, atol=1e-12)
    assert stats.details["tr_only"] == pytest.approx(1 - (a @ b.transpose(-1, -2)).sum().item() / (4 * n * n * 16))


@pytest.mark.parametrize("block", [1, 37, 64 * 64])
def test_masks_built_in_row_blocks_equal_the_whole_construction(monkeypatch, block):
    """The masks are built a block of query rows at a time (bounded temporaries at full size: a whole int64
    (Nv, Nv) difference is 33.8 GiB at HunyuanVideo's 67,320 video tokens); every block size gives the
    same mask as the one-shot formula."""
    grid = (4, 3, 5)
    frame, pos = masks.video_index(grid)
    df = (frame[:, None] - frame[None, :]).abs()
    dp = (pos[:, None] - pos[None, :]).abs()
    monkeypatch.setattr(masks, "_BLOCK_ELEMENTS", block)
    for r, e in ((0, -1), (0, 3), (1, 0), (2, 14)):
        expected = (df <= r) | ((df == r + 1) & (dp <= e)) if e >= 0 else df <= r
        got = masks.spatial_mask(grid, r, e, n=60 + 7, text_len=7, text_position="before")
        assert torch.equal(got[7:, 7:], expected) and got[:7].all() and got[:, :7].all()
    for e in (0, 2, 14):
        assert torch.equal(masks.temporal_mask(grid, e, n=60), dp <= e)


@pytest.mark.parametrize("text_len,text_position", [(0, "after"), (7, "before"), (5, "after")])
def test_mask_rows_and_closed_form_pairs_equal_the_built_masks(text_len, text_position):
    """SVG's plan reads only the sampled rows of its masks and counts their pairs in closed form (the full
    (N, N) masks are 9.1 GB at HunyuanVideo); both agree with the masks themselves."""
    grid = (4, 3, 5)
    n = 60 + text_len
    rows = torch.tensor([0, 3, 17, 59, 60, n - 1]) if text_len else torch.tensor([0, 3, 17, 59])
    geo = dict(n=n, text_len=text_len, text_position=text_position)
    for r, e in ((0, -1), (0, 3), (1, 0), (2, 14), (3, -1)):
        full = masks.spatial_mask(grid, r, e, **geo)
        assert torch.equal(masks.mask_rows("spatial", grid, (r, e), rows, **geo), full[rows])
        assert masks.spatial_pairs(grid, r, e) + n * n - 60 * 60 == int(full.sum())
    for e in (0, 2, 14):
        full = masks.temporal_mask(grid, e, **geo)
        assert torch.equal(masks.mask_rows("temporal", grid, (e,), rows, **geo), full[rows])
        assert masks.temporal_pairs(grid, e) + n * n - 60 * 60 == int(full.sum())


def test_svg_plan_builds_no_full_mask_until_one_is_read():
    q, k, v = _heads_with_structure(text_len=6)
    kw = dict(grid=GRID, sparsity=0.7, text_len=6, text_position="after", attn_mask=None, num_sampled=8, scale=0.25)
    plan = svg_plan(q, k, v, **kw)
    assert plan._masks == {}  # chosen from the sampled rows only; pairs in closed form
    counted = plan.kept_pairs()
    assert plan._masks == {}
    built = torch.where(plan.choice, plan.m_t.sum().double(), plan.m_s.sum().double())
    assert torch.equal(counted, built) and set(plan._masks) == {"s", "t"}
    old = [plan.m_s, plan.m_t]  # the choice from the full masks' rows is the same
    from timeripple.peers.svg import sample_rows, svg_choose_heads

    rows = sample_rows(q.shape[2], 6, "after", 8, q.device)
    assert torch.equal(svg_choose_heads(q, k, v, old, rows=rows, scale=0.25) == 1, plan.choice)


@pytest.mark.parametrize("grid,text_len,text_position", [((4, 6, 10), 7, "after"), ((3, 12, 12), 20, "before")])
@pytest.mark.parametrize("block", [16, 32])
def test_block_masks_by_rows_equal_create_block_mask(grid, text_len, text_position, block):
    """SVG's block masks are built one block of query rows at a time (create_block_mask evaluates the whole
    (N, N) grid: 36 GB int64 temporaries at HunyuanVideo); the partial and full blocks are the same."""
    from torch.nn.attention.flex_attention import create_block_mask

    from timeripple.peers.svg import _mods, block_mask_by_rows

    n = math.prod(grid) + text_len
    for density in (0.2, 0.5):
        r, e_s, _ = masks.spatial_params(grid, density)
        e_t, _ = masks.temporal_params(grid, density)
        for mod in _mods(grid, n, text_len, text_position, (r, e_s, e_t)):
            want = create_block_mask(mod, None, None, n, n, device="cpu", BLOCK_SIZE=block)
            got = block_mask_by_rows(mod, n, "cpu", block)
            assert torch.equal(got.to_dense(), want.to_dense())
            for a, b in ((got.kv_num_blocks, want.kv_num_blocks), (got.full_kv_num_blocks, want.full_kv_num_blocks)):
                assert torch.equal(a, b)
            for idx_a, idx_b, num in ((got.kv_indices, want.kv_indices, want.kv_num_blocks),
                                      (got.full_kv_indices, want.full_kv_indices, want.full_kv_num_blocks)):
                for i, c in enumerate(num[0, 0].tolist()):
                    assert torch.equal(idx_a[0, 0, i, :c].sort().values, idx_b[0, 0, i, :c].sort().values)
