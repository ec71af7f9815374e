"""``timeripple eval`` end to end on the shipped tiny model with 2 steps and 1 prompt (step 0 reuses,
step 1 is dense): files written, a method identical to dense scores PSNR inf, real methods score finite
PSNR at savings within the tolerance, the q/k/v capture gives the pipeline's own (B, H, N, D) tensors,
exact attention on them has no error, and a pipeline the harness cannot drive gets a clear error."""

import json
import math

import pytest
import torch

from timeripple import load_config
from timeripple.demo import load_tiny_pipeline
from timeripple.eval import Method, MethodSetup, attention_error, capture_attention, evaluate, get_method
from timeripple.eval.harness import check_pipeline
from timeripple.eval.methods import scaled
from timeripple.ripple_stats import RippleStats

PROMPT = "a green circle moving right slowly on a black background"
STEPS = 2
GUIDANCE = 1.0  # one transformer call per step: fast
CONFIG = load_config("wan2.1", mode="channel")
# threshold scale 0: nothing is reused, bit-identical to stock (the processors' own guarantee)
SAME_AS_DENSE = Method("same-as-dense", "channel mode at threshold 0", knob=None, savings="none",
                       build=lambda knob, config: MethodSetup(scaled(config, 0.0)))


def _exact(q, k, v, *, grid, text_len, text_position, attn_mask, attention_kwargs, step, num_steps, layer):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v), RippleStats.dense(q.shape)


EXACT = Method("exact", "exact attention", knob=None, savings="none", build=lambda knob, c: MethodSetup(c, _exact))


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(1)
    pipe = load_tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def captured(pipe):
    call = dict(prompt=[PROMPT], generator=[torch.Generator().manual_seed(0)], num_inference_steps=STEPS,
                guidance_scale=GUIDANCE, output_type="pt")
    return capture_attention(pipe, CONFIG, call, steps=[0], max_layers=2)


@pytest.fixture(scope="module")
def result(pipe, tmp_path_factory):
    result = evaluate(pipe, methods=["magnitude", "channel", SAME_AS_DENSE], levels=[0.5], prompts=[PROMPT],
                      seeds=[0], num_inference_steps=STEPS, guidance_scale=GUIDANCE, capture_steps=1,
                      capture_layers=2, progress=False)
    folder = tmp_path_factory.mktemp("eval")
    return result, result.save(folder), folder


def test_capture_gives_the_pipelines_own_tensors(captured):
    calls, (grid, text_len), num_layers = captured
    assert num_layers == 5 and grid == (9, 16, 16) and text_len == 0
    assert [c.layer for c in calls] == ["blocks.0.attn1", "blocks.4.attn1"] and {c.step for c in calls} == {0}
    for c in calls:
        assert c.q.shape == c.k.shape == c.v.shape == (1, 4, 9 * 16 * 16, 48)  # (B, H, N, D)
        assert c.attention_kwargs["threshold"] == pytest.approx(0.4) and c.num_steps == STEPS
        assert not torch.equal(c.q, c.k) and torch.isfinite(c.q).all()


def test_exact_method_has_no_error_and_channel_has_some(captured):
    calls = captured[0]
    exact = attention_error(EXACT, calls, CONFIG, None)
    assert exact["mse"] < 1e-12 and exact["savings"] == 0
    channel = attention_error(get_method("channel"), calls, CONFIG, 0.5)
    assert channel["all_converged"] and all(abs(r["savings"] - 0.5) <= 0.005 for r in channel["per_call"])
    assert 0 < channel["mse"] < 1e-2 and set(channel["per_step"]) == {0}


def test_end_to_end_files(result):
    res, files, folder = result
    for name in ("json", "markdown", "quality_plot", "per_step_plot", "attention_plot"):
        assert files[name].is_file() and files[name].stat().st_size > 0, name
    data = json.loads(files["json"].read_text())
    assert {r["method"] for r in data["rows"]} == {"magnitude", "channel", "same-as-dense"}
    assert data["settings"]["reusing_steps"] == [0] and data["settings"]["runs"] == 1
    text = files["markdown"].read_text()
    assert "| magnitude (q·kᵀ products) |" in text and "Attention-output MSE" in text


def test_dense_vs_dense_is_identical_and_methods_differ_at_matched_savings(result):
    res = result[0]
    same = res.row("same-as-dense", None)
    assert same["psnr"] == [math.inf] and same["savings_reusing"] == 0 and same["identical_runs"] == 1
    for name in ("magnitude", "channel"):
        row = res.row(name, 0.5)
        assert row["converged"], row["message"]
        assert abs(row["savings_reusing"] - 0.5) <= 0.005  # achieved, within the tolerance
        assert math.isfinite(row["psnr_mean"]) and 10 < row["psnr_mean"] < 100
        assert row["savings_total"] == pytest.approx(row["savings_reusing"] / STEPS)  # 1 of 2 steps reuses
        assert len(row["step_error"]) == STEPS and row["step_error"][0] > 0
        assert row["adherence"]["n"] == 1 and row["seconds_per_video"] > 0
    assert res.tensor_entry("channel", 0.5)["mse_vs_channel"] == pytest.approx(1.0)
    assert res.tensor_entry("magnitude", 0.5)["mse"] > 0


def test_unreachable_target_is_marked(pipe):
    weak = Method("weak", "saves at most 10%", knob="fraction", savings="q·kᵀ products", bounds=(0.0, 1.0),
                  log_knob=False, build=lambda f, config: get_method("magnitude").setup(0.05 * f, config))
    res = evaluate(pipe, methods=[weak], levels=[0.5], prompts=[PROMPT], seeds=[0], num_inference_steps=STEPS,
                   guidance_scale=GUIDANCE, tensor_level=False, per_step=False, progress=False)
    row = res.row("weak", 0.5)
    assert not row["converged"] and not row["reachable"] and row["knob"] == 1.0
    assert "cannot be reached" in row["message"] and f"{row['savings_reusing']:.2%}" in row["message"]
    assert "†" in res.markdown() and not res.tensor


class _NoGenerator:
    transformer = torch.nn.Linear(1, 1)

    def __call__(self, prompt, num_inference_steps=10):
        raise AssertionError("never called")


def test_a_pipeline_it_cannot_drive():
    with pytest.raises(ValueError) as err:
        check_pipeline(_NoGenerator())
    assert "generator" in str(err.value) and "output_type" in str(err.value)
    with pytest.raises(ValueError, match="output_type"):
        evaluate(_NoGenerator(), methods=["channel"], levels=[0.5], prompts=[PROMPT], seeds=[0])
    with pytest.raises(TypeError, match="transformer"):
        check_pipeline(lambda prompt, generator, num_inference_steps, output_type: None)
    with pytest.raises(ValueError, match="search_runs"):
        evaluate(_NoGenerator(), methods=["channel"], prompts=[PROMPT], seeds=[0], search_runs=2)


def test_attention_fn_replaces_ripple_attention_on_reusing_steps_only(pipe):
    import timeripple

    seen = []

    def quarter(q, k, v, *, grid, text_len, text_position, attn_mask, attention_kwargs, step, num_steps, layer):
        seen.append((step, num_steps, layer, tuple(grid), attention_kwargs["mode"]))
        stats = RippleStats.dense(q.shape)
        stats.qk_savings = torch.full_like(stats.qk_savings, 0.25)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v), stats

    with pytest.raises(TypeError, match="attention_fn"):
        timeripple.apply_timeripple(pipe, CONFIG, attention_fn="not callable")
    timeripple.apply_timeripple(pipe, CONFIG, attention_fn=quarter)
    try:
        pipe([PROMPT], num_inference_steps=STEPS, guidance_scale=GUIDANCE, generator=torch.Generator().manual_seed(0))
        stats = timeripple.get_stats(pipe)
    finally:
        timeripple.remove_timeripple(pipe)
    assert {s[0] for s in seen} == {0} and len(seen) == 5  # step 0 of 2 reuses, 5 layers, 1 call each
    assert seen[0][1:] == (STEPS, "blocks.0.attn1", (9, 16, 16), "channel")
    assert stats.step_savings == [pytest.approx(0.25), 0.0]


def test_runs_are_generated_in_their_dense_batches():
    from timeripple.eval.runner import Runner

    runner = Runner(None, [("p", s) for s in range(5)], {}, 2, torch.device("cpu"), False, False, None)
    assert runner._slots([0]) == [0, 1] and runner._slots([3]) == [2, 3] and runner._slots([4]) == [4]
    assert runner._slots([1, 4]) == [0, 1, 4] and runner._slots([]) == []
