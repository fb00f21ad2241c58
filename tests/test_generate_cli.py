"""`melody generate`, `continue` and `stream` through the CLI on a tiny random bundle: files, sidecars, errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from test_cli import melody_one_thread
from test_pipeline import bundle  # noqa: F401 (the fixture)
from test_semantic_stages import one_line_error, run_ok

RATE = 8_000


def test_generate_writes_audio_sidecar_and_plot(bundle, tmp_path):  # noqa: F811
    out = tmp_path / "song.wav"
    done = run_ok("generate", "calm piano", "--duration", "1.5", "--out", str(out), "--bundle", str(bundle), "--seed", "4",
                  "--steps", "2", "--plot")
    audio, rate = sf.read(out)
    assert rate == RATE and audio.shape == (round(1.5 * RATE),)
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["prompt"] == "calm piano" and record["seed"] == 4 and record["steps"] == 2
    assert record["forward_passes"]["semantic_lm"] == 38 and record["forward_passes"]["vae"] == 1
    assert record["config"]["dpd"]["precision"] == "fp32"
    assert out.with_suffix(".png").is_file() and "forward passes" in done.stdout
    again = tmp_path / "again.wav"
    run_ok("generate", "calm piano", "--duration", "1.5", "--out", str(again), "--bundle", str(bundle), "--seed", "4", "--steps", "2")
    assert np.array_equal(sf.read(again)[0], audio)  # the seed reproduces


def test_generate_a_batch_and_from_a_music_prompt(bundle, tmp_path):  # noqa: F811
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("funk\n\ncalm piano\n")
    run_ok("generate", "--batch", str(prompts), "--duration", "1", "--out", str(tmp_path / "b.wav"), "--bundle", str(bundle))
    assert [json.loads((tmp_path / f"b-{i:03d}.json").read_text())["prompt"] for i in range(2)] == ["funk", "calm piano"]
    music = tmp_path / "prompt.wav"
    sf.write(music, 0.2 * np.sin(np.arange(RATE) * 0.05), RATE)
    run_ok("generate", "--prompt-audio", str(music), "--duration", "1", "--out", str(tmp_path / "m.wav"), "--bundle", str(bundle))
    assert sf.read(tmp_path / "m.wav")[0].shape == (RATE,)


def test_continue_keeps_the_input_and_stream_writes_every_chunk(bundle, tmp_path):  # noqa: F811
    clip = tmp_path / "in.wav"
    original = (0.2 * np.sin(np.arange(int(1.3 * RATE)) * 0.03)).astype(np.float32)
    sf.write(clip, original, RATE, subtype="FLOAT")
    run_ok("continue", str(clip), "--seconds", "1", "--out", str(tmp_path / "c.wav"), "--bundle", str(bundle))
    continued = sf.read(tmp_path / "c.wav", dtype="float32")[0]
    assert continued.shape == (original.size + RATE,)
    np.testing.assert_allclose(continued[: original.size], original, atol=1 / 32767)  # 16-bit file
    story = tmp_path / "story.txt"
    story.write_text("funk\nfunk\ncalm piano\n")
    run_ok("stream", "--prompts", str(story), "--chunk-seconds", "0.6", "--out", str(tmp_path / "s.wav"), "--bundle", str(bundle))
    assert sf.read(tmp_path / "s.wav")[0].shape == (round(3 * 0.6 * RATE),)
    raw = subprocess.run([sys.executable, "-m", "melody.cli", "stream", "--prompts", str(story), "--chunk-seconds", "0.6",
                          "--out", "-", "--bundle", str(bundle)], capture_output=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "CI": "1"})  # $CI makes pyfluidsynth print
    assert raw.returncode == 0, raw.stderr
    pcm = np.frombuffer(raw.stdout, dtype="<i2")  # raw 16-bit PCM, chunk by chunk: the same music as the file
    assert pcm.size == round(3 * 0.6 * RATE)
    np.testing.assert_allclose(pcm / 32767, sf.read(tmp_path / "s.wav")[0], atol=2 / 32767)


@pytest.mark.parametrize("args, message", [
    (["generate", "", "--duration", "1"], "a prompt is empty"),
    (["generate", "funk", "--duration", "0"], "positive number of seconds"),
    (["generate", "funk", "--duration", "-3"], "positive number of seconds"),
    (["generate", "funk", "--duration", "100000"], "beyond the limit"),
    (["generate", "--duration", "1"], "exactly one of"),
    (["generate", "funk", "--out", "x.mp3"], "give a .wav or .flac"),
    (["generate", "--prompt-audio", "/nonexistent.wav"], "no such audio file"),
    (["continue", "/nonexistent.wav"], "no such audio file"),
    (["generate", "funk", "--precision", "fp16"], "--precision fp16: choose one of fp32, bf16"),
    (["generate", "funk", "--steps", "0"], "steps must be a whole number of DPD steps, 1 or more, got 0"),
    (["generate", "funk", "--guidance", "-1"], "guidance must be a number ≥ 0"),
    (["generate", "funk", "--temperature", "-0.5"], "temperature must be a number ≥ 0"),
    (["generate", "funk", "--temperature", "nan"], "temperature must be a number ≥ 0"),
    (["generate", "funk", "--top-k", "-3"], "top_k must be a whole number ≥ 0"),
    (["generate", "funk", "--lm-guidance", "inf"], "lm_guidance must be a number ≥ 0"),
    (["stream", "--prompts", "/dev/null", "--temperature", "-1"], "temperature must be a number ≥ 0"),
    (["generate", "funk", "--solver", "euler"], "unknown DPD solver 'euler'; choose one of: ddim, dpmpp-2m"),
    (["generate", "funk", "--device", "tpu"], "--device tpu: give cpu or cuda[:N]"),
    (["generate", "funk", "--device", "meta"], "--device meta: give cpu or cuda[:N]"),
    pytest.param(["generate", "funk", "--device", "cuda"], "this machine has no CUDA GPU that torch can use",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")),
])
def test_bad_input_is_one_line_and_writes_nothing(bundle, tmp_path, args, message):  # noqa: F811
    out = melody_one_thread(*args, "--bundle", str(bundle), *(() if "--out" in args else ("--out", str(tmp_path / "x.wav"))))
    assert message in one_line_error(out)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_bundle_is_one_line(tmp_path):
    out = melody_one_thread("generate", "funk", "--bundle", str(tmp_path / "nope"), "--out", str(tmp_path / "x.wav"))
    assert "no such bundle folder" in one_line_error(out)


def test_a_corrupt_or_mismatched_bundle_is_one_line_and_writes_nothing(bundle, tmp_path):  # noqa: F811
    import shutil

    out = tmp_path / "out"
    out.mkdir()
    truncated = tmp_path / "truncated"
    shutil.copytree(bundle, truncated)
    weights = truncated / "dpd" / "dpd.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    message = one_line_error(melody_one_thread("generate", "funk", "--bundle", str(truncated), "--out", str(out / "x.wav")))
    assert "dpd.safetensors" in message and "corrupt or truncated" in message
    swapped = tmp_path / "swapped"
    shutil.copytree(bundle, swapped)
    shutil.copy(swapped / "vae" / "vae.safetensors", swapped / "dpd" / "dpd.safetensors")  # another stage's weights
    message = one_line_error(melody_one_thread("generate", "funk", "--bundle", str(swapped), "--out", str(out / "x.wav")))
    assert "dpd.safetensors" in message
    assert list(out.iterdir()) == []


def test_generate_in_bf16_says_so_in_its_record(bundle, tmp_path):  # noqa: F811
    out = tmp_path / "bf16.wav"
    run_ok("generate", "calm piano", "--duration", "1", "--out", str(out), "--bundle", str(bundle), "--steps", "2",
           "--precision", "bf16", "--device", "cpu")
    assert sf.read(out)[0].shape == (RATE,)
    config = json.loads(out.with_suffix(".json").read_text())["config"]
    assert config["dpd"]["precision"] == config["semantic_lm"]["precision"] == "bf16"


def test_stream_compile_without_a_working_compiler_is_one_line_and_no_file(bundle, tmp_path):  # noqa: F811
    """Inductor compiles C++ on a CPU: without a compiler (`CXX` pointing nowhere, and an empty inductor cache so that
    nothing compiled earlier is reused) `--compile` fails in one line naming the way out, before any audio is written."""
    story = tmp_path / "story.txt"
    story.write_text("funk\n")
    out = tmp_path / "s.wav"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CXX": str(tmp_path / "no-such-g++"),
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    done = subprocess.run([sys.executable, "-m", "melody.cli", "stream", "--prompts", str(story), "--chunk-seconds",
                           "0.6", "--out", str(out), "--bundle", str(bundle), "--compile", "--no-progress"],
                          capture_output=True, text=True, timeout=300, env=env)
    line = one_line_error(done)
    assert "torch.compile failed" in line and "No working C++ compiler" in line and "run without --compile" in line
    assert not out.exists() and not list(tmp_path.glob("s*.wav*"))


def test_stream_compile_sets_both_samplers_to_compile(bundle):  # noqa: F811
    """What `stream --compile` loads (the compiled samplers' music: tests/test_pipeline.py)."""
    from melody.cli import _melody

    model = _melody(bundle, None, True)
    assert model.cfg.semantic_lm.compile and model.cfg.dpd.compile
    plain = _melody(bundle)
    assert not plain.cfg.semantic_lm.compile and not plain.cfg.dpd.compile


def test_the_lm_sampling_options_reach_the_lm_and_the_sidecar(bundle, tmp_path):  # noqa: F811
    from melody.pipeline import MeLoDy

    greedy = tmp_path / "greedy.wav"
    run_ok("generate", "calm piano", "--duration", "1", "--out", str(greedy), "--bundle", str(bundle), "--seed", "4",
           "--steps", "4", "--temperature", "0", "--top-k", "5", "--lm-guidance", "1.5", "--solver", "ddim")
    record = json.loads(greedy.with_suffix(".json").read_text())
    assert record["sampling"] == {"steps": 4, "guidance": 2.5, "solver": "ddim", "temperature": 0.0, "top_k": 5,
                                  "top_p": 1.0, "lm_guidance": 1.5}
    model = MeLoDy.from_pretrained(bundle)
    model.cfg.dpd.solver = "ddim"
    want = model.generate(["calm piano"], 1.0, 4, None, 0.0, 5, 1.5, seed=4).audio[0, 0].numpy()
    np.testing.assert_allclose(sf.read(greedy)[0], want, atol=1 / 32767)  # 16-bit file
    default = model.generate(["calm piano"], 1.0, 4, None, seed=4).audio[0, 0].numpy()
    assert np.abs(default - want).max() > 0.01  # the options changed the music
    model.cfg.dpd.solver = "dpmpp-2m"  # the tiny preset's, which the sidecar of a run without --solver names
    assert np.abs(model.generate(["calm piano"], 1.0, 4, None, 0.0, 5, 1.5, seed=4).audio[0, 0].numpy() - want).max() > 1e-4
    run_ok("continue", str(greedy), "--seconds", "0.5", "--out", str(tmp_path / "c.wav"), "--bundle", str(bundle),
           "--top-k", "3")
    sampling = json.loads((tmp_path / "c.json").read_text())["sampling"]
    assert sampling["top_k"] == 3 and sampling["temperature"] == model.cfg.semantic_lm.temperature
    assert sampling["solver"] == "dpmpp-2m"
