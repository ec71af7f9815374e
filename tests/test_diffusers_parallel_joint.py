"""Context parallelism for the joint text + video families (HunyuanVideo: text after the video, with a padding
mask; CogVideoX: text before, with RoPE): 2 CPU ranks over gloo against the single-process run, stock and with
TimeRipple in channel and token mode."""

import datetime
import os

import pytest
import torch
import torch.distributed as dist

import timeripple
from timeripple.diffusers.context_parallel import enable_context_parallel
from timeripple.diffusers.parallel import gathered_mask, joint_order

WORLD = 2
NUM_STEPS = 4
REUSE_STEP, DENSE_STEP = 1, NUM_STEPS - 1
MODES = ("channel", "token")

pytestmark = pytest.mark.filterwarnings("ignore:.*all_gather_tensor.*:FutureWarning")
needs_gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with gloo"
)


def _config(family, mode):
    return timeripple.TimeRippleConfig(
        model_family=family, mode=mode, threshold_start=1.0, threshold_end=1.0, ramp_start_step=0,
        ramp_end_step=1, reference_num_steps=NUM_STEPS,
    )


def _scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    scheduler.set_timesteps(NUM_STEPS)
    return scheduler


def _hunyuan():
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(0)
    model = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=4, attention_head_dim=10, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4),
    ).eval()
    g = torch.Generator().manual_seed(1)
    mask = torch.zeros(1, 8, dtype=torch.long)
    mask[:, :3] = 1  # rank 0: 3 valid text tokens, 1 padded; rank 1: 4 padded
    inputs = dict(hidden_states=torch.randn(1, 4, 3, 4, 6, generator=g),  # grid (3, 4, 6): 72 video tokens
                  encoder_hidden_states=torch.randn(1, 8, 16, generator=g), encoder_attention_mask=mask,
                  pooled_projections=torch.randn(1, 8, generator=g), guidance=torch.tensor([4500.0]))
    return model, inputs


def _cogvideox():
    from diffusers import CogVideoXTransformer3DModel
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    torch.manual_seed(0)
    model = CogVideoXTransformer3DModel(
        num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=2,
        text_embed_dim=32, num_layers=2, sample_width=6, sample_height=4, sample_frames=9, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=6, use_rotary_positional_embeddings=True,
    ).eval()
    g = torch.Generator().manual_seed(1)
    # (B, F, C, H, W): grid (3, 2, 4) after the 2x2 patches, 24 video tokens after 6 text tokens
    rope = get_3d_rotary_pos_embed(embed_dim=16, crops_coords=((0, 0), (2, 4)), grid_size=(2, 4), temporal_size=3)
    inputs = dict(hidden_states=torch.randn(1, 3, 4, 4, 8, generator=g),
                  encoder_hidden_states=torch.randn(1, 6, 32, generator=g), image_rotary_emb=rope)
    return model, inputs


FAMILIES = {"hunyuan_video": _hunyuan, "cogvideox": _cogvideox}


def _forward(model, inputs, step, scheduler):
    with torch.no_grad():
        return model(**inputs, timestep=scheduler.timesteps[step : step + 1], return_dict=False)[0]


def _generation(model, inputs, step, scheduler):
    out = _forward(model, inputs, step, scheduler)
    stats = timeripple.get_stats(model)
    model._diffusers_hook.reset_stateful_hooks()  # what a pipeline does at the end of its call
    return out, stats


def _family_run(family):
    """Everything one rank computes for one family (the same on both ranks: each output is the whole)."""
    from diffusers import ContextParallelConfig

    build, scheduler, res = FAMILIES[family], _scheduler(), {}
    model, inputs = build()
    res["stock"] = _forward(model, inputs, REUSE_STEP, scheduler)
    res["stock_dense"] = _forward(model, inputs, DENSE_STEP, scheduler)
    for mode in MODES:
        timeripple.apply_timeripple(model, _config(family, mode), scheduler=scheduler)
        res[f"single_{mode}"] = _generation(model, inputs, REUSE_STEP, scheduler)
        timeripple.remove_timeripple(model)
    # stock context parallelism; then TimeRipple applied after it, and removed again (back to stock CP)
    enable_context_parallel(model, ContextParallelConfig(ulysses_degree=WORLD))
    res["stock_cp"] = _forward(model, inputs, REUSE_STEP, scheduler)
    timeripple.apply_timeripple(model, _config(family, "channel"), scheduler=scheduler)
    res["cp_channel"] = _generation(model, inputs, REUSE_STEP, scheduler)
    res["cp_dense"] = _generation(model, inputs, DENSE_STEP, scheduler)
    timeripple.remove_timeripple(model)
    res["stock_cp_removed"] = _forward(model, inputs, REUSE_STEP, scheduler)
    # TimeRipple applied before context parallelism (the other order)
    model, inputs = build()
    timeripple.apply_timeripple(model, _config(family, "token"), scheduler=scheduler)
    enable_context_parallel(model, ContextParallelConfig(ulysses_degree=WORLD))
    res["cp_token"] = _generation(model, inputs, REUSE_STEP, scheduler)
    timeripple.remove_timeripple(model)  # the originals predate parallelism: they come back parallel
    res["stock_cp_removed_before"] = _forward(model, inputs, REUSE_STEP, scheduler)
    return res


def _errors():
    """Configs the plans refuse before the first step, and a token count the ranks cannot share."""
    from diffusers import ContextParallelConfig

    errors = {}
    for name, config in (("ring", ContextParallelConfig(ring_degree=WORLD)),
                         ("anything", ContextParallelConfig(ulysses_degree=WORLD, ulysses_anything=True))):
        model, _ = _hunyuan()
        try:
            enable_context_parallel(model, config)
            errors[name] = None
        except ValueError as exc:
            errors[name] = str(exc)
        errors[f"{name}_untouched"] = model._parallel_config is None and all(
            type(p).__name__ == "HunyuanVideoAttnProcessor2_0" for n, p in model.attn_processors.items()
            if "token_refiner" not in n)
    model, inputs = _cogvideox()
    enable_context_parallel(model, ContextParallelConfig(ulysses_degree=WORLD))
    inputs["encoder_hidden_states"] = inputs["encoder_hidden_states"][:, :5]  # 5 text tokens over 2 ranks
    try:
        _forward(model, inputs, REUSE_STEP, _scheduler())
        errors["odd_text"] = None
    except ValueError as exc:
        errors["odd_text"] = str(exc)
    return errors


def _worker(rank, init_file, out_dir):
    # the single-process references keep HunyuanVideo's padding mask, as context parallelism does (on one
    # device the processors would drop the padded text keys: same outputs, fewer counted products)
    from timeripple.diffusers.processors.hunyuan_video import HunyuanVideoTimeRippleAttnProcessor

    HunyuanVideoTimeRippleAttnProcessor.drop_padded_text = False
    if rank:
        torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=120))
    try:
        results = {family: _family_run(family) for family in FAMILIES}
        results["errors"] = _errors()
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("cp_joint")
    args = (str(out / "init"), str(out))
    peer = mp.get_context("spawn").Process(target=_worker, args=(1, *args))
    peer.start()
    try:  # no device-count patch: enable_context_parallel handles CPU-only ranks itself
        _worker(0, *args)
    finally:
        peer.join(timeout=180)
        if peer.is_alive():
            peer.kill()
    assert peer.exitcode == 0, f"rank 1 failed (exit code {peer.exitcode}); its traceback is above"
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _close(a, b, what):
    err = (a - b).abs()
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5), f"{what}: max |diff| {err.max():.3g}, mean {err.mean():.3g}"


@needs_gloo
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_stock_context_parallel_matches_single_process(two_ranks, family):
    assert len(two_ranks) == WORLD and all(family in results for results in two_ranks), "a rank returned nothing"
    for rank, results in enumerate(two_ranks):
        res = results[family]
        _close(res["stock_cp"], res["stock"], f"{family} rank {rank}: stock CP")
        _close(res["stock_cp_removed"], res["stock"], f"{family} rank {rank}: stock CP after remove_timeripple")
        _close(res["stock_cp_removed_before"], res["stock"], f"{family} rank {rank}: removed, applied before CP")
        _close(res["cp_dense"][0], res["stock_dense"], f"{family} rank {rank}: dense step with TimeRipple under CP")


@needs_gloo
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_timeripple_context_parallel_matches_single_process(two_ranks, family, mode):
    for rank, results in enumerate(two_ranks):
        res = results[family]
        (single, single_stats), (cp, cp_stats) = res[f"single_{mode}"], res[f"cp_{mode}"]
        _close(cp, single, f"{family} {mode} rank {rank}")
        assert single_stats.total_savings > 0, f"{family} {mode}: nothing was reused on one device"
        assert not torch.allclose(cp, res["stock"], rtol=1e-4, atol=1e-4), f"{family} {mode}: the reuse step ran dense"
        # per rank: the H/W heads of this rank over the whole sequence
        assert cp_stats.qk_products * WORLD == single_stats.qk_products
        assert cp_stats.num_calls == single_stats.num_calls


@needs_gloo
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_rank_statistics_average_to_the_single_process_figures(two_ranks, family, mode):
    single = two_ranks[0][family][f"single_{mode}"][1]
    per_rank = [results[family][f"cp_{mode}"][1] for results in two_ranks]
    assert sum(s.total_savings for s in per_rank) / WORLD == pytest.approx(single.total_savings, abs=1e-9)
    for name, value in single.layer_savings.items():
        assert sum(s.layer_savings[name] for s in per_rank) / WORLD == pytest.approx(value, abs=1e-9)
    dense = two_ranks[0][family]["cp_dense"][1]
    assert dense.total_savings == 0 and dense.qk_products * WORLD == single.qk_products


@needs_gloo
def test_refused_configs_raise_before_anything_changes(two_ranks):
    for results in two_ranks:
        errors = results["errors"]
        assert "ring_degree" in errors["ring"] and "Ulysses" in errors["ring"] and errors["ring_untouched"]
        assert "ulysses_anything" in errors["anything"] and errors["anything_untouched"]
        assert "text tokens (5" in errors["odd_text"] and "split evenly" in errors["odd_text"]


def test_joint_order_puts_the_gathered_tokens_back_in_the_global_order():
    # 2 ranks, 3 video + 2 text tokens each: gathered [v0 v1 v2 t0 t1 | v3 v4 v5 t2 t3]
    video, text = torch.arange(6), 100 + torch.arange(4)
    for position, layout in (("after", lambda v, t: torch.cat([v, t])), ("before", lambda v, t: torch.cat([t, v]))):
        gathered = torch.cat([layout(video[:3], text[:2]), layout(video[3:], text[2:])]).reshape(1, -1)
        order, inverse = joint_order(3, 2, WORLD, position)
        assert torch.equal(gathered.index_select(1, order)[0], layout(video, text))
        assert torch.equal(gathered.index_select(1, order).index_select(1, inverse), gathered)
    assert joint_order(9, 0, WORLD) == (None, None)


def test_gathered_mask_follows_the_gathered_keys():
    from diffusers import ContextParallelConfig

    mask = torch.tensor([True] * 6 + [True, True, True, False]).reshape(1, 1, 1, -1)  # [video | text]
    got = gathered_mask(mask, ContextParallelConfig(ulysses_degree=WORLD), 3, 2, "after")
    expected = torch.tensor([True] * 3 + [True, True] + [True] * 3 + [True, False]).reshape(1, 1, 1, -1)
    assert torch.equal(got, expected)
