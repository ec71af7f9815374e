"""Check TimeRipple against the real Open-Sora-Plan v1.3 transformer of a checkout (CPU, random weights).

Usage::

    python tools/check_open_sora_plan.py /path/to/Open-Sora-Plan

Imports ``OpenSoraT2V_v1_3`` from ``opensora/models/diffusion/opensora_v1_3/modeling_opensora.py`` of the
checkout (the project never commits that code), builds it with a tiny config (4 blocks, sparse1d with
``sparse_n=4`` as the released models, so blocks 2-3 regroup their tokens and stay stock), and runs a
6-step loop with the key mask the Open-Sora-Plan pipeline passes. For channel and token mode it checks:
θ = 0 gives outputs equal to stock, a reusing config gives different outputs with counted savings > 0
(dense steps still equal), and after ``remove_timeripple`` outputs equal stock and the original
processors are back. It also checks that sequence parallelism is refused and prints which of the 32
self-attention layers of the released 32-block layout are eligible. Exit code 0 when every check holds.

Needs ``einops`` (``pip install einops``). ``opensora/utils/utils.py``, imported by the model file for
``to_2tuple`` only, also imports ``accelerate``, ``wandb`` and ``torch.utils.tensorboard``; when those are
not installed they are replaced by empty modules (the transformer does not use them) and the script says so.
The ``__init__`` files of ``opensora.models`` and ``opensora.models.diffusion`` (they import the VAEs) are
not run; the modules the transformer imports are the checkout's own.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.machinery
import sys
import types
from pathlib import Path

import torch

NUM_STEPS = 6
OPTIONAL_IMPORTS = ("accelerate", "wandb", "torch.utils.tensorboard")


def _placeholder_attr(module_name):
    def attr(name):  # `from wandb import X` gets an empty class; dunders stay missing
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (), {"__module__": module_name})

    return attr


def _stub_missing(names):
    stubbed = []
    for name in names:
        try:
            importlib.import_module(name)
            continue
        except ImportError:
            pass
        module = types.ModuleType(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        module.__getattr__ = _placeholder_attr(name)
        sys.modules[name] = module
        stubbed.append(name)
    return stubbed


def load_model_class(checkout: Path):
    path = checkout / "opensora/models/diffusion/opensora_v1_3/modeling_opensora.py"
    if not path.is_file():
        raise SystemExit(f"{path} not found: pass the root of an Open-Sora-Plan checkout (v1.3 or later)")
    # first, so that their own checks for optional packages see only what is really installed
    for name in ("modeling_utils", "modeling_outputs", "attention", "attention_processor", "embeddings", "normalization"):
        importlib.import_module(f"diffusers.models.{name}")
    importlib.import_module("timeripple.diffusers")

    stubbed = _stub_missing(OPTIONAL_IMPORTS)
    sys.path.insert(0, str(checkout))
    # the package __init__ files of opensora.models(.diffusion) import the VAEs (torchvision, ...): give
    # those packages their folders without running the __init__ files; every module below is the real one
    for package in ("opensora.models", "opensora.models.diffusion"):
        module = types.ModuleType(package)
        module.__path__ = [str(checkout / package.replace(".", "/"))]
        sys.modules[package] = module
    modeling = importlib.import_module("opensora.models.diffusion.opensora_v1_3.modeling_opensora")
    parallel = importlib.import_module("opensora.utils.parallel_states")
    return modeling.OpenSoraT2V_v1_3, parallel, stubbed


def tiny_model(cls, num_layers=4):
    torch.manual_seed(0)
    return cls(
        num_attention_heads=2, attention_head_dim=24, in_channels=4, out_channels=4, num_layers=num_layers,
        cross_attention_dim=48, sample_size_h=8, sample_size_w=8, sample_size_t=5, patch_size=2, patch_size_t=1,
        activation_fn="gelu-approximate", caption_channels=16, norm_elementwise_affine=False, norm_eps=1e-6,
        sparse1d=True, sparse_n=4,
    ).eval()


def inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 5, 8, 8, generator=g)  # (B, C, F, H, W): token grid (5, 4, 4)
    mask = torch.ones(2, 5, 8, 8)  # as the Open-Sora-Plan pipeline: ones_like(latents)[:, 0]
    mask[1, -1] = 0  # the second video's last frame padded, to exercise the key mask
    text = torch.randn(2, 1, 7, 16, generator=g)
    text_mask = torch.ones(2, 1, 7)
    text_mask[0, :, -2:] = 0
    return x, mask, text, text_mask


def run_loop(model, scheduler):
    x, mask, text, text_mask = inputs()
    scheduler.set_timesteps(NUM_STEPS)
    outs = []
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = model(x, timestep=t.expand(2), encoder_hidden_states=text, attention_mask=mask,
                        encoder_attention_mask=text_mask, return_dict=False)[0]
            outs.append(out)
            x = scheduler.step(out, t, x, return_dict=False)[0]
    return torch.stack(outs)


def _cpu_sdpa_backends():
    """The v1.3 processor runs SDPA under ``torch.backends.cuda.sdp_kernel(enable_math=False,
    enable_flash=False, enable_mem_efficient=True)``, which leaves no CPU backend at all. On the CPU the
    script turns that context into a no-op, for stock and TimeRipple alike (on CUDA nothing changes)."""
    import contextlib

    torch.backends.cuda.sdp_kernel = lambda *args, **kwargs: contextlib.nullcontext()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", type=Path, help="root of an Open-Sora-Plan checkout")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cls, parallel, stubbed = load_model_class(args.checkout)
    _cpu_sdpa_backends()

    import timeripple
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.models.attention_processor import Attention
    from timeripple.diffusers import register_model

    register_model(cls, "open_sora_plan")
    print(f"Open-Sora-Plan checkout: {args.checkout} ({sys.modules[cls.__module__].__file__})")
    print("torch.backends.cuda.sdp_kernel(...) made a no-op: it leaves no SDPA backend on the CPU")
    if stubbed:
        print(f"replaced by empty modules (not installed, unused by the transformer): {', '.join(stubbed)}")
    failures = []

    def check(name, ok, detail=""):
        print(f"  [{'ok' if ok else 'FAIL'}] {name}{': ' + detail if detail else ''}")
        if not ok:
            failures.append(name)

    model = tiny_model(cls)
    scheduler = FlowMatchEulerDiscreteScheduler()
    stock = run_loop(model, scheduler)
    originals = {n: m.processor for n, m in model.named_modules() if isinstance(m, Attention)}
    base = timeripple.load_config("open_sora_plan", mode="channel").replace(
        ramp_start_step=1, ramp_end_step=3, reference_num_steps=NUM_STEPS)
    configs = {
        "channel": base.replace(threshold_start=0.5, threshold_end=1.0),
        "token": base.replace(mode="token", budget=0.5),
    }
    for mode, config in configs.items():
        print(f"{mode} mode (tiny OpenSoraT2V_v1_3: 4 blocks, 2 heads x 24, grid (5, 4, 4), {NUM_STEPS} steps)")
        handle = timeripple.apply_timeripple(model, config.replace(threshold_start=0.0, threshold_end=0.0,
                                                                   budget=None), scheduler=scheduler)
        layers = sorted(handle.originals["transformer"])
        zero = run_loop(model, scheduler)
        handle.remove()
        check("layers swapped", layers == ["transformer_blocks.0.attn1", "transformer_blocks.1.attn1"], str(layers))
        check("theta = 0 equals stock", torch.equal(zero, stock), f"max |diff| {(zero - stock).abs().max():.3g}")

        handle = timeripple.apply_timeripple(model, config, scheduler=scheduler)
        ripple = run_loop(model, scheduler)
        stats = handle.stats
        handle.remove()
        reuse = [i for i, th in enumerate(stats.thresholds) if th is not None]
        before = list(range(reuse[0]))  # later dense steps see latents that reuse has changed
        check("dense steps before the first reuse equal stock", all(torch.equal(ripple[i], stock[i]) for i in before),
              f"steps {before}")
        diff = max(float((ripple[i] - stock[i]).abs().max()) for i in reuse)
        check("reuse steps differ from stock", diff > 0, f"steps {reuse}, max |diff| {diff:.3g}")
        savings = ", ".join(f"{s:.3f}" for s in stats.step_savings)
        check("counted savings > 0", stats.total_savings > 0,
              f"total {stats.total_savings:.3f}, per step [{savings}], {stats.num_calls} calls")
        after = run_loop(model, scheduler)
        check("after remove equals stock", torch.equal(after, stock))
        check("original processors back", all(m.processor is originals[n] for n, m in model.named_modules()
                                              if isinstance(m, Attention)))

    print("sequence parallelism")
    parallel.set_sequence_parallel_state(True)
    try:
        timeripple.apply_timeripple(model, configs["channel"], scheduler=scheduler)
        check("apply refuses", False, "no error")
    except ValueError as err:
        check("apply refuses", "sequence parallelism" in str(err), str(err)[:110] + "...")
    finally:
        parallel.set_sequence_parallel_state(False)
    check("nothing left installed", all(m.processor is originals[n] for n, m in model.named_modules()
                                        if isinstance(m, Attention)))
    handle = timeripple.apply_timeripple(model, configs["channel"], scheduler=scheduler)
    parallel.set_sequence_parallel_state(True)
    world_size, parallel.nccl_info.world_size = parallel.nccl_info.world_size, 2  # the model divides heads by it
    try:
        run_loop(model, scheduler)
        check("a call under sequence parallelism refuses", False, "no error")
    except ValueError as err:
        check("a call under sequence parallelism refuses", "sequence parallelism" in str(err))
    finally:
        parallel.set_sequence_parallel_state(False)
        parallel.nccl_info.world_size = world_size
        handle.remove()

    released = tiny_model(cls, num_layers=32)
    handle = timeripple.apply_timeripple(released, configs["channel"], scheduler=scheduler)
    eligible = sorted(int(name.split(".")[1]) for name in handle.originals["transformer"])
    handle.remove()
    print("released layout (32 blocks, sparse1d, sparse_n 4)")
    check("eligible self-attention blocks", eligible == [0, 1, 30, 31], f"{eligible} ({len(eligible)} of 32)")
    print("all checks passed" if not failures else f"FAILED: {failures}")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
