"""Direct controls beside the text: `--bpm`/`--key` said in the prompt, `--best-of N` kept by MuLan's judgement."""

import json
import math

import pytest
import torch
from test_cli import melody_one_thread
from test_pipeline import bundle, melody  # noqa: F401 (the fixtures)
from test_quality import click_track
from test_semantic_stages import one_line_error, run_ok

from melody.data.synth.captions import caption_mentions, parse_key, prompt_bpm, restate_tempo, with_controls
from melody.errors import MelodyError
from melody.eval.quality import measure_tempo, tempo_fit_rate
from melody.pipeline import DECODE_LOOKAHEAD_SECONDS, FIT_MIN_SECONDS
from melody.semantic.lm import tempo_bucket

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("prompt, bpm, key, said", [
    ("a funk groove with slap bass", 120, "a# minor", "a funk groove with slap bass, at 120 BPM, in Bb minor."),
    ("A jazz tune at 96 BPM in the key of C major with piano.", 140, None,
     "A jazz tune in the key of C major with piano, at 140 BPM."),
    ("A jazz tune at 96 BPM in the key of C major with piano.", None, "Eb dorian",
     "A jazz tune at 96 BPM with piano, in Eb dorian."),
    ("A rock song, at about 100 bpm, in A minor", 80.4, "E major", "A rock song, at 80 BPM, in E major."),
    ("a calm piece", None, None, "a calm piece"),
])
def test_controls_are_said_as_the_captions_say_them_and_replace_what_the_text_says(prompt, bpm, key, said):
    assert with_controls(prompt, bpm, key) == said


def test_a_controlled_prompt_passes_the_corpus_caption_check():
    text = with_controls("a funk groove at 90 BPM in C major", 118, "G# minor")
    assert caption_mentions(text, {"style": "funk", "tempo_bpm": 118, "key": "G#", "mode": "minor"})
    assert not caption_mentions(text, {"style": "funk", "tempo_bpm": 90, "key": "C", "mode": "major"})


def test_a_stretched_captions_tempo_is_restated_rounded_and_kept_in_range():
    caption = "Upbeat rock track in C major, 137 BPM, with overdriven guitar and drums."
    assert restate_tempo(caption, 110.4) == "Upbeat rock track in C major, with overdriven guitar and drums, at 110 BPM."
    assert prompt_bpm(restate_tempo(caption, 171.25)) == 171
    # beyond what --bpm accepts: clamped rather than refused, since a stretch of a corpus tempo may cross the edge
    assert prompt_bpm(restate_tempo(caption, 25.0)) == 30 and prompt_bpm(restate_tempo(caption, 340.0)) == 300
    assert restate_tempo("clip number 3", 88.0) == "clip number 3, at 88 BPM."  # a caption stating none gains one


@pytest.mark.parametrize("call, message", [
    (lambda: parse_key("H minor"), "unknown note name"),
    (lambda: parse_key("A"), "give a tonic and a mode"),
    (lambda: parse_key("A sad"), "give a tonic and a mode"),
    (lambda: with_controls("funk", 1000, None), "between 30 and 300"),
    (lambda: with_controls("funk", -5, None), "between 30 and 300"),
])
def test_bad_controls_are_one_line_errors(call, message):
    with pytest.raises(MelodyError, match=message):
        call()


def test_bpm_and_key_condition_like_the_text_that_says_them(melody):  # noqa: F811
    controlled = melody.generate(["calm piano"], 0.6, bpm=72, key="D minor", seed=3)
    said = melody.generate(["calm piano, at 72 BPM, in D minor."], 0.6, seed=3)
    assert controlled.prompts == ["calm piano, at 72 BPM, in D minor."]
    assert torch.equal(controlled.audio, said.audio)
    with pytest.raises(MelodyError, match="steer a text prompt"):
        melody.generate(None, 0.6, prompt_audio=torch.zeros(1, 8000), bpm=100)


def test_the_tempo_a_prompt_states_reaches_the_lm_as_its_tempo_token_and_beat_clock_in_every_mode(melody):  # noqa: F811
    lm_cfg = melody.semantic_lm.config
    assert lm_cfg.tempo_buckets > 0 and lm_cfg.tempo_clock  # the test bundle's LM has both (TINY_STACK)

    def bucket(*bpm):
        return tempo_bucket(torch.tensor(bpm, dtype=torch.float64), lm_cfg.tempo_buckets, lm_cfg.tempo_range)

    def grid(*bpm):  # from a downbeat at the first token given, beats per token frame
        return pytest.approx([x for b in bpm for x in (0.0, b / 60 / melody.token_rate)])

    torch.testing.assert_close(melody.tempo_beats(["calm piano at 70 BPM", "calm piano"]),
                               torch.tensor([[0.0, 70 / 60 / melody.token_rate], [0.0, math.nan]], dtype=torch.float64),
                               equal_nan=True)

    assert torch.equal(melody.tempo_tokens(["calm piano at 70 BPM", "calm piano", "funk, 140 beats per minute"]),
                       bucket(70.0, math.nan, 140.0))
    assert melody.tempo_tokens(None) is None  # music prompts: no tempo given
    seen, beats = [], []

    def watch(m, args, kwargs):
        seen.append(kwargs.get("tempo"))
        beats.append(kwargs.get("beats"))

    hook = melody.semantic_lm.register_forward_pre_hook(watch, with_kwargs=True)
    try:
        melody.generate(["calm piano"], 0.3, bpm=150)
        assert torch.equal(seen[0], bucket(150.0, 150.0))  # the cond and uncond rows; the model drops the uncond's
        assert beats[0].flatten().tolist() == grid(150.0, 150.0)
        seen.clear(), beats.clear()
        clip = torch.zeros(1, 1, 4000)
        melody.continue_(clip, 0.2, prompts=["funk at 90 BPM"])
        assert torch.equal(seen[0], bucket(90.0, 90.0)) and beats[0].flatten().tolist() == grid(90.0, 90.0)
        seen.clear(), beats.clear()
        melody.inpaint(torch.zeros(1, 1, 16000), 0.8, 1.2, prompts=["funk at 100 BPM"])
        assert torch.equal(seen[0], bucket(100.0, 100.0)) and beats[0].flatten().tolist() == grid(100.0, 100.0)
        seen.clear(), beats.clear()
        list(melody.stream(["funk at 60 BPM", "funk at 180 BPM"], 0.3))
        assert [t.tolist() for t in seen if t is not None] == [bucket(60.0, 60.0).tolist(), bucket(180.0, 180.0).tolist()]
        clocked = [b.flatten().tolist() for b in beats if b is not None]
        # the second chunk's tempo goes on from the first's beat at its first new token F (`continued_grid`)
        first_new = math.ceil((0.3 + DECODE_LOOKAHEAD_SECONDS) * melody.token_rate)
        went_on = (first_new * (60 - 180) / 60 / melody.token_rate) % 4
        assert len(clocked) == 2 and clocked[0] == grid(60.0, 60.0)
        assert clocked[1] == pytest.approx([went_on, 180 / 60 / melody.token_rate] * 2)
    finally:
        hook.remove()
    # the clock is heard: the same prompt from an LM whose clock says nothing gives other tokens
    asked = melody.semantic_tokens(["calm piano at 150 BPM"], 1.0, seed=2)
    weight = melody.semantic_lm.clock_projection.weight
    kept = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.zero_()
        deaf = melody.semantic_tokens(["calm piano at 150 BPM"], 1.0, seed=2)
    finally:
        with torch.no_grad():
            weight.copy_(kept)
    assert not torch.equal(asked, deaf)


def test_best_of_keeps_the_candidate_mulan_scores_highest_and_candidate_zero_is_best_of_one(melody):  # noqa: F811
    prompts = ["funk", "calm piano"]
    one = melody.generate(prompts, 0.6, seed=5)
    three = melody.generate(prompts, 0.6, seed=5, best_of=3)
    scores = torch.tensor(three.mulan_scores)
    assert scores.shape == (2, 3) and three.candidate == scores.argmax(1).tolist()
    reference = melody.mulan.embed_text(prompts)
    score = lambda audio: (melody.mulan.embed_audio(audio.mean(1)) * reference).sum(-1)  # noqa: E731
    torch.testing.assert_close(scores[:, 0], score(one.audio))  # candidate 0 is what best_of=1 gives
    torch.testing.assert_close(score(three.audio), scores.max(1).values)  # the kept audio is the top scorer
    assert (scores.max(1).values >= scores[:, 0]).all()
    assert all(len(set(row)) == 3 for row in scores.tolist())  # three different candidates
    assert three.forward_passes["mulan"] == 1 + 3 and three.forward_passes["dpd"] == 3 * one.forward_passes["dpd"]
    assert three.audio.shape == one.audio.shape and three.latents.shape == one.latents.shape
    with pytest.raises(MelodyError, match="between 1 and 16"):
        melody.generate(prompts, 0.6, best_of=0)


def test_cli_records_controls_and_best_of_in_the_sidecar(bundle, tmp_path):  # noqa: F811
    out = tmp_path / "song.wav"
    run_ok("generate", "calm piano", "--duration", "0.6", "--out", str(out), "--bundle", str(bundle), "--bpm", "96",
           "--key", "f# minor", "--best-of", "2", "--steps", "2")
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["prompt"] == "calm piano, at 96 BPM, in F# minor." and record["bpm"] == 96 and record["key"] == "f# minor"
    assert record["best_of"]["candidates"] == 2 and record["best_of"]["kept"] in (0, 1)
    assert len(record["best_of"]["mulan_scores"]) == 2 and record["forward_passes"]["mulan"] == 3


@pytest.mark.parametrize("args, message", [
    (["generate", "funk", "--bpm", "1000"], "between 30 and 300"),
    (["generate", "funk", "--key", "H minor"], "unknown note name"),
    (["generate", "funk", "--best-of", "0"], "between 1 and 16"),
    (["generate", "--prompt-audio", "x.wav", "--bpm", "120"], "steer a text prompt"),
])
def test_bad_controls_on_the_cli_are_one_line_and_write_nothing(bundle, tmp_path, args, message):  # noqa: F811
    out = melody_one_thread(*args, "--bundle", str(bundle), "--out", str(tmp_path / "x.wav"))
    assert message in one_line_error(out)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("heard, asked, rate", [
    (120.0, 100.0, 100 / 120),  # a little fast: slowed onto the asked tempo
    (80.0, 100.0, 1.25),  # a little slow: sped up
    (130.0, 70.0, 140 / 130),  # heard at about twice the asked tempo: its half-time pulse is moved onto 70
    (50.0, 140.0, 1.4),  # slow: sped up to 70, the octave of 140 nearest it
    (140.0, 70.0, 1.0),  # exactly an octave: nothing to move
    (103.0, 100.0, 1.0),  # within 4 %: left alone
    (0.0, 100.0, 1.0),  # no beat heard: left alone
])
def test_the_tempo_fit_rate_moves_the_octave_nearest_the_asked_tempo_onto_it(heard, asked, rate):
    got = tempo_fit_rate(heard, asked)
    assert got == pytest.approx(rate, rel=1e-9)
    assert 2 ** -0.5 <= got <= 2 ** 0.5


def fit_inputs(melody, heard_bpm: float, asked_bpm: float, seconds: float = 4.0, seed: int = 7):  # noqa: F811
    """A generation without the fit whose audio is then replaced by a click track at `heard_bpm`: what
    `_fit_tempo` gets, with a tempo the tracker hears for sure, whatever the random bundle makes."""
    prompts = [f"funk, at {asked_bpm:g} BPM."]
    out = melody.generate(prompts, seconds, seed=seed, fit_tempo=False)
    rate = melody.vae.cfg.sample_rate
    out.audio = torch.from_numpy(click_track(heard_bpm, seconds, rate)[0])[None, None]
    mulan_tokens = melody.mulan.tokens(melody.mulan.embed_text(prompts))
    steps, guidance = melody._sampling(None, None)
    return out, prompts, mulan_tokens, steps, guidance


@pytest.mark.parametrize("heard, asked", [(120.0, 100.0), (80.0, 100.0)])
def test_music_heard_off_the_asked_tempo_is_rendered_again_from_its_stretched_tokens(melody, heard, asked):  # noqa: F811
    out, prompts, mulan_tokens, steps, guidance = fit_inputs(melody, heard, asked)
    tokens, passes = out.semantic_tokens.clone(), dict(out.forward_passes)
    fit = melody._fit_tempo(out, [asked], mulan_tokens, 4.0, steps, guidance, None, None, None, 7, lambda s: None, prompts)
    record = fit.tempo_fit[0]
    assert record["heard_bpm"] == pytest.approx(heard, rel=0.02) and record["asked_bpm"] == asked
    assert record["rate"] == pytest.approx(asked / heard, rel=0.02)
    n = tokens.shape[1]
    source = (torch.arange(n, dtype=torch.float64) * record["rate"]).floor().long()
    made = source < n  # frames read from the tokens made first; a faster rate reads beyond them, from the LM
    assert torch.equal(fit.semantic_tokens[0, made], tokens[0, source[made]])
    more = max(0, math.floor((n - 1) * record["rate"]) + 1 - n)
    assert (more > 0) == (heard < asked)
    assert fit.forward_passes == {**passes, "semantic_lm": passes["semantic_lm"] + more, "dpd": 2 * passes["dpd"],
                                  "vae": 2}
    again = melody.latents(melody.dpd_for_sampling(), fit.semantic_tokens, 4.0, steps, guidance, 7)
    torch.testing.assert_close(fit.latents, again)  # the same noise as the first render, on the stretched tokens
    torch.testing.assert_close(fit.audio, melody.vae.decode_latents(again, fit.audio.shape[-1]).clamp(-1, 1))


def test_music_heard_at_the_asked_tempo_or_an_octave_of_it_is_kept(melody):  # noqa: F811
    for heard in (100.0, 200.0):
        out, prompts, mulan_tokens, steps, guidance = fit_inputs(melody, heard, 100.0)
        audio, passes = out.audio.clone(), dict(out.forward_passes)
        fit = melody._fit_tempo(out, [100.0], mulan_tokens, 4.0, steps, guidance, None, None, None, 7, lambda s: None,
                                prompts)
        assert fit.tempo_fit[0]["rate"] == 1.0 and torch.equal(fit.audio, audio) and fit.forward_passes == passes


def test_generate_fits_only_the_rows_that_ask_for_a_tempo_and_a_batch_fits_like_single_runs(melody):  # noqa: F811
    prompts = ["funk, at 100 BPM.", "calm piano"]
    both = melody.generate(prompts, 4.0, seed=11, fit_tempo=True)
    plain = melody.generate(prompts, 4.0, seed=11, fit_tempo=False)
    first = both.tempo_fit[0]
    assert both.tempo_fit[1] is None and first["asked_bpm"] == 100.0
    assert first["heard_bpm"] == round(measure_tempo(plain.audio[0], plain.sample_rate), 2)  # it listened to plain's music
    assert torch.equal(both.audio[1], plain.audio[1])  # no tempo asked: untouched
    assert torch.equal(both.audio[0], plain.audio[0]) == (first["rate"] == 1.0)
    for i, prompt in enumerate(prompts):
        alone = melody.generate([prompt], 4.0, seed=11 + i, fit_tempo=True)
        torch.testing.assert_close(alone.audio[0], both.audio[i])
    assert melody.generate(prompts, FIT_MIN_SECONDS - 0.5, seed=11, fit_tempo=True).tempo_fit is None  # too short
    best = melody.generate(prompts, 4.0, seed=11, best_of=2, fit_tempo=True)  # each candidate fitted; the kept one's record
    assert best.tempo_fit[1] is None and best.tempo_fit[0]["asked_bpm"] == 100.0
    if best.candidate[0] == 0:
        assert best.tempo_fit[0] == first


def test_the_fit_is_on_by_default_only_for_an_lm_without_a_beat_clock(melody):  # noqa: F811
    assert melody.semantic_lm.clock_projection is not None and not melody.fits_tempo  # the test bundle's LM has a clock
    out = melody.generate(["funk, at 100 BPM."], 4.0, seed=11)
    assert out.tempo_fit is None and "tempo_fit" not in out.seconds
    clock = melody.semantic_lm.clock_projection
    melody.semantic_lm.clock_projection = None  # as the LM of a bundle made before the clock
    try:
        assert melody.fits_tempo
    finally:
        melody.semantic_lm.clock_projection = clock


def test_cli_records_the_tempo_fit_in_the_sidecar_and_can_leave_it_out(bundle, tmp_path):  # noqa: F811
    fitted, plain, default = tmp_path / "fitted.wav", tmp_path / "plain.wav", tmp_path / "default.wav"
    said = {tuple(flag): run_ok("generate", "funk", "--duration", "4", "--out", str(out), "--bundle", str(bundle), "--bpm",
                                "100", *flag).stdout
            for out, flag in ((fitted, ["--fit-tempo"]), (plain, ["--no-fit-tempo"]), (default, []))}
    record = json.loads(fitted.with_suffix(".json").read_text())
    assert f"tempo fit: heard {record['tempo_fit']['heard_bpm']:g} BPM" in said[("--fit-tempo",)]
    assert "tempo fit" not in said[("--no-fit-tempo",)] and "tempo fit" not in said[()]  # an LM with a beat clock
    assert record["tempo_fit"]["asked_bpm"] == 100.0 and record["tempo_fit"]["rate"] > 0
    assert "tempo_fit" in record["seconds"]
    assert "tempo_fit" not in json.loads(plain.with_suffix(".json").read_text())
    assert "tempo_fit" not in json.loads(default.with_suffix(".json").read_text())


def test_tempo_guidance_reaches_the_lm_as_a_third_branch_without_the_clock(melody):  # noqa: F811
    """`semantic_lm.tempo_guidance` in the bundle's config: generate's LM runs the caption, the clocked null and the
    bare null in one batch; an LM whose null condition drops the clock refuses it in one line."""
    rows = []
    hook = melody.semantic_lm.register_forward_pre_hook(
        lambda m, args, kwargs: rows.append(kwargs.get("beats")), with_kwargs=True)
    lm_cfg = melody.cfg.semantic_lm
    try:
        lm_cfg.tempo_guidance = melody.semantic_lm.config.tempo_guidance = 2.0
        melody.semantic_lm.config.clock_guided = False
        melody.generate(["calm piano"], 0.3, bpm=150, seed=1)
        grid = rows[0]
        assert grid.shape == (3, 2) and torch.isfinite(grid[:2, 1]).all() and math.isnan(grid[2, 1])
        assert melody.sampling_settings()["lm_tempo_guidance"] == 2.0
        melody.semantic_lm.config.clock_guided = True
        with pytest.raises(MelodyError, match="clock_guided=false"):
            melody.generate(["calm piano"], 0.3, bpm=150)
    finally:
        hook.remove()
        lm_cfg.tempo_guidance = melody.semantic_lm.config.tempo_guidance = 0.0
        melody.semantic_lm.config.clock_guided = True
