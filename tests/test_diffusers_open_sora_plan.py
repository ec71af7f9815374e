"""The Open-Sora-Plan v1.3 processor against a small stand-in with the same attention contract:
a diffusers ``Attention`` whose processor carries ``is_cross_attn``, ``sparse1d``, ``rope`` and
``position_getter`` and is called with sequence-first (S, B, H·D) tensors and ``frame, height, width``."""

import pytest
import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import Attention
from diffusers.models.modeling_utils import ModelMixin

import timeripple
from timeripple.diffusers import register_model
from timeripple.diffusers.processors.open_sora_plan import OpenSoraPlanTimeRippleAttnProcessor


class PositionGetter3D:  # stand-in: (t, y, x) integer positions per token, t-major
    def __call__(self, b, t, h, w, device):
        grid = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij"), -1)
        return grid.reshape(-1, 3).to(device)  # (S, 3)


class RoPE3D:  # stand-in: rotate three channel groups by the t, y, x positions; x is (S, B, H, D)
    def __call__(self, x, pos):
        d = x.shape[-1] // 3 // 2 * 2
        parts = []
        for axis in range(3):
            chunk = x[..., axis * d : (axis + 1) * d]
            freqs = pos[:, axis, None].float() / (10.0 ** (torch.arange(0, d, 2) / d))  # (S, d/2)
            cos, sin = freqs.cos()[:, None, None], freqs.sin()[:, None, None]
            a, b = chunk[..., 0::2], chunk[..., 1::2]
            parts.append(torch.stack([a * cos - b * sin, a * sin + b * cos], -1).flatten(-2))
        return torch.cat(parts + [x[..., 3 * d :]], dim=-1)


class OpenSoraAttnProcessor2_0:  # stand-in with the v1.3 call contract (no sparse1d, no sequence parallel)
    def __init__(self, is_cross_attn, sparse1d=False):
        self.is_cross_attn, self.sparse1d = is_cross_attn, sparse1d
        self.rope, self.position_getter = RoPE3D(), PositionGetter3D()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 frame=8, height=16, width=16, *args, **kwargs):
        _, batch_size, _ = hidden_states.shape
        query = attn.to_q(hidden_states)
        encoder_hidden_states = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(-1, batch_size, attn.heads, head_dim)
        key = key.view(-1, batch_size, attn.heads, head_dim)
        if not self.is_cross_attn:
            pos = self.position_getter(batch_size, t=frame, h=height, w=width, device=query.device)
            query, key = self.rope(query, pos), self.rope(key, pos)
        q, k, v = (x.reshape(x.shape[0], batch_size, attn.heads, head_dim).permute(1, 2, 0, 3) for x in (query, key, value))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)
        out = out.permute(2, 0, 1, 3).reshape(-1, batch_size, attn.heads * head_dim).to(query.dtype)
        return attn.to_out[1](attn.to_out[0](out))


class TinyOpenSora(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, in_channels=4, dim=24, heads=2, num_layers=2, patch_size=2, patch_size_t=1, text_dim=8):
        super().__init__()
        self.patch = torch.nn.Conv3d(in_channels, dim, (patch_size_t, patch_size, patch_size), (patch_size_t, patch_size, patch_size))
        self.text = torch.nn.Linear(text_dim, dim)
        self.blocks = torch.nn.ModuleList()
        for _ in range(num_layers):
            block = torch.nn.Module()
            block.attn1 = Attention(dim, heads=heads, dim_head=dim // heads, processor=OpenSoraAttnProcessor2_0(False))
            block.attn2 = Attention(dim, cross_attention_dim=dim, heads=heads, dim_head=dim // heads,
                                    processor=OpenSoraAttnProcessor2_0(True))
            self.blocks.append(block)
        self.out = torch.nn.Linear(dim, in_channels)

    def forward(self, hidden_states, timestep, encoder_hidden_states):
        x = self.patch(hidden_states)  # (B, C, T, H, W)
        b, _, t, h, w = x.shape
        x = x.flatten(2).permute(2, 0, 1)  # (S, B, C), t-major
        e = self.text(encoder_hidden_states).transpose(0, 1)  # (L, B, C)
        for block in self.blocks:
            x = x + block.attn1(x, frame=t, height=h, width=w)
            x = x + block.attn2(x, encoder_hidden_states=e, frame=t, height=h, width=w)
        return self.out(x).mean()


register_model(TinyOpenSora, "open_sora_plan")

NUM_STEPS = 4
CONFIG = timeripple.load_config("open_sora_plan").replace(
    threshold_start=1.0, threshold_end=2.0, ramp_start_step=1, ramp_end_step=2, reference_num_steps=NUM_STEPS,
)


def run_loop(model, scheduler, x, e):
    scheduler.set_timesteps(NUM_STEPS)
    return torch.stack([model(x, timestep=t.expand(x.shape[0]), encoder_hidden_states=e) for t in scheduler.timesteps])


@pytest.mark.parametrize("odd", [False, True])
def test_open_sora_plan_stand_in(odd):
    torch.manual_seed(0)
    model = TinyOpenSora().eval()
    scheduler = FlowMatchEulerDiscreteScheduler()
    x = torch.randn(2, 4, 3, 6 if odd else 4, 10 if odd else 8)  # grid (3, 3, 5) or (3, 2, 4)
    e = torch.randn(2, 5, 8)
    with torch.no_grad():
        stock = run_loop(model, scheduler, x, e)
        originals = {n: m.processor for n, m in model.named_modules() if isinstance(m, Attention)}

        timeripple.apply_timeripple(model, CONFIG.replace(threshold_start=0.0, threshold_end=0.0), scheduler=scheduler)
        swapped = {n for n, m in model.named_modules() if isinstance(getattr(m, "processor", None), OpenSoraPlanTimeRippleAttnProcessor)}
        zero = run_loop(model, scheduler, x, e)
        timeripple.remove_timeripple(model)

        handle = timeripple.apply_timeripple(model, CONFIG, scheduler=scheduler)
        ripple = run_loop(model, scheduler, x, e)
        stats = handle.stats
        timeripple.remove_timeripple(model)
        after = run_loop(model, scheduler, x, e)

    assert swapped == {"blocks.0.attn1", "blocks.1.attn1"}
    assert torch.equal(zero, stock)
    assert torch.equal(ripple[0], stock[0]) and torch.equal(ripple[-1], stock[-1])  # dense steps
    assert not torch.equal(ripple[1:-1], stock[1:-1])
    assert stats.step_savings[0] == stats.step_savings[-1] == 0.0 and min(stats.step_savings[1:-1]) > 0
    assert torch.equal(after, stock)
    assert all(m.processor is originals[n] for n, m in model.named_modules() if isinstance(m, Attention))


def test_open_sora_plan_sparse1d_layers_stay_stock():
    model = TinyOpenSora()
    model.blocks[0].attn1.processor.sparse1d = True
    handle = timeripple.apply_timeripple(model, CONFIG, scheduler=FlowMatchEulerDiscreteScheduler())
    try:
        assert set(handle.originals["transformer"]) == {"blocks.1.attn1"}
    finally:
        timeripple.remove_timeripple(model)
