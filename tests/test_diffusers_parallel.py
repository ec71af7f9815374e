"""Context parallelism (Ulysses) with TimeRipple: 2 CPU ranks over gloo against the single-process run."""

import datetime
import logging
import os

import pytest
import torch
import torch.distributed as dist

import timeripple
from timeripple.diffusers.context_parallel import enable_context_parallel
from timeripple.diffusers.parallel import check_parallel_config, rank_dense_products

WORLD = 2
NUM_STEPS = 4
DENSE_STEP = NUM_STEPS - 1  # dense_last_step; steps 0-2 reuse
CONFIG = timeripple.TimeRippleConfig(
    model_family="wan", threshold_start=1.0, threshold_end=1.0, ramp_start_step=0, ramp_end_step=1,
    reference_num_steps=NUM_STEPS,
)
TOKEN_CONFIG = CONFIG.replace(mode="token")

pytestmark = pytest.mark.filterwarnings("ignore:.*all_gather_tensor.*:FutureWarning")
needs_gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with gloo"
)


def _tiny_wan(heads=4):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    ).eval()


def _scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    scheduler.set_timesteps(NUM_STEPS)
    return scheduler


def _inputs():
    g = torch.Generator().manual_seed(1)
    # grid (3, 2, 3): 18 video tokens, 9 per rank
    return torch.randn(1, 16, 3, 4, 6, generator=g), torch.randn(1, 16, 32, generator=g)


def _forward(model, step, scheduler, latents, text):
    with torch.no_grad():
        return model(hidden_states=latents, timestep=scheduler.timesteps[step : step + 1],
                     encoder_hidden_states=text, return_dict=False)[0]


def _generation(model, step, scheduler, latents, text):
    """One forward as a generation of its own: the output and its statistics, then the end-of-call reset."""
    out = _forward(model, step, scheduler, latents, text)
    stats = timeripple.get_stats(model)
    model._diffusers_hook.reset_stateful_hooks()  # what a pipeline does at the end of its call
    return out, stats


def _worker(rank, init_file, out_dir):
    """One rank; rank 0 runs in the test process (saves a second start of Python), rank 1 is spawned."""
    from diffusers import ContextParallelConfig

    if rank:
        torch.set_num_threads(1)
        if torch.accelerator.device_count() == 0:  # the mesh setup computes `rank % device_count()`
            torch.accelerator.device_count = lambda: 1
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=120))
    try:
        scheduler, (latents, text) = _scheduler(), _inputs()
        model = _tiny_wan()
        stock = {s: _forward(model, s, scheduler, latents, text) for s in (1, DENSE_STEP)}
        timeripple.apply_timeripple(model, CONFIG, scheduler=scheduler)
        single = _generation(model, 1, scheduler, latents, text)
        model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=WORLD))
        dense_cp = _generation(model, DENSE_STEP, scheduler, latents, text)  # the stock CP path
        ripple_cp = _generation(model, 1, scheduler, latents, text)

        # ring attention: refused by `enable_context_parallel` (model untouched), and with diffusers' own
        # `enable_parallelism` at the first forward, even a dense step (before any collective)
        ring_model = _tiny_wan()
        timeripple.apply_timeripple(ring_model, CONFIG, scheduler=scheduler)
        ring_errors = []
        for enable, step in ((lambda c: enable_context_parallel(ring_model, c), 1),
                             (lambda c: ring_model.enable_parallelism(config=c), DENSE_STEP)):
            try:
                enable(ContextParallelConfig(ring_degree=WORLD))
                _forward(ring_model, step, scheduler, latents, text)
                ring_errors.append(None)
            except ValueError as exc:
                ring_errors.append((str(exc), ring_model._parallel_config is None))
        # token mode, applied after `enable_context_parallel` (the processors join the parallel config)
        late_model = _tiny_wan()
        timeripple.apply_timeripple(late_model, TOKEN_CONFIG, scheduler=scheduler)
        single_token = _generation(late_model, 1, scheduler, latents, text)
        timeripple.remove_timeripple(late_model)
        enable_context_parallel(late_model, ContextParallelConfig(ulysses_degree=WORLD))
        timeripple.apply_timeripple(late_model, TOKEN_CONFIG, scheduler=scheduler)
        token_cp = _generation(late_model, 1, scheduler, latents, text)
        timeripple.remove_timeripple(late_model)  # back to the stock context-parallel processors
        stock_cp_removed = _forward(late_model, 1, scheduler, latents, text)
        torch.save(dict(stock=stock, single=single, dense_cp=dense_cp, ripple_cp=ripple_cp, ring_errors=ring_errors,
                        single_token=single_token, token_cp=token_cp, stock_cp_removed=stock_cp_removed),
                   os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # both ranks done with every collective (diffusers leaves some of its own unwaited)
    finally:
        dist.destroy_process_group()


def _peer(rank, init_file, out_dir):
    """Rank 1 in its spawned process: the worker, then an exit that skips the interpreter's teardown.

    Once the results are saved, what is left is C++ teardown of the process group's threads, which on the CI
    machine once aborted (SIGABRT, "terminate called without an active exception") after a run whose results
    were complete. The exit code then still says whether the worker itself finished."""
    import sys
    import traceback

    code = 0
    try:
        _worker(rank, init_file, out_dir)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("cp")
    args = (str(out / "init"), str(out))
    peer = mp.get_context("spawn").Process(target=_peer, args=(1, *args))
    peer.start()
    try:
        with pytest.MonkeyPatch.context() as patch:
            if torch.accelerator.device_count() == 0:  # the mesh setup computes `rank % device_count()`
                patch.setattr(torch.accelerator, "device_count", lambda: 1)
            _worker(0, *args)
    finally:
        peer.join(timeout=180)
        if peer.is_alive():
            peer.kill()
    assert peer.exitcode == 0, f"rank 1 failed (exit code {peer.exitcode}); its traceback is above"
    results = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    logging.getLogger(__name__).info("Ulysses vs single process, max |diff|: %s", [
        float((r["ripple_cp"][0] - r["single"][0]).abs().max()) for r in results])
    return results


@needs_gloo
def test_ulysses_matches_single_process_and_is_not_dense(two_ranks):
    for rank, res in enumerate(two_ranks):
        (single, _), (cp, _), stock = res["single"], res["ripple_cp"], res["stock"][1]
        err = (cp - single).abs()
        assert torch.allclose(cp, single, rtol=1e-5, atol=1e-5), (
            f"rank {rank}: max |diff| {err.max():.3g}, mean {err.mean():.3g}")
        assert not torch.allclose(cp, stock, rtol=1e-4, atol=1e-4), f"rank {rank}: the reuse step ran dense"
        assert not torch.allclose(single, stock, rtol=1e-4, atol=1e-4)
        # a dense step under CP is the stock CP attention, equal to the single-process stock output
        dense_err = (res["dense_cp"][0] - res["stock"][DENSE_STEP]).abs()
        assert torch.allclose(res["dense_cp"][0], res["stock"][DENSE_STEP], rtol=1e-5, atol=1e-5), (
            f"rank {rank}: dense step max |diff| {dense_err.max():.3g}")


@needs_gloo
def test_ulysses_statistics_are_per_rank_and_average_to_the_whole(two_ranks):
    single = two_ranks[0]["single"][1]
    assert single.total_savings > 0 and single.num_calls == 2
    per_rank = [res["ripple_cp"][1] for res in two_ranks]
    for stats in per_rank:  # every rank counts its H/W heads over the whole sequence: half the products
        assert stats.num_calls == single.num_calls
        assert stats.qk_products * WORLD == single.qk_products
    mean = sum(s.total_savings for s in per_rank) / WORLD
    assert mean == pytest.approx(single.total_savings, abs=1e-9)
    for name, value in single.layer_savings.items():
        assert sum(s.layer_savings[name] for s in per_rank) / WORLD == pytest.approx(value, abs=1e-9)
    for res in two_ranks:  # a dense step records the rank's share of the global count, zero savings
        dense = res["dense_cp"][1]
        assert dense.total_savings == 0 and dense.num_calls == 2
        assert dense.qk_products * WORLD == single.qk_products


@needs_gloo
def test_ring_raises_naming_ulysses(two_ranks):
    for res in two_ranks:
        (at_enable, untouched), (at_forward, _) = res["ring_errors"]
        assert untouched, "a refused `enable_context_parallel` left the model changed"
        for message in (at_enable, at_forward):
            assert "ring_degree" in message and "Ulysses" in message and "ulysses_degree" in message


@needs_gloo
def test_token_mode_applied_after_enable_matches_single_process(two_ranks):
    for rank, res in enumerate(two_ranks):
        (single, single_stats), (cp, cp_stats) = res["single_token"], res["token_cp"]
        err = (cp - single).abs()
        assert torch.allclose(cp, single, rtol=1e-5, atol=1e-5), (
            f"rank {rank}: max |diff| {err.max():.3g}, mean {err.mean():.3g}")
        assert single_stats.total_savings > 0 and cp_stats.qk_products * WORLD == single_stats.qk_products
        assert not torch.allclose(cp, res["stock"][1], rtol=1e-4, atol=1e-4), f"rank {rank}: token step ran dense"
        # after remove_timeripple the restored processors still run context-parallel attention
        assert torch.allclose(res["stock_cp_removed"], res["stock"][1], rtol=1e-5, atol=1e-5)


def test_check_parallel_config_rules():
    from diffusers import ContextParallelConfig
    from diffusers.models._modeling_parallel import ParallelConfig

    ulysses = ContextParallelConfig(ulysses_degree=2)
    assert check_parallel_config(ParallelConfig(context_parallel_config=ulysses), heads=4) == 2
    assert check_parallel_config(ulysses, heads=4) == 2
    for bad in (ContextParallelConfig(ring_degree=2), ContextParallelConfig(ring_degree=2, ulysses_degree=2)):
        with pytest.raises(ValueError, match="ring attention is not supported.*Ulysses"):
            check_parallel_config(bad, heads=4)
    with pytest.raises(ValueError, match="must divide the number of attention heads"):
        check_parallel_config(ContextParallelConfig(ulysses_degree=4), heads=6, layer_name="blocks.0.attn1")
    with pytest.raises(ValueError, match="no context-parallel part"):
        check_parallel_config(ParallelConfig(), heads=4)
    # the rank's share: B*H*N*N*D / W for N = T*H*W + text
    assert rank_dense_products(ulysses, 1, 4, 12, (3, 2, 3), 0) == 4 * 18 * 18 * 12 // 2


def test_families_without_cp_support_raise():
    from diffusers import ContextParallelConfig
    from diffusers.models._modeling_parallel import ParallelConfig

    from timeripple.diffusers.processors.base import TimeRippleAttnProcessor
    from timeripple.diffusers.processors.cogvideox import CogVideoXTimeRippleAttnProcessor
    from timeripple.diffusers.processors.hunyuan_video import HunyuanVideoTimeRippleAttnProcessor
    from timeripple.diffusers.processors.wan import WanTimeRippleAttnProcessor

    assert WanTimeRippleAttnProcessor._supports_context_parallel
    assert HunyuanVideoTimeRippleAttnProcessor._supports_context_parallel
    assert CogVideoXTimeRippleAttnProcessor._supports_context_parallel
    processor = TimeRippleAttnProcessor(layer_name="blocks.0.attn")
    processor._parallel_config = ParallelConfig(context_parallel_config=ContextParallelConfig(ulysses_degree=2))
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match="does not support context parallelism.*Wan, HunyuanVideo and CogVideoX"):
        processor._attend_parallel(None, q, q, q, 0, "after", None, (1, 2, 2))


def test_hook_refuses_unsupported_parallel_setups_before_any_layer_runs():
    """diffusers' own `enable_parallelism` bypasses `enable_context_parallel`; the TimeRipple hook still refuses
    ring attention and families without context-parallel support at the start of the forward."""
    from diffusers import ContextParallelConfig, LTXVideoTransformer3DModel
    from diffusers.models._modeling_parallel import ParallelConfig

    scheduler = _scheduler()
    cases = [(_tiny_wan(), CONFIG, ContextParallelConfig(ring_degree=2), "ring attention is not supported")]
    torch.manual_seed(0)
    ltx = LTXVideoTransformer3DModel(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1,
                                     num_attention_heads=4, attention_head_dim=8, cross_attention_dim=32,
                                     num_layers=1, caption_channels=32)
    cases.append((ltx, CONFIG.replace(model_family="ltx"), ContextParallelConfig(ulysses_degree=2),
                  "for Wan, HunyuanVideo and CogVideoX only"))
    for model, config, cp, message in cases:
        timeripple.apply_timeripple(model, config, scheduler=scheduler)
        model._parallel_config = ParallelConfig(context_parallel_config=cp)  # what enable_parallelism records
        with pytest.raises(ValueError, match=message):
            model(hidden_states=torch.zeros(1), timestep=scheduler.timesteps[:1])  # never reaches a layer
