"""The Open-Sora-Plan v1.3 processor against a stand-in written here that does to its processors what the
real ``OpenSoraT2V_v1_3`` does (``opensora/models/diffusion/opensora_v1_3/{modeling_opensora,modules}.py``):

* ``forward`` reads ``block.attn1.processor.sparse_n`` and ``.sparse_group`` to pick each block's mask;
* the self-attention key mask is additive (0 / -10000) and repeated per head: ``(B, heads, 1, S)``;
* ``position_getter(b, t=, h=, w=, device=)`` returns ``(poses, max_poses)``: three ``(S, B)`` integer
  tensors (t, y, x) and their maxima; ``rope(x, positions)`` is rotate-half RoPE on three thirds of the
  head dim, on sequence-first ``(S, B, heads, D)``;
* the processor is called with sequence-first ``(S, B, H·D)`` tensors and ``frame, height, width``, and
  its module's ``get_sequence_parallel_state()`` says whether sequence parallelism is on.

``tools/check_open_sora_plan.py PATH`` runs the same checks on the real files of a checkout.
"""

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

_SEQUENCE_PARALLEL = [False]


def get_sequence_parallel_state():  # read by the stock processor's module, as in Open-Sora-Plan
    return _SEQUENCE_PARALLEL[0]


class PositionGetter3D:
    def __call__(self, b, t, h, w, device):
        pos = torch.cartesian_prod(torch.arange(t), torch.arange(h), torch.arange(w)).to(device)  # (S, 3)
        poses = tuple(pos[:, i, None].expand(-1, b).contiguous() for i in range(3))  # 3 x (S, B)
        return poses, tuple(int(p.max()) for p in poses)


class RoPE3D:
    @staticmethod
    def rotate_half(x):
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)

    def __call__(self, tokens, positions):  # tokens (S, B, heads, D)
        poses, max_poses = positions
        d = tokens.shape[-1] // 3
        parts = []
        for part, pos, top in zip(tokens.chunk(3, dim=-1), poses, max_poses):
            freqs = torch.arange(top + 1).float()[:, None] / 10.0 ** (torch.arange(0, d, 2).float() / d)
            freqs = torch.cat((freqs, freqs), -1).to(tokens.dtype)  # (top + 1, d)
            cos, sin = F.embedding(pos, freqs.cos())[:, :, None], F.embedding(pos, freqs.sin())[:, :, None]
            parts.append(part * cos + self.rotate_half(part) * sin)
        return torch.cat(parts, dim=-1)


class OpenSoraAttnProcessor2_0:
    def __init__(self, sparse1d=False, sparse_n=4, sparse_group=False, is_cross_attn=True):
        self.sparse1d, self.sparse_n, self.sparse_group, self.is_cross_attn = sparse1d, sparse_n, sparse_group, is_cross_attn
        self.interpolation_scale_thw = (1, 1, 1)
        self.rope, self.position_getter = RoPE3D(), PositionGetter3D()
        self.calls = 0

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 frame=8, height=16, width=16, *args, **kwargs):
        assert not get_sequence_parallel_state(), "the stand-in has no sequence parallelism"
        self.calls += 1
        batch_size = hidden_states.shape[1]
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
        return attn.to_out[1](attn.to_out[0](out)) / attn.rescale_output_factor


class TinyOpenSora(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, in_channels=4, heads=2, head_dim=12, num_layers=3, patch_size=2, patch_size_t=1,
                 text_dim=8, sparse1d=False):
        super().__init__()
        dim = heads * head_dim
        self.patch = torch.nn.Conv3d(in_channels, dim, (patch_size_t, patch_size, patch_size), (patch_size_t, patch_size, patch_size))
        self.text = torch.nn.Linear(text_dim, dim)
        self.blocks = torch.nn.ModuleList()
        for i in range(num_layers):
            block = torch.nn.Module()
            kw = dict(sparse1d=sparse1d and i > 1, sparse_n=4, sparse_group=i % 2 == 1)
            block.attn1 = Attention(dim, heads=heads, dim_head=head_dim,
                                    processor=OpenSoraAttnProcessor2_0(is_cross_attn=False, **kw))
            block.attn2 = Attention(dim, cross_attention_dim=dim, heads=heads, dim_head=head_dim,
                                    processor=OpenSoraAttnProcessor2_0(is_cross_attn=True, **kw))
            self.blocks.append(block)
        self.out = torch.nn.Linear(dim, in_channels)

    def forward(self, hidden_states, timestep, encoder_hidden_states, attention_mask):
        x = self.patch(hidden_states)  # (B, C, T, H, W)
        b, _, t, h, w = x.shape
        x = x.flatten(2).permute(2, 0, 1)  # (S, B, C), t-major
        e = self.text(encoder_hidden_states).transpose(0, 1)  # (L, B, C)
        p_t, p = self.config.patch_size_t, self.config.patch_size
        keep = F.max_pool3d(attention_mask[:, None].float(), (p_t, p, p), (p_t, p, p)).flatten(1)  # (B, S)
        bias = (1 - keep.bool().float()) * -10000.0  # (B, S) key mask, additive
        heads = self.config.heads
        masks = {n: {g: bias[:, None, None].repeat_interleave(heads, dim=1) for g in (False, True)} for n in (1, 4)}
        for block in self.blocks:
            mask = masks[block.attn1.processor.sparse_n][block.attn1.processor.sparse_group]  # (B, heads, 1, S)
            x = x + block.attn1(x, attention_mask=mask, frame=t, height=h, width=w)
            x = x + block.attn2(x, encoder_hidden_states=e, frame=t, height=h, width=w)
        return self.out(x).permute(1, 2, 0)  # (B, C, S)


register_model(TinyOpenSora, "open_sora_plan")

NUM_STEPS = 4
CONFIGS = {
    "channel": timeripple.load_config("open_sora_plan", mode="channel").replace(
        threshold_start=1.0, threshold_end=2.0, ramp_start_step=1, ramp_end_step=2, reference_num_steps=NUM_STEPS),
    "token": timeripple.load_config("open_sora_plan", mode="channel").replace(
        mode="token", budget=0.5, threshold_start=1.0, threshold_end=1.0, ramp_start_step=1, ramp_end_step=2,
        reference_num_steps=NUM_STEPS),
}


def run_loop(model, scheduler, x, e, mask):
    scheduler.set_timesteps(NUM_STEPS)
    return torch.stack([model(x, timestep=t.expand(x.shape[0]), encoder_hidden_states=e, attention_mask=mask)
                        for t in scheduler.timesteps])


def _inputs(odd):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3, 6 if odd else 4, 10 if odd else 8)  # grid (3, 3, 5) or (3, 2, 4)
    mask = torch.ones(2, 3, 6 if odd else 4, 10 if odd else 8)
    mask[1, -1] = 0  # the second video's last frame is padding
    return x, torch.randn(2, 5, 8), mask


@pytest.mark.parametrize("mode", ["channel", "token"])
@pytest.mark.parametrize("odd", [False, True])
def test_open_sora_plan_contract(mode, odd):
    x, e, mask = _inputs(odd)
    model = TinyOpenSora().eval()
    scheduler = FlowMatchEulerDiscreteScheduler()
    config = CONFIGS[mode]
    with torch.no_grad():
        stock = run_loop(model, scheduler, x, e, mask)
        originals = {n: m.processor for n, m in model.named_modules() if isinstance(m, Attention)}

        timeripple.apply_timeripple(model, config.replace(threshold_start=0.0, threshold_end=0.0, budget=None),
                                    scheduler=scheduler)
        swapped = {n for n, m in model.named_modules() if isinstance(m.processor if isinstance(m, Attention) else None,
                                                                      OpenSoraPlanTimeRippleAttnProcessor)}
        zero = run_loop(model, scheduler, x, e, mask)
        timeripple.remove_timeripple(model)

        handle = timeripple.apply_timeripple(model, config, scheduler=scheduler)
        ripple = run_loop(model, scheduler, x, e, mask)
        stats = handle.stats
        timeripple.remove_timeripple(model)
        after = run_loop(model, scheduler, x, e, mask)

    assert swapped == {"blocks.0.attn1", "blocks.1.attn1", "blocks.2.attn1"}
    assert torch.equal(zero, stock)
    assert torch.equal(ripple[0], stock[0]) and torch.equal(ripple[-1], stock[-1])  # dense steps
    assert not torch.equal(ripple[1:-1], stock[1:-1])
    assert stats.step_savings[0] == stats.step_savings[-1] == 0.0 and min(stats.step_savings[1:-1]) > 0
    assert torch.equal(after, stock)
    assert all(m.processor is originals[n] for n, m in model.named_modules() if isinstance(m, Attention))


def test_open_sora_plan_processor_reads_through_to_the_original():
    model = TinyOpenSora()
    handle = timeripple.apply_timeripple(model, CONFIGS["channel"], scheduler=FlowMatchEulerDiscreteScheduler())
    try:
        for i, block in enumerate(model.blocks):
            proc, original = block.attn1.processor, handle.originals["transformer"][f"blocks.{i}.attn1"]
            assert isinstance(proc, OpenSoraPlanTimeRippleAttnProcessor)
            for name in ("sparse_n", "sparse_group", "sparse1d", "is_cross_attn", "interpolation_scale_thw"):
                assert getattr(proc, name) == getattr(original, name)
        with pytest.raises(AttributeError):
            block.attn1.processor.no_such_attribute
    finally:
        timeripple.remove_timeripple(model)


def test_open_sora_plan_sparse1d_layers_stay_stock():
    model = TinyOpenSora(num_layers=4, sparse1d=True)  # as v1.3: sparse1d from block 2 on
    handle = timeripple.apply_timeripple(model, CONFIGS["channel"], scheduler=FlowMatchEulerDiscreteScheduler())
    try:
        assert set(handle.originals["transformer"]) == {"blocks.0.attn1", "blocks.1.attn1"}
    finally:
        timeripple.remove_timeripple(model)


def test_open_sora_plan_sequence_parallel_is_refused():
    x, e, mask = _inputs(False)
    model = TinyOpenSora().eval()
    scheduler = FlowMatchEulerDiscreteScheduler()
    _SEQUENCE_PARALLEL[0] = True
    try:
        with pytest.raises(ValueError, match="sequence parallelism"):
            timeripple.apply_timeripple(model, CONFIGS["channel"], scheduler=scheduler)
        assert not any(isinstance(m.processor, OpenSoraPlanTimeRippleAttnProcessor)
                       for m in model.modules() if isinstance(m, Attention))  # rolled back
        _SEQUENCE_PARALLEL[0] = False
        timeripple.apply_timeripple(model, CONFIGS["channel"], scheduler=scheduler)
        _SEQUENCE_PARALLEL[0] = True  # turned on after apply: the first call refuses, even a dense step
        with pytest.raises(ValueError, match="sequence parallelism"), torch.no_grad():
            run_loop(model, scheduler, x, e, mask)
    finally:
        _SEQUENCE_PARALLEL[0] = False
        timeripple.remove_timeripple(model)
