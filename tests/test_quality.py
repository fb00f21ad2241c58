"""Quality metrics of issue 7: FAD, the musicnn and MuLan embeddings, MuLan cycle consistency, tag and tempo adherence."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_mulan import CAPTIONS, SR, bert, textures, tiny_mulan  # noqa: F401 (bert is a fixture)

from melody.ears.musicnn import TAGS, MusicnnTagger
from melody.errors import MelodyError
from melody.eval.quality import (
    beat_locking,
    disjoint_halves,
    fad_report,
    frechet_distance,
    measure_tempo,
    mulan_cycle_consistency,
    mulan_embeddings,
    musicnn_outputs,
    prompt_tags,
    tag_adherence,
    tempo_error,
    tempo_summary,
    trace_sqrt_product,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def gaussian(n, d, seed, mean=0.0, std=1.0):
    return np.random.default_rng(seed).normal(mean, std, (n, d))


# --- FAD ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, d", [(400, 16), (50, 200)])  # the second: fewer clips than dims, singular Σ
def test_fad_of_a_set_against_itself_is_zero(n, d):
    x = gaussian(n, d, 0, std=3.0)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(torch.from_numpy(x).float(), torch.from_numpy(x).float()) == pytest.approx(0.0, abs=1e-6)


def test_fad_is_symmetric():
    a, b = gaussian(300, 12, 1), gaussian(200, 12, 2, mean=0.3, std=1.5)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-10)


def test_fad_grows_with_added_noise():
    x = gaussian(500, 16, 3)
    noise = gaussian(500, 16, 4)
    fads = [frechet_distance(x, x + s * noise) for s in (0.1, 0.5, 1.0)]
    assert 0 < fads[0] < fads[1] < fads[2], fads


def test_fad_matches_the_closed_form_for_diagonal_gaussians():
    """For N(μa, diag va) and N(μb, diag vb): ‖μa − μb‖² + Σ (√va − √vb)²."""
    d = 6
    mu_a, mu_b = np.zeros(d), np.linspace(-1, 1, d)
    va, vb = np.linspace(0.5, 2.0, d), np.linspace(3.0, 0.2, d)
    rng = np.random.default_rng(5)
    a = mu_a + np.sqrt(va) * rng.standard_normal((200_000, d))
    b = mu_b + np.sqrt(vb) * rng.standard_normal((200_000, d))
    exact = ((mu_a - mu_b) ** 2).sum() + ((np.sqrt(va) - np.sqrt(vb)) ** 2).sum()
    assert frechet_distance(a, b) == pytest.approx(exact, rel=0.01)


def test_trace_sqrt_product_agrees_with_scipy_sqrtm_on_full_rank_covariances():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    a, b = gaussian(300, 10, 6), gaussian(300, 10, 7, std=2.0) @ gaussian(10, 10, 8)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    reference = np.trace(scipy_linalg.sqrtm(cov_a @ cov_b)).real
    assert trace_sqrt_product(cov_a, cov_b) == pytest.approx(reference, rel=1e-8)


def test_fad_report_gives_the_floor_from_disjoint_real_halves():
    real = gaussian(400, 8, 9)
    first, second = disjoint_halves(len(real), seed=0)
    assert len(first) == len(second) == 200 and not set(first) & set(second)
    generated = gaussian(200, 8, 10, mean=1.0)
    report = fad_report(generated, real[first], real[second])
    assert report.real_vs_real < 0.5 < report.generated_vs_real  # the mean is off by 1 in each of 8 dims
    assert (report.n_generated, report.n_real, report.n_real_split) == (200, 200, 200)


@pytest.mark.parametrize("a, b, message", [
    (np.zeros((1, 4)), np.zeros((5, 4)), "at least 2"),
    (np.zeros((5, 4)), np.zeros((5, 3)), "differ in width"),
    (np.zeros(5), np.zeros((5, 4)), r"\(clips, dims\)"),
    (np.full((5, 4), np.nan), np.zeros((5, 4)), "NaN"),
])  # fmt: skip
def test_fad_refuses_bad_sets_with_one_line(a, b, message):
    with pytest.raises(MelodyError, match=message):
        frechet_distance(a, b)


# --- embeddings --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tagger():
    return MusicnnTagger.load()


def test_musicnn_embedding_has_200_dims_and_is_deterministic(tagger):
    rng = np.random.default_rng(11)
    t = np.arange(4 * 16000) / 16000
    clips = [rng.normal(0, 0.1, 4 * 16000), 0.3 * np.sin(2 * np.pi * 440 * t), rng.normal(0, 0.1, 3 * 16000)]
    out = musicnn_outputs(clips, 16000, tagger)
    assert out.embeddings.shape == (3, 200) and out.tag_scores.shape == (3, len(TAGS))
    assert out.embeddings.dtype == out.tag_scores.dtype == np.float64
    again = musicnn_outputs([c.copy() for c in clips], 16000, tagger)
    np.testing.assert_array_equal(out.embeddings, again.embeddings)
    np.testing.assert_allclose(out.embeddings[1], tagger.embed(clips[1], 16000), rtol=1e-6)  # mean over patches
    np.testing.assert_allclose(out.tag_scores[1], tagger.tags(clips[1], 16000), rtol=1e-6)
    assert not np.allclose(out.embeddings[0], out.embeddings[1])


def test_musicnn_outputs_take_a_batch_tensor(tagger):
    batch = torch.from_numpy(np.random.default_rng(12).normal(0, 0.1, (2, 1, 3 * 16000)).astype(np.float32))
    out = musicnn_outputs(batch, 16000, tagger)
    assert out.embeddings.shape == (2, 200)


# --- MuLan cycle consistency -------------------------------------------------------------------


class ToyMuLan(torch.nn.Module):
    """Text "k" and a clip of constant value k embed to the same one-hot vector: text and audio coincide."""

    def __init__(self, dim=8):
        super().__init__()
        self.dim = dim
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # for the device

    def embed_text(self, texts):
        return F.one_hot(torch.tensor([int(t) for t in texts]), self.dim).float()

    def embed_audio(self, wav, lengths=None):
        return F.one_hot(wav[:, 0].round().long(), self.dim).float()


def test_mcc_is_one_when_text_and_audio_embeddings_coincide_and_lower_when_shuffled():
    texts = [str(k) for k in range(6)]
    audio = torch.arange(6.0)[:, None, None].expand(6, 1, 100)  # (b, 1, samples), clip k is constant k
    assert mulan_cycle_consistency(ToyMuLan(), texts, audio, batch_size=4) == pytest.approx(1.0)
    assert mulan_cycle_consistency(ToyMuLan(), texts[1:] + texts[:1], audio) == pytest.approx(0.0)


@pytest.fixture(scope="module")
def fitted_mulan(bert):  # noqa: F811
    """A tiny MuLan overfitted to four (texture, caption) pairs, as in test_mulan."""
    mulan = tiny_mulan(bert).train()
    wav = textures()
    opt = torch.optim.Adam(mulan.parameters(), lr=3e-3)
    for _ in range(60):
        loss = mulan(wav, list(CAPTIONS)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return mulan.eval()


def test_mcc_on_a_real_mulan_is_the_mean_matched_cosine_and_drops_when_shuffled(fitted_mulan):
    wav, captions = textures(), list(CAPTIONS)
    mcc = mulan_cycle_consistency(fitted_mulan, captions, wav)
    with torch.no_grad():
        text, audio = fitted_mulan.embed_text(captions), fitted_mulan.embed_audio(wav)
    assert mcc == pytest.approx(float((text * audio).sum(1).mean()), abs=1e-5)
    assert mulan_cycle_consistency(fitted_mulan, captions, wav[:, None], batch_size=3) == pytest.approx(mcc, abs=1e-5)
    shuffled = mulan_cycle_consistency(fitted_mulan, captions[1:] + captions[:1], wav)
    assert -1 <= shuffled < mcc - 0.2 and mcc <= 1, (mcc, shuffled)
    assert mulan_embeddings(fitted_mulan, wav, torch.full((4,), SR // 4), batch_size=3).shape == (4, 16)


def test_mcc_refuses_unpaired_inputs():
    with pytest.raises(MelodyError, match="3 prompts for 2 clips"):
        mulan_cycle_consistency(ToyMuLan(), ["0", "1", "2"], torch.zeros(2, 100))


# --- text adherence ----------------------------------------------------------------------------


@pytest.mark.parametrize("prompt, wanted, unwanted", [
    ("An energetic rock track with distortion guitar, electric bass and drums at 132 BPM",
     {"rock", "guitar", "drums", "fast"}, {"slow"}),
    ("A classical string piece with violin, viola and cello at 70 BPM", {"classical", "strings", "slow"}, {"fast"}),
    ("A fast techno track", {"techno", "electronic", "fast"}, set()),
    ("A quiet ambient soundscape with synth pad", {"ambient", "synth", "quiet"}, set()),
    ("A calm piano piece at 100 BPM", {"piano"}, {"fast", "slow"}),
    ("Soprano sax and nylon-string guitar", {"guitar"}, {"strings", "voice", "choir"}),  # phrases, not words
])  # fmt: skip
def test_prompt_tags_name_what_the_caption_asks_for(prompt, wanted, unwanted):
    tags = set(prompt_tags(prompt))
    assert wanted <= tags and not unwanted & tags, tags
    assert tags <= set(TAGS)


def test_tag_adherence_is_above_one_when_the_asked_tags_score_highest():
    prompts = ["a rock track with drums", "a piece of classical music with piano", "a recording at about 90 BPM"]
    scores = np.full((3, len(TAGS)), 0.1)
    for i, prompt in enumerate(prompts):
        scores[i, [TAGS.index(t) for t in prompt_tags(prompt)]] = 0.9
    adherence = tag_adherence(prompts, scores)
    assert adherence[0] > 1 and adherence[1] > 1 and math.isnan(adherence[2])  # the recording asks for no tag
    assert tag_adherence(prompts[:2], np.full((2, len(TAGS)), 0.3)) == pytest.approx([1.0, 1.0])
    swapped = tag_adherence(prompts[:2], scores[::-1][1:])  # each clip scored as the other's
    assert (swapped < 1).all()
    with pytest.raises(MelodyError, match="tag scores must be"):
        tag_adherence(prompts, scores[:2])


def click_track(bpm, seconds=12.0, rate=22050):
    """A 1 kHz click, 20 ms with a fast decay, on every beat."""
    x = np.zeros(int(seconds * rate), np.float32)
    t = np.arange(int(0.02 * rate)) / rate
    click = (np.sin(2 * np.pi * 1000 * t) * np.exp(-t / 0.004)).astype(np.float32)
    for beat in np.arange(0, seconds - 0.05, 60.0 / bpm):
        start = int(beat * rate)
        x[start : start + len(click)] += click
    return x, rate


@pytest.mark.parametrize("bpm", [120, 90, 140])
def test_tempo_error_of_a_click_track_is_small(bpm):
    pytest.importorskip("librosa")
    err = tempo_error(*click_track(bpm), asked_bpm=bpm)
    assert abs(err.error_bpm) < 1.5 and not err.is_octave_error, err


def test_beat_locking_finds_a_click_track_on_its_own_grid_and_where_in_the_beat_it_falls():
    """Vector strength of the onset envelope: near 1 on the clicks' own grid, with the clicks at its beats (θ ≈ 0); a
    grid started a quarter beat early hears them a quarter beat after its beats; music at half the grid's tempo locks,
    at twice it cancels; a grid 6 % off hears no lock; silence is (0, 0)."""
    from melody.eval.quality import onset_envelope

    envelope = onset_envelope(*click_track(120, seconds=10.0), frame_rate=100.0)
    r, theta = beat_locking(envelope, 100.0, 120.0)
    assert r > 0.8 and abs(theta) < 0.05, (r, theta)
    late = beat_locking(envelope, 100.0, 120.0, phase=0.25)
    assert late[0] == pytest.approx(r, abs=1e-9) and late[1] == pytest.approx(theta + 0.25, abs=1e-9)
    assert beat_locking(envelope, 100.0, 120.0 * 1.06)[0] < 0.2
    assert beat_locking(envelope, 100.0, 240.0)[0] > 0.8  # a grid of half beats: a click on every other one locks
    assert beat_locking(envelope, 100.0, 60.0)[0] < 0.2  # a grid of two beats: clicks on it and half way cancel
    assert beat_locking(np.zeros(500), 100.0, 120.0) == (0.0, 0.0)


def test_tempo_at_half_or_double_the_asked_is_an_octave_error():
    pytest.importorskip("librosa")
    slow = tempo_error(*click_track(60), asked_bpm=120)
    assert slow.octave == 0.5 and slow.is_octave_error and abs(slow.octave_error_bpm) < 1.5, slow
    assert slow.error_bpm == pytest.approx(slow.measured_bpm - 120)
    fast = tempo_error(*click_track(120), asked_bpm=60)
    assert fast.octave == 2.0 and abs(fast.octave_error_bpm) < 1.5, fast
    summary = tempo_summary([slow, fast, tempo_error(*click_track(120), asked_bpm=120)])
    assert summary["octave_error_rate"] == pytest.approx(2 / 3) and summary["mean_abs_error_bpm"] < 1.5


def test_pulse_clarity_of_a_pulse_noise_and_silence():
    from melody.eval.quality import pulse_clarity

    pulse = np.zeros(250)
    pulse[::12] = 1.0  # 125 BPM at 25 frames per second
    noise = np.random.default_rng(0).random(250)
    assert pulse_clarity(pulse, 25.0) > 0.9
    assert pulse_clarity(noise, 25.0) < 0.2
    assert pulse_clarity(np.ones(250), 25.0) == 0.0
    slow = np.zeros(250)
    slow[::50] = 1.0  # 30 BPM: no lag in 40–240 BPM sees it
    assert pulse_clarity(slow, 25.0) < pulse_clarity(pulse, 25.0) / 3


@pytest.mark.parametrize("signal", ["clicks", "noise", "silence"])
def test_measure_tempo_is_the_tempo_librosas_beat_tracker_reports(signal):
    librosa = pytest.importorskip("librosa")
    rate = 24_000
    x = {"clicks": lambda: click_track(97, 10.0, rate)[0],
         "noise": lambda: np.random.default_rng(0).standard_normal(10 * rate).astype(np.float32) * 0.1,
         "silence": lambda: np.zeros(10 * rate, np.float32)}[signal]()
    tracked, _ = librosa.beat.beat_track(y=x, sr=rate, hop_length=128)
    assert measure_tempo(x, rate) == float(np.atleast_1d(tracked)[0])


@pytest.mark.parametrize("window, frames, length", [(1500, 512, 1875), (1499, 100, 937), (384, 7000, 5000), (10, 3, 4)])
def test_mean_tempogram_is_the_time_average_of_librosas_tempogram(window, frames, length):
    """Computed a few columns at a time (any chunk size, odd or even windows, envelopes shorter than the window) it
    is the column mean of `librosa.feature.tempogram(center=True)`, what `feature.tempo` averages."""
    librosa = pytest.importorskip("librosa")
    from melody.eval.quality import mean_tempogram

    envelope = np.random.default_rng(length).random(length).astype(np.float32) ** 4
    whole = librosa.feature.tempogram(onset_envelope=envelope, win_length=window)
    chunked = mean_tempogram(envelope, window, frames)
    assert chunked.shape == (window, 1)
    np.testing.assert_allclose(chunked[:, 0], whole.mean(axis=-1), rtol=1e-5, atol=1e-7)
    shifted = mean_tempogram(np.roll(envelope, 1), window, frames)  # it depends on where the onsets fall
    assert not np.allclose(shifted, chunked, rtol=1e-5, atol=1e-7)
