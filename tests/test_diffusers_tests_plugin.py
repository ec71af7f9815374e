"""The logic of tools/diffusers_tests_plugin.py (the plugin that runs diffusers' own tests with TimeRipple;
the run itself needs a diffusers checkout and stays out of CI): lazy apply on the first forward, any
timestep mapped to the reuse step, removal before processors change, refusals counted, clean uninstall."""

import os
import sys

import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.models.attention_processor import AttnProcessor2_0

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "tools"))
import diffusers_tests_plugin as plugin  # noqa: E402


def _model():
    torch.manual_seed(0)
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
                                 out_channels=4, text_dim=16, freq_dim=32, ffn_dim=16, num_layers=2,
                                 qk_norm="rms_norm_across_heads", rope_max_seq_len=32).eval()


def _call(model, t=517.25):
    x = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    e = torch.randn(1, 5, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return model(hidden_states=x, timestep=torch.tensor([t]), encoder_hidden_states=e).sample


@pytest.fixture
def installer(request):
    made = []

    def make(mode):
        made.append(plugin.Installer(mode))
        made[-1].install([WanTransformer3DModel])
        return made[-1]

    yield make
    for one in made:
        one.uninstall()


def test_any_timestep_is_the_reuse_step():
    scheduler = plugin.AnyTimestepScheduler()
    for t in (torch.tensor([999.0], dtype=torch.bfloat16), torch.tensor([[3.0, 7.5]]), 0.0):
        scheduler.observe(t)
        table = scheduler.timesteps
        t_max = torch.as_tensor(t).reshape(-1).max()
        assert torch.nonzero(table.to(t_max.dtype) == t_max).reshape(-1).tolist() == [1]
    assert plugin.plugin_config("reuse").threshold_at(1, 3) == 1.0
    assert all(plugin.plugin_config("dense").threshold_at(s, n) is None for n in (1, 2, 3, 50) for s in range(n))
    with pytest.raises(ValueError, match="--timeripple"):
        plugin.plugin_config("fast")


def test_dense_equals_stock_and_reuse_differs(installer):
    stock = _call(_model())
    original_forward = WanTransformer3DModel.forward
    dense_installer = installer("dense")
    model = _model()
    assert torch.equal(_call(model), stock) and dense_installer.applied == 1
    assert model._timeripple_handle.stats.num_calls == 2  # the two self-attention layers ran TimeRipple
    dense_installer.uninstall()
    assert WanTransformer3DModel.forward is original_forward

    reuse_installer = installer("reuse")
    model = _model()
    out = _call(model)
    assert not torch.equal(out, stock) and model._timeripple_handle.stats.total_savings > 0
    model.set_attn_processor(dict(_model().attn_processors))  # TimeRipple removed first, then the change
    assert getattr(model, "_timeripple_handle", None) is None
    assert torch.equal(_call(model), out) and reuse_installer.applied == 2  # applied again at the next call


def test_a_refused_model_runs_stock_with_the_reason(installer):
    stock = _call(_model())
    refusing = installer("reuse")
    model = _model()
    model.blocks[0].attn1.set_processor(AttnProcessor2_0())  # not Wan's stock processor
    with pytest.raises(Exception):
        _call(model)  # AttnProcessor2_0 cannot run Wan's attention: the test's own failure, not ours
    assert refusing.applied == 0 and "blocks.0.attn1.processor" in refusing.refusals[0]
    model.set_attn_processor(dict(_model().attn_processors))  # stock again: applied at the next call
    assert not torch.equal(_call(model), stock) and refusing.applied == 1
