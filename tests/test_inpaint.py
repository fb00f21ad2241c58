"""Inpainting (`MeLoDy.inpaint`, `melody inpaint`) on the tiny random bundle of test_pipeline: what is kept, what is
made anew, window by window, seeds, counts and errors."""

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from test_cli import melody_one_thread
from test_diffusion import _window_oracle, draws
from test_pipeline import bundle, melody  # noqa: F401 (the fixtures)
from test_semantic_stages import one_line_error, run_ok

from melody.data.loader import mix_seeds
from melody.diffusion import angles_from_steps, inpaint_latents, melody_steps
from melody.errors import MelodyError
from melody.pipeline import region_windows, splice

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RATE = 8_000  # the tiny bundle: 50 Hz latents (2 per 25 Hz token), DPD windows of 50 frames, 2 steps, guidance 2.5


def _clip(seconds: float, rows: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(round(seconds * RATE)) / RATE
    tone = 0.3 * torch.sin(2 * math.pi * (220 + 110 * torch.arange(rows))[:, None] * t)
    return (tone + 0.02 * torch.randn(rows, t.numel(), generator=g)).clamp(-1, 1)[:, None]  # (rows, 1, n)


def _outside(x: torch.Tensor, start: float, end: float, blend: float) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., : round((start - blend) * RATE)], x[..., round((end + blend) * RATE):]


def test_inpainting_keeps_the_input_outside_the_region_and_its_length(melody):  # noqa: F811
    clip = _clip(2.0, rows=2)
    out = melody.inpaint(clip, 0.6, 1.2, seed=5)
    assert out.audio.shape == clip.shape and out.audio.dtype == torch.float32
    for kept, given in zip(_outside(out.audio, 0.6, 1.2, 0.1), _outside(clip, 0.6, 1.2, 0.1)):
        assert torch.equal(kept, given)  # bit for bit, outside the region and its crossfades
    region = slice(round(0.6 * RATE), round(1.2 * RATE))
    for row in range(2):
        assert (out.audio[row, :, region] - clip[row, :, region]).abs().mean() > 1e-3  # made anew, in every row
    # tokens: the input's own before and after the region (tokens 15 … 29), the LM's inside
    own = melody.tokenizer.tokens(clip.mean(1))
    assert out.semantic_tokens.shape == own.shape
    assert torch.equal(out.semantic_tokens[:, :15], own[:, :15]) and torch.equal(out.semantic_tokens[:, 30:], own[:, 30:])
    # latents: the encoded input, exactly, outside the region's frames 30 … 59; new inside
    encoded = melody.vae.encode_latents(clip, [torch.Generator().manual_seed(mix_seeds(5 + i, 3)) for i in range(2)])
    assert out.latents.shape == encoded.shape
    assert torch.equal(out.latents[:, :30], encoded[:, :30]) and torch.equal(out.latents[:, 60:], encoded[:, 60:])
    assert not torch.equal(out.latents[:, 30:60], encoded[:, 30:60])


def test_the_crossfade_joins_input_and_new_audio_linearly_just_outside_the_region():
    original, replacement = torch.zeros(1, 1, 100), torch.ones(1, 1, 100)
    out = splice(original, replacement, 40, 60, 4)
    assert torch.equal(out[..., :36], original[..., :36]) and torch.equal(out[..., 64:], original[..., 64:])
    assert torch.equal(out[..., 40:60], replacement[..., 40:60])
    torch.testing.assert_close(out[0, 0, 36:40], torch.tensor([0.2, 0.4, 0.6, 0.8]))
    torch.testing.assert_close(out[0, 0, 60:64], torch.tensor([0.8, 0.6, 0.4, 0.2]))
    assert torch.equal(splice(original, replacement, 0, 100, 4), replacement)  # clipped at both ends
    assert torch.equal(splice(original, replacement, 40, 60, 0)[..., 40:60], replacement[..., 40:60])


def test_seed_reproduces_and_another_seed_differs_inside_the_region(melody):  # noqa: F811
    clip = _clip(1.6, seed=1)
    a = melody.inpaint(clip, 0.4, 1.0, seed=3)
    b = melody.inpaint(clip, 0.4, 1.0, seed=3)
    c = melody.inpaint(clip, 0.4, 1.0, seed=4)
    assert torch.equal(a.audio, b.audio) and torch.equal(a.latents, b.latents)
    region = slice(round(0.4 * RATE), round(1.0 * RATE))
    assert not torch.equal(a.audio[..., region], c.audio[..., region])
    for x, y in zip(_outside(a.audio, 0.4, 1.0, 0.1), _outside(c.audio, 0.4, 1.0, 0.1)):
        assert torch.equal(x, y)


def test_a_region_at_the_clips_edges_works(melody):  # noqa: F811
    clip = _clip(1.3, seed=5)  # 1.3 s: 65 latent frames, 33 tokens (the last one half covered)
    head = melody.inpaint(clip, 0.0, 0.5, blend=0.05)
    assert torch.equal(head.audio[..., round(0.55 * RATE):], clip[..., round(0.55 * RATE):])
    tail = melody.inpaint(clip, 0.9, 1.3, blend=0.05)
    assert torch.equal(tail.audio[..., : round(0.85 * RATE)], clip[..., : round(0.85 * RATE)])
    whole = melody.inpaint(clip, 0.0, 1.3)
    assert whole.audio.shape == clip.shape and whole.forward_passes["semantic_lm"] == 33
    for out in (head, tail, whole):
        assert out.audio.shape == clip.shape and bool(torch.isfinite(out.audio).all())


def test_a_prompt_conditions_the_region(melody):  # noqa: F811
    clip = _clip(1.6, seed=2)
    own = melody.inpaint(clip, 0.4, 1.0, seed=3, lm_guidance=30.0)
    texted = melody.inpaint(clip, 0.4, 1.0, prompts=["calm piano"], seed=3, lm_guidance=30.0)
    assert not torch.equal(own.semantic_tokens[:, 10:25], texted.semantic_tokens[:, 10:25])


def test_forward_passes_are_counted_per_stage(melody):  # noqa: F811
    out = melody.inpaint(_clip(2.0), 0.5, 1.3, steps=3, guidance=2.5)  # tokens 12 … 32, frames 24 … 65
    windows = len(region_windows(24, 66, 100, 50, 24, 2))
    assert windows == 2  # 42 new frames and 24 clean ones do not fit one 50-frame window
    assert out.forward_passes == {"mulan": 1, "tokenizer": 1, "semantic_lm": 21, "dpd": windows * 3, "vae": 2}
    assert set(out.seconds) == set(out.forward_passes)
    unguided = melody.inpaint(_clip(2.0), 0.5, 1.3, steps=3, guidance=1.0)
    assert unguided.forward_passes["dpd"] == windows * 3


def test_a_region_longer_than_a_window_is_made_window_by_window(melody):  # noqa: F811
    clip = _clip(3.0, seed=3)
    plan = region_windows(10, 140, 150, 50, 24, 2)  # the region 0.2 … 2.8 s: tokens 5 … 69, frames 10 … 139
    assert len(plan) == 5
    out = melody.inpaint(clip, 0.2, 2.8, seed=1)
    assert out.forward_passes["dpd"] == len(plan) * 2
    assert out.audio.shape == clip.shape
    for kept, given in zip(_outside(out.audio, 0.2, 2.8, 0.1), _outside(clip, 0.2, 2.8, 0.1)):
        assert torch.equal(kept, given)
    encoded = melody.vae.encode_latents(clip, [torch.Generator().manual_seed(mix_seeds(1 + i, 3)) for i in range(clip.shape[0])])
    assert torch.equal(out.latents[:, :10], encoded[:, :10]) and torch.equal(out.latents[:, 140:], encoded[:, 140:])
    for lo, first, new, _ in plan:  # every window made its new frames
        assert not torch.equal(out.latents[:, first:first + new], encoded[:, first:first + new])


@pytest.mark.parametrize("first, last, total", [(10, 140, 150), (0, 30, 100), (70, 100, 100), (0, 100, 100),
                                                (4, 16, 30), (20, 21, 200), (2, 199, 200)])
def test_region_windows_cover_the_region_once_left_to_right_inside_the_clip(first, last, total):
    window, context = 50, 24
    plan = region_windows(first, last, total, window, context, align=2)
    made = first
    for lo, new_first, new, hi in plan:
        assert 0 <= lo <= new_first and new > 0 and new_first + new <= hi <= total and hi - lo <= window
        assert new_first == made  # contiguous, left to right
        if (lo, new_first, new, hi) != plan[-1]:  # continuing: clean frames on the left only
            assert new_first - lo == min(context, new_first) and new == window - context and hi == new_first + new
        made += new
    assert made == last
    lo, new_first, new, hi = plan[-1]
    assert (hi - lo) - new >= min(context, total - new)  # clean frames enough, where the clip has them
    if hi - lo == window and last < total and first > 0:  # the last window has clean frames on both sides
        assert new_first > lo and hi > new_first + new


def test_an_oracle_fills_a_hole_exactly():
    z0 = draws(1, 60, 4, seed=21)
    hole = z0.clone()
    hole[:, 20:45] = 0.0
    made = inpaint_latents(_window_oracle(z0), hole, 20, 25, None, angles_from_steps(melody_steps(5)),
                           generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(made, z0[:, 20:45], rtol=0, atol=1e-9)


@pytest.mark.parametrize("start, end, kwargs, message", [
    (-0.1, 0.5, {}, "before the clip"),
    (0.5, 0.5, {}, "not after its start"),
    (0.8, 0.3, {}, "not after its start"),
    (0.5, 1.3, {}, "beyond the end of the 1.000 s clip"),
    (0.5, 0.52, {}, "shorter than one semantic token"),
    (float("nan"), 0.5, {}, "must be a number"),
    (0.2, 0.6, {"blend": -0.1}, "crossfade must be 0 or more"),
    (0.2, 0.6, {"prompts": ["funk", "calm"]}, "2 prompts for 1 clips"),
    (0.2, 0.6, {"prompts": [""]}, "a prompt is empty"),
])
def test_bad_input_is_a_one_line_error(melody, start, end, kwargs, message):  # noqa: F811
    with pytest.raises(MelodyError, match=message) as err:
        melody.inpaint(_clip(1.0), start, end, **kwargs)
    assert "\n" not in str(err.value)


def test_audio_of_the_wrong_shape_is_a_one_line_error(melody):  # noqa: F811
    with pytest.raises(MelodyError, match="must be \\(batch, 1, samples\\)"):
        melody.inpaint(_clip(1.0)[:, 0], 0.2, 0.6)


def test_the_cli_writes_the_audio_and_its_sidecar(bundle, tmp_path):  # noqa: F811
    clip = tmp_path / "in.wav"
    original = _clip(1.6, seed=4)[0, 0].numpy()
    sf.write(clip, np.stack([original, original], 1), RATE, subtype="FLOAT")  # stereo: read as mono
    out = tmp_path / "fixed.wav"
    done = run_ok("inpaint", str(clip), "calm piano", "--start", "0.5", "--end", "1.1", "--out", str(out),
                  "--bundle", str(bundle), "--seed", "2", "--steps", "2")
    audio = sf.read(out, dtype="float32")[0]
    assert audio.shape == original.shape and "regenerated" in done.stdout
    for kept, given in zip(_outside(audio, 0.5, 1.1, 0.1), _outside(original, 0.5, 1.1, 0.1)):
        np.testing.assert_allclose(kept, given, atol=1 / 32767)  # a 16-bit file
    assert np.abs(audio[round(0.5 * RATE):round(1.1 * RATE)] - original[round(0.5 * RATE):round(1.1 * RATE)]).mean() > 1e-3
    record = json.loads(out.with_suffix(".json").read_text())
    assert (record["start"], record["end"], record["prompt"], record["seed"], record["steps"]) == (0.5, 1.1, "calm piano", 2, 2)
    assert record["forward_passes"]["vae"] == 2


@pytest.mark.parametrize("args, message", [
    (["--start", "1.0", "--end", "0.5"], "not after its start"),
    (["--start", "-1", "--end", "0.5"], "before the clip"),
    (["--start", "0.5", "--end", "3"], "beyond the end of the 1.000 s clip"),
    (["--start", "0.5", "--end", "0.51"], "shorter than one semantic token"),
    (["--start", "0.2", "--end", "0.6", "--blend", "-1"], "crossfade must be 0 or more"),
    (["--start", "0.2", "--end", "0.6", "--out", "x.mp3"], "give a .wav or .flac"),
])
def test_bad_cli_input_is_one_line_and_writes_nothing(bundle, tmp_path, args, message):  # noqa: F811
    clip = tmp_path / "in.wav"
    sf.write(clip, _clip(1.0)[0, 0].numpy(), RATE)
    outs = tmp_path / "out"
    outs.mkdir()
    out = melody_one_thread("inpaint", str(clip), *args, "--bundle", str(bundle),
                            *(() if "--out" in args else ("--out", str(outs / "x.wav"))))
    assert message in one_line_error(out)
    assert list(outs.iterdir()) == []


def test_a_missing_input_is_one_line(bundle, tmp_path):  # noqa: F811
    out = melody_one_thread("inpaint", str(tmp_path / "nope.wav"), "--start", "0", "--end", "1", "--bundle", str(bundle),
                            "--out", str(tmp_path / "x.wav"))
    assert "no such audio file" in one_line_error(out)
    assert list(tmp_path.iterdir()) == []
