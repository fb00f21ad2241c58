"""`melody bench` and its pieces: exact forward-call counts, the paper's formulas, roofline arithmetic, and the report
on a tiny random bundle and a tiny random MusicGen (untrained weights; no timing is asserted, only counts and keys)."""

import json
import math

import pytest
import torch
from test_cli import melody_one_thread
from test_pipeline import bundle  # noqa: F401 (the fixture)
from test_semantic_stages import one_line_error
from torch import nn

from melody.errors import MelodyError
from melody.eval.bench import chart, comparisons, markdown, parse_runs, run_bench, summary
from melody.eval.passes import ForwardCounter, dpd_windows, melody_passes, musicgen_passes, table3
from melody.eval.roofline import bound_seconds, flops_of_call, streamed_bytes

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STAGE_KEYS = {"role", "passes", "hooked", "formula", "seconds", "network_seconds", "flops", "weight_bytes", "parameters",
              "bound_by", "note", "compute_s", "memory_s", "bound_s", "over_bound"}


class Toy(nn.Module):
    """A block applied `repeats` times per call and a head once: every count is known."""

    def __init__(self, repeats: int = 3) -> None:
        super().__init__()
        self.block, self.head, self.repeats = nn.Linear(4, 4), nn.Linear(4, 2), repeats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.repeats):
            x = self.block(x)
        return self.head(x)


def tiny_musicgen_config() -> dict:
    """A 1-layer MusicGen (hidden 16) over a 1-layer T5 and a 4-filter EnCodec at 8 kHz / 160 = 50 Hz, 4 codebooks."""
    from transformers import EncodecConfig, MusicgenConfig, MusicgenDecoderConfig, T5Config
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    text = T5Config(vocab_size=100, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    codec = EncodecConfig(sampling_rate=8000, upsampling_ratios=[8, 5, 4], num_filters=4, hidden_size=8, codebook_size=2048,
                          codebook_dim=8, target_bandwidths=[2.2], num_lstm_layers=1, use_causal_conv=False, normalize=False,
                          use_conv_shortcut=False)
    decoder = MusicgenDecoderConfig(vocab_size=2048, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, ffn_dim=32,
                                    num_codebooks=4, pad_token_id=2048, bos_token_id=2048, max_position_embeddings=256)
    return MusicgenConfig(text_encoder=text, audio_encoder=codec, decoder=decoder).to_dict()


def test_the_counter_counts_exactly_the_calls_made_inside_its_block():
    toy = Toy(repeats=3)
    toy(torch.zeros(1, 4))  # before the block: not counted
    with ForwardCounter({"toy": toy, "block": toy.block, "head": toy.head}) as counter:
        for _ in range(5):
            toy(torch.zeros(2, 4))
        toy.block.forward(torch.zeros(1, 4))  # a direct .forward() bypasses __call__: not a counted pass
    toy(torch.zeros(1, 4))  # after the block: not counted
    assert counter.calls == {"toy": 5, "block": 15, "head": 5}
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in toy.modules())  # hooks removed


def test_the_counter_starts_from_zero_at_each_block_and_counts_a_module_under_every_name():
    toy = Toy(repeats=2)
    counter = ForwardCounter({"a": toy.block, "b": toy.block})
    with counter:
        toy(torch.zeros(1, 4))
    with counter:
        toy(torch.zeros(1, 4))
        toy(torch.zeros(1, 4))
    assert counter.calls == {"a": 4, "b": 4}


def test_the_counter_keeps_the_first_call_of_each_input_signature_with_its_count():
    toy = Toy(repeats=1)
    a, b, c = torch.zeros(2, 4), torch.ones(2, 4), torch.zeros(3, 4)
    with ForwardCounter({"toy": toy}, keep_inputs=("toy",)) as counter:
        toy(a)
        toy(b)
        toy(c)
    kept = sorted(counter.inputs["toy"].values(), key=lambda k: -k[2])
    assert [k[2] for k in kept] == [2, 1]
    assert kept[0][0][0] is a and kept[1][0][0] is c  # the first call of each shape, as it was made
    with pytest.raises(ValueError, match="not counted"):
        ForwardCounter({"toy": toy}, keep_inputs=("other",))


def test_flops_of_a_linear_call_are_two_m_n_k():
    layer = nn.Linear(4, 3)
    assert flops_of_call(layer, (torch.zeros(5, 4),), {}) == 2 * 5 * 4 * 3


def test_streamed_bytes_leave_out_embedding_tables_and_count_a_tied_one_once():
    class LM(nn.Module):
        def __init__(self, tie: bool) -> None:
            super().__init__()
            self.table, self.mix, self.out = nn.Embedding(10, 4), nn.Linear(4, 4), nn.Linear(4, 10, bias=False)
            if tie:
                self.out.weight = self.table.weight

    assert streamed_bytes(LM(tie=False)) == (4 * 4 + 4 + 4 * 10) * 4  # mix and out; the table's rows are looked up
    assert streamed_bytes(LM(tie=True)) == (4 * 4 + 4 + 10 * 4) * 4  # the tied table is read in full by `out`, once


def test_the_roofline_bound_is_the_larger_of_compute_and_memory():
    both = bound_seconds(10, flops_per_pass=2e9, bytes_per_pass=1e8, flops_per_s=1e10, bytes_per_s=1e10)
    assert both == pytest.approx({"compute_s": 2.0, "memory_s": 0.1, "bound_s": 2.0})
    weights_only = bound_seconds(10, None, 1e8, 1e10, 1e9)
    assert weights_only["compute_s"] is None and weights_only["bound_s"] == pytest.approx(1.0)


def test_table3_gives_the_papers_numbers_and_keeps_the_abstracts_claim_apart():
    ten, thirty = table3(10), table3(30)
    assert (ten["musiclm"], ten["melody"], thirty["musiclm"], thirty["melody"]) == (6250, 270, 18750, 770)
    assert round(100 * ten["reduction_vs_musiclm"], 1) == -95.7 and round(100 * thirty["reduction_vs_musiclm"], 1) == -95.9
    assert ten["abstract_reduction"] == thirty["abstract_reduction"] == -0.996
    assert ten["noise2music"] == 2600


def test_pass_formulas_follow_the_pipeline_and_the_delay_pattern():
    assert dpd_windows(2.7, 1.0, 50, 2) == 1 + math.ceil((math.ceil(2.7 * 50) - 50) / 25)  # tests/test_pipeline.py's count
    assert dpd_windows(10, 10.0, 125, 5) == 1 and dpd_windows(30, 10.0, 125, 5) == 5
    assert melody_passes(10, 5, 1) == {"mulan": 1, "semantic_lm": 250, "dpd": 5, "vae": 1}
    assert musicgen_passes(10, 50, 4) == {"text_encoder": 1, "decoder": 503, "audio_decoder": 1}


def test_bench_on_a_tiny_bundle_reports_the_formulas_counts(bundle, tmp_path):  # noqa: F811
    out = melody_one_thread("bench", str(bundle), "--seconds", "2.7", "--threads", "1", "--out", str(tmp_path / "b"),
                            "--shapes", "bundled", "--shapes", "bundled@bf16", "--no-progress")
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert set(report) == {"machine", "runs", "mismatches", "comparisons", "table3", "command", "complete"}
    assert report["complete"]
    assert report["machine"]["matmul_gflops"]["float32"] > 0 and report["machine"]["copy_gb_s"] > 0
    run, bf16 = report["runs"]
    assert (run["model"], run["shapes"], run["seconds"], run["steps"]) == ("melody", "bundled", 2.7, 2)
    assert (run["dpd_precision"], bf16["dpd_precision"], bf16["shapes"]) == ("fp32", "bf16", "bundled@bf16")
    assert (run["lm_precision"], bf16["lm_precision"]) == ("fp32", "bf16")
    lm, lm16 = run["stages"]["semantic_lm"], bf16["stages"]["semantic_lm"]
    assert lm16["weight_bytes"] * 2 == lm["weight_bytes"] and lm16["hooked"] == lm["hooked"] > 0  # the bf16 copy is counted
    machine = report["machine"]["matmul_gflops"]
    for r, dtype in ((run, "float32"), (bf16, "bfloat16")):  # the DPD's bound from the throughput of its precision
        dpd = r["stages"]["dpd"]
        assert dpd["compute_s"] == pytest.approx(dpd["flops"] / (machine[dtype] * 1e9), rel=1e-6)
    assert {k: s["hooked"] for k, s in bf16["stages"].items()} == {k: s["hooked"] for k, s in run["stages"].items()}
    expected = melody_passes(2.7, 2, dpd_windows(2.7, 1.0, 50, 2))  # the bundle's 1 s DPD windows at 50 Hz, 2 steps
    assert {k: s["hooked"] for k, s in run["stages"].items()} == expected
    for stage in run["stages"].values():
        assert set(stage) == STAGE_KEYS
        assert stage["passes"] == stage["hooked"] == stage["formula"]
        assert stage["bound_s"] > 0 and stage["over_bound"] == pytest.approx(stage["seconds"] / stage["bound_s"])
    assert report["mismatches"] == []
    assert run["rtf"] == pytest.approx(run["wall_s"] / 2.7)
    assert run["audio_seconds"] == pytest.approx(2.7) and run["peak_rss_mb"] > 0
    assert run["stages"]["dpd"]["flops"] > 0 and run["stages"]["semantic_lm"]["compute_s"] is None  # LMs: weights bound
    (row,) = report["table3"]
    assert row["musiclm"] == pytest.approx(625 * 2.7) and row["measured"]["bundled (2 steps)"]["all_stages"] == sum(expected.values())
    assert "| bundled 2.7 s | dpd |" in (tmp_path / "b" / "bench.md").read_text()
    assert (tmp_path / "b" / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_with_musicgen_counts_its_decoder_steps_and_compares(bundle, tmp_path):  # noqa: F811
    partials = []
    report = run_bench(bundle, [1.0], ["bundled", "musicgen-small"], threads=1, musicgen_config=tiny_musicgen_config(),
                       partial=partials.append)
    assert [(len(p["runs"]), p["complete"]) for p in partials] == [(1, False)] and report["complete"]
    melody_run, musicgen = report["runs"]
    assert musicgen["model"] == "musicgen" and musicgen["audio_seconds"] == pytest.approx(1.0)  # 50 frames × 160 samples
    decoder = musicgen["stages"]["decoder"]
    assert decoder["formula"] == 50 + 3 and decoder["passes"] == decoder["hooked"]
    assert decoder["hooked"] - decoder["formula"] == (1 if decoder["note"] else 0)  # transformers' extra prefill, named
    assert [line.startswith("musicgen-small 1 s decoder") for line in report["mismatches"]] == ([True] if decoder["note"] else [])
    assert musicgen["stages"]["text_encoder"]["hooked"] == musicgen["stages"]["audio_decoder"]["hooked"] == 1
    assert musicgen["sizes"]["decoder"]["num_hidden_layers"] == 1
    assert report["command"]["musicgen_config"] == "given by the caller"
    (c,) = report["comparisons"]
    assert c["time_ratio"] == pytest.approx(musicgen["wall_s"] / melody_run["wall_s"])
    assert c["passes_ratio"] == pytest.approx(musicgen["total_passes"] / melody_run["total_passes"])

    # a CUDA run's reruns with graphs and with the compiled samplers (`--compile`), as a GPU writes them: the ratios,
    # the tables, the summary and the chart take them, and a failed compilation is reported, not fatal
    seconds = {name: s["seconds"] for name, s in melody_run["stages"].items()}
    rerun = {"rtf": 0.0, "stage_seconds": seconds, "passes": {}, "peak_gpu_mb": 10.0, "tokens_equal_eager": True,
             "audio_max_abs_diff_eager": 0.0}
    melody_run["graphed"] = {**rerun, "wall_s": melody_run["wall_s"] / 2, "record_s": 1.0}
    melody_run["compiled"] = {**rerun, "wall_s": melody_run["wall_s"] / 4, "record_s": 30.0}
    (c,) = report["comparisons"] = comparisons(report["runs"])
    assert c["time_ratio_compiled"] == pytest.approx(4 * c["time_ratio"]) == pytest.approx(2 * c["time_ratio_graphed"])
    text = markdown(report)
    assert "| bundled 1 s compiled |" in text and f"| {c['time_ratio_compiled']:.3g} |" in text
    assert "compiled, with CUDA graphs" in summary(report) and "compiled)" in summary(report)
    chart(report, tmp_path / "chart.png")
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    melody_run["compiled"] = {"error": "BackendCompilerFailed: no C compiler"}
    (c,) = report["comparisons"] = comparisons(report["runs"])
    assert c["time_ratio_compiled"] is None
    assert "The compiled run of bundled 1 s failed: BackendCompilerFailed: no C compiler" in markdown(report)
    assert "compiled, with CUDA graphs" not in summary(report)


@pytest.mark.parametrize("shapes, seconds, message", [
    (["bundled"], [-1.0], "positive number of seconds"),
    (["bundled"], [0.0], "positive number of seconds"),
    (["huge"], [10.0], "unknown shape set 'huge'"),
    (["paper:ten"], [10.0], "give durations as NAME:SECONDS"),
    (["paper:-5"], [10.0], "positive number of seconds"),
])
def test_bad_runs_are_one_line_errors(shapes, seconds, message):
    with pytest.raises(MelodyError, match=message):
        parse_runs(shapes, seconds)


def test_own_durations_limit_what_a_shape_set_runs():
    assert parse_runs(["bundled", "paper:10", "musicgen-small:10,30"], [10.0, 30.0]) == [
        ("bundled", 10.0), ("bundled", 30.0), ("paper", 10.0), ("musicgen-small", 10.0), ("musicgen-small", 30.0)]


@pytest.mark.parametrize("args, message", [
    (("--seconds", "-1"), "positive number of seconds"),
    (("--shapes", "huge"), "unknown shape set 'huge'"),
    (("--threads", "0"), "--threads must be at least 1"),
    (("--steps", "5", "--steps", "0"), "--steps must be at least 1, got 0"),
    (("--compile",), "--compile times the compiled samplers under CUDA graphs: give --device cuda"),
])
def test_bench_cli_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    line = one_line_error(melody_one_thread("bench", *args, "--out", str(tmp_path)))
    assert message in line


def test_children_wait_passively_unless_the_environment_says_otherwise(monkeypatch):
    from melody.eval.bench import child_environment

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert child_environment(2)["OMP_WAIT_POLICY"] == "PASSIVE" and child_environment(2)["OMP_NUM_THREADS"] == "2"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert child_environment(2)["OMP_WAIT_POLICY"] == "ACTIVE"


def test_musicgen_at_bf16_runs_with_bf16_weights_and_is_compared_by_its_name_at_each_step_count(bundle):  # noqa: F811
    """Several --steps: each MeLoDy shape set runs at each (labelled by it), MusicGen once, compared with every one."""
    report = run_bench(bundle, [1.0], ["bundled", "musicgen-small@bf16"], threads=1, steps=[1, 2],
                       musicgen_config=tiny_musicgen_config())
    one, two, musicgen = report["runs"]
    assert [r["label"] for r in report["runs"]] == ["bundled 1 s, 1 step", "bundled 1 s, 2 steps", "musicgen-small@bf16 1 s"]
    assert (one["steps"], two["steps"], musicgen["steps"]) == (1, 2, None)
    assert (one["stages"]["dpd"]["hooked"], two["stages"]["dpd"]["hooked"]) == (1, 2)  # one 1 s window
    assert musicgen["model"] == "musicgen" and musicgen["weights_dtype"] == "bfloat16"
    assert musicgen["audio_seconds"] == pytest.approx(1.0) and musicgen["stages"]["decoder"]["formula"] == 53
    assert [(c["musicgen"], c["melody"], c["melody_steps"]) for c in report["comparisons"]] == [
        ("musicgen-small@bf16", "bundled", 1), ("musicgen-small@bf16", "bundled", 2)]
    assert set(report["table3"][0]["measured"]) == {"bundled (1 step)", "bundled (2 steps)"}
