"""How good, and how faithful to its prompt, is generated music? The measuring core of issue 7.

The MeLoDy paper (Lam et al. 2023, Table 2 and its evaluation) scores generations with two numbers: **FAD** on
VGGish embeddings and **MuLan cycle consistency** (MCC: the similarity of the prompt's text
embedding and the generated audio's embedding, from a pretrained MuLan; see
shared/reference/melody-paper.md), with real MusicCaps audio as the reference (MCC 0.43). Here, as pure functions over embeddings and scores:

- `frechet_distance`: FAD (Kilgour et al. 2019, *Fréchet Audio Distance: A Reference-free Metric
  for Evaluating Music Enhancement Algorithms*, Interspeech): fit a Gaussian to each set of
  clip embeddings and take the Fréchet distance between the two Gaussians,
  ‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa Σb)^{1/2}). VGGish's weights are not available offline here,
  so the embeddings are (i) the pretrained musicnn tagger's 200-d penultimate layer, averaged over
  its 3-s patches (`musicnn_outputs`; a judge nobody here trained) and (ii) our MuLan's audio tower
  (`mulan_embeddings`). `fad_report` adds the real-vs-real floor.
- `mulan_cycle_consistency`: the paper's MCC, the mean cosine between each prompt's MuLan text
  embedding and its clip's MuLan audio embedding. On real (caption, clip) pairs it gives the
  reference. Our MuLan is the project's own (`melody/mulan.py`), not the paper's.
- Text adherence, not in the paper (issue 7): `prompt_tags` maps the words of a prompt (the
  built-in corpus' caption vocabulary: styles, instruments, dynamics, tempo) to the musicnn MTT
  tags that name them; `tag_adherence` compares those tags' scores with the clip's mean tag score.
  `tempo_error` runs librosa's beat tracker against the prompt's BPM, octave errors apart; `pulse_clarity`
  says how periodic an onset envelope (`onset_envelope`) is, whatever its tempo.

Choices where the sources are silent:
- The matrix square root. Σa Σb is not symmetric, and with fewer clips than dimensions (a few
  hundred clips against 200 dimensions: this project's regime) both covariances are singular, so
  `scipy.linalg.sqrtm(Σa Σb)` returns complex or inaccurate results and needs an ad hoc ridge that
  biases the distance. We use the symmetric form instead: Tr (Σa Σb)^{1/2} = ‖Σa^{1/2} Σb^{1/2}‖_*
  (the sum of the singular values), with each Σ^{1/2} from a symmetric eigendecomposition. It is
  exact for any positive semi-definite pair, real by construction, and needs no ridge; eigenvalues
  below the usual rank tolerance (λmax · d · ε, as `numpy.linalg.matrix_rank`) count as 0, so a
  set against itself gives 0 to rounding even when Σ is singular. All in float64.
- The floor compares two *disjoint* real sets. FAD is biased upwards by the sample size, so the
  floor is only comparable with the generated-vs-real number when the generated set and the second
  real set are equally large and are both measured against the same first real set: `fad_report`
  takes them that way and reports the sizes.
- Tag adherence: mean score of the asked tags ÷ mean score of all 50 tags of the same clip, so 1.0
  means the clip does not prefer what was asked; a prompt that asks for no tag scores NaN. The
  style and instrument words map as `melody data check` maps caption attributes
  (`melody.data.check.STYLE_TAGS` and the MTT instrument rules), so the two agree. Corpus captions
  state tempo as a number, not as "fast"/"slow": a stated tempo ≥ 120 BPM (allegro and faster) asks
  for "fast", ≤ 76 BPM (adagio and slower) for "slow".
- Tempo: librosa's `beat_track` tempo, on a ~6 ms onset hop rather than its default 23 ms (whose
  lag grid reads a 120 BPM click track as 117.5 BPM); the asked tempo's nearest octave (×½, ×1, ×2, in log
  ratio) decides whether the clip is an octave error, and both the raw error and the error against
  that octave are reported.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from melody.data.check import MTT, STYLE_TAGS
from melody.data.synth.captions import prompt_bpm
from melody.ears.musicnn import TAGS, MusicnnTagger
from melody.errors import MelodyError
from melody.modules import device_of

if TYPE_CHECKING:
    from melody.mulan import MuLan

# --- FAD ---------------------------------------------------------------------------------------


def frechet_distance(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """FAD between embedding sets `a` `(n, d)` and `b` `(m, d)` (Kilgour et al. 2019):

    ‖μa − μb‖² + Tr(Σa) + Tr(Σb) − 2 Tr (Σa Σb)^{1/2}, Σ the unbiased sample covariances, in float64.
    """
    a, b = _embedding_set(a, "a"), _embedding_set(b, "b")
    if a.shape[1] != b.shape[1]:
        raise MelodyError(f"embedding sets differ in width: {a.shape[1]} vs {b.shape[1]}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)  # (d, d)
    distance = (mu_a - mu_b) @ (mu_a - mu_b) + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt_product(cov_a, cov_b)
    return max(float(distance), 0.0)  # ≥ 0 exactly; rounding can leave −1e-15


def trace_sqrt_product(cov_a: np.ndarray, cov_b: np.ndarray) -> float:
    """Tr (Σa Σb)^{1/2} for positive semi-definite Σa, Σb `(d, d)`, as ‖Σa^{1/2} Σb^{1/2}‖_*.

    The singular values of Σa^{1/2} Σb^{1/2} are the square roots of the eigenvalues of
    Σb^{1/2} Σa Σb^{1/2}, which are those of Σa Σb (similar matrices); their sum is the trace.
    """
    return float(np.linalg.svd(psd_sqrt(cov_a) @ psd_sqrt(cov_b), compute_uv=False).sum())


def psd_sqrt(m: np.ndarray) -> np.ndarray:
    """The symmetric square root of a positive semi-definite `m` `(d, d)`; eigenvalues below λmax · d · ε are 0."""
    w, v = np.linalg.eigh((m + m.T) / 2)
    tol = max(w.max(initial=0.0), 0.0) * len(w) * np.finfo(np.float64).eps
    w = np.where(w > tol, w, 0.0)
    return (v * np.sqrt(w)) @ v.T


def disjoint_halves(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of two disjoint random halves of `n` items (sizes ⌊n/2⌋ and ⌈n/2⌉), for the real-vs-real floor."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2 :])


@dataclass(frozen=True)
class FADReport:
    """FAD of the generated clips and the floor that two real sets reach, on one embedding."""

    generated_vs_real: float  # FAD(generated, real)
    real_vs_real: float  # FAD(real_split, real): the floor, the best a generator could hope for
    n_generated: int
    n_real: int
    n_real_split: int  # comparable floor: n_real_split == n_generated


def fad_report(generated_embeddings: np.ndarray | torch.Tensor, real_embeddings: np.ndarray | torch.Tensor,
               real_split_embeddings: np.ndarray | torch.Tensor) -> FADReport:
    """FAD of generated clips against real ones, beside the floor: another real set (disjoint from
    `real_embeddings`, e.g. the other half from `disjoint_halves`) against the same `real_embeddings`."""
    return FADReport(
        generated_vs_real=frechet_distance(generated_embeddings, real_embeddings),
        real_vs_real=frechet_distance(real_split_embeddings, real_embeddings),
        n_generated=len(generated_embeddings),
        n_real=len(real_embeddings),
        n_real_split=len(real_split_embeddings),
    )


def _embedding_set(x: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise MelodyError(f"embedding set {name} must be (clips, dims), got shape {x.shape}")
    if x.shape[0] < 2:
        raise MelodyError(f"embedding set {name} has {x.shape[0]} clip(s); a covariance needs at least 2")
    if not np.isfinite(x).all():
        raise MelodyError(f"embedding set {name} contains NaN or infinite values")
    return x


# --- embeddings --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaggerOutputs:
    """The musicnn tagger on a set of clips, each averaged over its 3-s patches."""

    embeddings: np.ndarray  # (n, 200) penultimate layer: the FAD embedding
    tag_scores: np.ndarray  # (n, 50) MTT tag probabilities, in `TAGS` order


def musicnn_outputs(clips: Iterable[np.ndarray | torch.Tensor], sample_rate: int,
                    tagger: MusicnnTagger | None = None) -> TaggerOutputs:
    """Embeddings and tag scores of mono clips (each `(samples,)` or `(channels, samples)`; a
    `(b, samples)` or `(b, 1, samples)` batch iterates as clips), one tagger pass per clip."""
    tagger = tagger or MusicnnTagger.load()
    embeddings, scores = [], []
    for clip in clips:
        out = tagger.patch_outputs(clip, sample_rate)
        embeddings.append(out.embedding.mean(0))
        scores.append(out.probs.mean(0))
    if not embeddings:
        raise MelodyError("no clips to tag")
    return TaggerOutputs(np.stack(embeddings).astype(np.float64), np.stack(scores).astype(np.float64))


@torch.no_grad()
def mulan_embeddings(mulan: MuLan, audio: torch.Tensor, lengths: torch.Tensor | None = None,
                     batch_size: int = 16) -> torch.Tensor:
    """MuLan audio-tower embeddings `(b, embed_dim)` of clips `(b, samples)` or `(b, 1, samples)` at
    the MuLan's sample rate (valid `lengths` `(b,)` in samples), `batch_size` clips at a time."""
    audio = _mono_batch(audio)
    device = device_of(mulan)
    out = []
    for start in range(0, audio.shape[0], batch_size):
        chunk = lengths[start : start + batch_size].to(device) if lengths is not None else None
        out.append(mulan.embed_audio(audio[start : start + batch_size].to(device), chunk).float().cpu())
    return torch.cat(out)


# --- MuLan cycle consistency -------------------------------------------------------------------


def pair_cosines(text_embeddings: torch.Tensor, audio_embeddings: torch.Tensor) -> torch.Tensor:
    """cos(row i of `text_embeddings` `(b, e)`, row i of `audio_embeddings` `(b, e)`) → `(b,)` float64."""
    if text_embeddings.shape != audio_embeddings.shape or text_embeddings.dim() != 2:
        raise MelodyError(f"cycle consistency pairs texts with clips one to one; got text "
                          f"{tuple(text_embeddings.shape)} and audio {tuple(audio_embeddings.shape)}")
    return torch.nn.functional.cosine_similarity(text_embeddings.double(), audio_embeddings.double(), dim=1)


def cycle_consistency(text_embeddings: torch.Tensor, audio_embeddings: torch.Tensor) -> float:
    """Mean cosine between row i of `text_embeddings` `(b, e)` and row i of `audio_embeddings` `(b, e)`."""
    return float(pair_cosines(text_embeddings, audio_embeddings).mean())


@torch.no_grad()
def mulan_cycle_consistency(mulan: MuLan, texts: Sequence[str], audio: torch.Tensor, lengths: torch.Tensor | None = None,
                            batch_size: int = 16) -> float:
    """The MeLoDy paper's MCC (Table 2): mean over pairs of cos(MuLan_text(texts[i]), MuLan_audio(audio[i])).

    For generated clips `texts` are their prompts; on real (caption, clip) pairs the same function
    gives the reference. `audio` `(b, samples)` or `(b, 1, samples)` at the MuLan's sample rate.
    """
    if len(texts) != audio.shape[0]:
        raise MelodyError(f"{len(texts)} prompts for {audio.shape[0]} clips")
    text = torch.cat([mulan.embed_text(list(texts[i : i + batch_size])).float().cpu()
                      for i in range(0, len(texts), batch_size)])
    return cycle_consistency(text, mulan_embeddings(mulan, audio, lengths, batch_size))


def _mono_batch(audio: torch.Tensor) -> torch.Tensor:
    if audio.dim() == 3 and audio.shape[1] == 1:
        audio = audio[:, 0]
    if audio.dim() != 2:
        raise MelodyError(f"clips must be mono, (b, samples) or (b, 1, samples); got shape {tuple(audio.shape)}")
    return audio


# --- text adherence: tags ----------------------------------------------------------------------

FAST_BPM = 120.0  # a stated tempo at or above this asks for "fast" (allegro and faster)
SLOW_BPM = 76.0  # at or below this for "slow" (adagio and slower)


def _caption_tags() -> dict[str, tuple[str, ...]]:
    """Caption phrase → the MTT tags that name it. Styles and instruments as `melody data check` maps them."""
    words: dict[str, tuple[str, ...]] = {}
    for keys, tags in reversed(MTT.instrument_rules):  # reversed: the first rule that names a word wins
        words.update({word: tags for word in keys})
    words.update({style: tags for style, tags in STYLE_TAGS.items() if tags})
    words.update({
        "classical string": STYLE_TAGS["classical strings"],  # "a classical string piece"
        "techno": ("techno", "electronic"),
        "dance": ("dance",),
        "fast": ("fast",), "slow": ("slow",),
        "soft": ("soft", "quiet"), "gentle": ("soft", "quiet"), "quiet": ("quiet", "soft"),
        "loud": ("loud",), "powerful": ("loud",),
        # phrases whose words would otherwise be read one by one and misread
        "moderately loud": (),
        "soprano sax": (), "alto sax": (), "tenor sax": (), "baritone sax": (),  # saxophones, not voices
        "rock organ": (),  # an organ sound, not a rock request
        "choir pad": ("synth", "electronic"),  # a synth pad
    })  # fmt: skip
    return words


CAPTION_TAGS: Mapping[str, tuple[str, ...]] = _caption_tags()
_PHRASE = re.compile(
    r"(?<![\w-])(" + "|".join(re.escape(p) for p in sorted(CAPTION_TAGS, key=len, reverse=True)) + r")(?![\w-])"
)
def prompt_tags(prompt: str) -> tuple[str, ...]:
    """The MTT tags that name what `prompt` asks for, in order of mention, without repeats.

    Phrases of `CAPTION_TAGS` are matched longest first as whole words ("classical string piece"
    → the classical-strings tags, "nylon-string guitar" → guitar only); a stated tempo ≥ `FAST_BPM`
    asks for "fast", ≤ `SLOW_BPM` for "slow".
    """
    tags = [t for phrase in _PHRASE.findall(prompt.lower()) for t in CAPTION_TAGS[phrase]]
    bpm = prompt_bpm(prompt)
    if bpm is not None and bpm >= FAST_BPM:
        tags.append("fast")
    elif bpm is not None and bpm <= SLOW_BPM:
        tags.append("slow")
    return tuple(dict.fromkeys(tags))


def tag_adherence(prompts: Sequence[str], tag_scores: np.ndarray, labels: Sequence[str] = TAGS) -> np.ndarray:
    """Per clip, mean score of the tags its prompt asks for ÷ the clip's mean score of all tags `(n,)`.

    `tag_scores` `(n, len(labels))` (musicnn MTT probabilities). 1.0: no preference for what was
    asked; above 1: the asked tags stand out. NaN where the prompt asks for no tag.
    """
    scores = np.asarray(tag_scores, dtype=np.float64)
    if scores.shape != (len(prompts), len(labels)):
        raise MelodyError(f"tag scores must be (prompts, tags) = ({len(prompts)}, {len(labels)}), got {scores.shape}")
    index = {label: i for i, label in enumerate(labels)}
    out = np.full(len(prompts), np.nan)
    for i, prompt in enumerate(prompts):
        asked = [index[t] for t in prompt_tags(prompt) if t in index]
        if asked:
            out[i] = scores[i, asked].mean() / scores[i].mean()
    return out


# --- text adherence: tempo ---------------------------------------------------------------------


@dataclass(frozen=True)
class TempoError:
    """A clip's tempo as the beat tracker hears it, against the tempo its prompt asked for."""

    asked_bpm: float
    measured_bpm: float  # 0 when the tracker finds no beat
    error_bpm: float  # measured − asked
    octave: float  # the multiple of the asked tempo nearest the measured one: 1, 2 or 0.5
    octave_error_bpm: float  # measured − octave · asked: the error once an octave error is forgiven

    @property
    def is_octave_error(self) -> bool:
        return self.octave != 1.0


TEMPO_HOP_SECONDS = 0.0058  # onset-envelope hop of the beat tracker: ~1 % tempo resolution at 120 BPM
TEMPO_WINDOW_SECONDS = 8.0  # the tempogram's autocorrelation window: `feature.tempo`'s default `ac_size`
TEMPOGRAM_CHUNK_FRAMES = 512  # tempogram columns computed at once: ~25 MB of FFT buffers at the 8 s window


def measure_tempo(audio: np.ndarray | torch.Tensor, rate: int) -> float:
    """Global tempo in BPM, the one librosa's beat tracker (`beat.beat_track`, Ellis 2007) reports; 0 if no onset.

    The tracker's tempo is its first step: the onset envelope (median over mel bands) → `feature.tempo`
    (autocorrelation weighted by a log-normal prior at 120 BPM); its dynamic programming only places the beats.
    Those two calls give the same number without importing `librosa.beat`, whose numba kernels compile when it is
    imported (4 s in every fresh process; `MeLoDy.generate`'s tempo fit pays it on its first call otherwise).
    librosa's default hop (512 samples, 23 ms) quantises the tempo to ~5 BPM steps near 120 BPM
    (a 120 BPM click track reads 117.5); a ~6 ms hop brings that to ~1 %.
    """
    import librosa

    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    x = np.asarray(audio, dtype=np.float32)
    x = x.reshape(-1, x.shape[-1]).mean(0) if x.ndim > 1 else x  # (samples,): channels and a batch of one averaged
    hop = 2 ** round(math.log2(rate * TEMPO_HOP_SECONDS))  # 128 samples at 22.05 or 24 kHz
    envelope = librosa.onset.onset_strength(y=x, sr=rate, hop_length=hop, aggregate=np.median)
    if not envelope.any():
        return 0.0
    tempogram = mean_tempogram(envelope, librosa.time_to_frames(TEMPO_WINDOW_SECONDS, sr=rate, hop_length=hop).item())
    return float(np.atleast_1d(librosa.feature.tempo(tg=tempogram, sr=rate, hop_length=hop, aggregate=None))[0])


def mean_tempogram(envelope: np.ndarray, window: int, frames: int = TEMPOGRAM_CHUNK_FRAMES) -> np.ndarray:
    """The time-average `(window, 1)` of librosa's tempogram of an onset `envelope` (its `feature.tempo` default:
    centred `window`-frame autocorrelations), computed `frames` columns at a time. `feature.tempo` averages the
    tempogram over time before weighting it by its prior, so this average gives it the same tempo; whole, the
    tempogram of 30 s at a 5 ms hop takes about 0.5 GB in its autocorrelation's FFT, more than the pipeline."""
    import librosa

    half = window // 2
    padded = np.pad(envelope, (half, half), mode="linear_ramp", end_values=(0, 0))  # as `tempogram(center=True)`
    total = np.zeros(window)
    for first in range(0, len(envelope), frames):
        last = min(first + frames, len(envelope))  # columns first … last − 1 read padded[column : column + window]
        chunk = librosa.feature.tempogram(onset_envelope=padded[first:last + window - 1], win_length=window,
                                          center=False)
        total += chunk.sum(axis=-1)
    return (total / len(envelope))[:, None]


def onset_envelope(audio: np.ndarray | torch.Tensor, rate: int, frame_rate: float) -> np.ndarray:
    """librosa's onset strength `(frames,)` of mono `audio` at about `frame_rate` frames per second (hop = rate ÷ frame_rate)."""
    import librosa

    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    x = np.asarray(audio, dtype=np.float32)
    x = x.reshape(-1, x.shape[-1]).mean(0) if x.ndim > 1 else x
    return librosa.onset.onset_strength(y=x, sr=rate, hop_length=round(rate / frame_rate))


def beat_locking(envelope: np.ndarray, frame_rate: float, bpm: float, phase: float = 0.0) -> tuple[float, float]:
    """How tightly an onset envelope `(frames,)` keeps to the beat grid of `bpm` that starts at beat `phase` (frame 0):
    the vector strength (Goldberg & Brown 1969) R e^{2πiθ} = Σ_t o_t e^{2πi β_t} / Σ_t o_t, β_t = phase + t · bpm / (60 ·
    frame_rate) the beat at frame t, o_t the envelope above its median. Returns (R, θ): R near 1 when the onsets fall
    at one place of every beat, near 0 when they fall anywhere (music at another tempo, or none); θ in [−½, ½) is that
    place, in beats after the grid's beats. Music at half the tempo locks too; at twice the tempo with even accents it
    cancels (R ≈ 0). (0, 0) for a silent envelope."""
    env = np.asarray(envelope, dtype=np.float64)
    env = np.clip(env - np.median(env), 0.0, None)  # the onsets, above the envelope's floor of sustained sound
    total = float(env.sum())
    if total <= 0 or not bpm > 0:
        return 0.0, 0.0
    beats = phase + np.arange(len(env)) * bpm / (60.0 * frame_rate)
    vector = complex((env * np.exp(2j * np.pi * beats)).sum()) / total
    return abs(vector), float(np.angle(vector) / (2 * np.pi))


def pulse_clarity(envelope: np.ndarray, frame_rate: float, low_bpm: float = 40.0, high_bpm: float = 240.0) -> float:
    """How periodic an onset envelope `(frames,)` is: the highest autocorrelation at a lag between one beat at
    `high_bpm` and one at `low_bpm`, ÷ the autocorrelation at lag 0 (mean removed). 1 for a strict pulse, near 0
    for noise; 0 for a constant envelope. The simplest of Lartillot et al.'s (2008) pulse-clarity measures."""
    env = np.asarray(envelope, dtype=np.float64)
    env = env - env.mean()
    energy = float(env @ env)
    first, last = max(1, round(frame_rate * 60 / high_bpm)), min(len(env) - 1, round(frame_rate * 60 / low_bpm))
    if energy <= 0 or last < first:
        return 0.0
    return max(float(env[:-lag] @ env[lag:]) for lag in range(first, last + 1)) / energy


def nearest_octave(measured_bpm: float, asked_bpm: float) -> float:
    """The multiple k of ½, 1, 2 whose k · asked is nearest `measured_bpm` on a log scale; 1 when no beat was found."""
    if not measured_bpm > 0:
        return 1.0
    return min((0.5, 1.0, 2.0), key=lambda k: abs(math.log2(measured_bpm / (k * asked_bpm))))


def tempo_fit_rate(heard_bpm: float, asked_bpm: float, tolerance: float = 0.04) -> float:
    """The rate at which `stretch_tokens` plays tokens whose music is heard at `heard_bpm` so that it is heard at
    `asked_bpm`: r = k · asked ÷ heard, k the `nearest_octave` (½, 1, 2) of the asked tempo, so r lies in [1/√2, √2].

    A beat tracker hears a pulse at one metrical level, often twice or half the one a listener would tap; the
    smallest stretch that moves some level of the music onto the asked tempo changes the music least (DJ tempo
    matching picks the octave the same way). 1 when no beat was heard or the music is already within `tolerance`
    (a share of the asked tempo) of it. Outside the paper: `MeLoDy.generate(fit_tempo=True)`."""
    if not (heard_bpm > 0 and asked_bpm > 0):
        return 1.0
    rate = nearest_octave(heard_bpm, asked_bpm) * asked_bpm / heard_bpm
    return 1.0 if abs(math.log(rate)) <= math.log1p(tolerance) else rate


def tempo_error(audio: np.ndarray | torch.Tensor, rate: int, asked_bpm: float) -> TempoError:
    """The beat tracker's tempo for mono `audio` at `rate` against `asked_bpm`, octave errors (×2, ×½) apart."""
    if not asked_bpm > 0:
        raise MelodyError(f"asked tempo must be positive, got {asked_bpm}")
    return tempo_error_of(measure_tempo(audio, rate), asked_bpm)


def tempo_error_of(measured_bpm: float, asked_bpm: float) -> TempoError:
    """A tempo some tracker measured, against `asked_bpm`, octave errors (×2, ×½) apart."""
    octave = nearest_octave(measured_bpm, asked_bpm)
    return TempoError(asked_bpm, measured_bpm, measured_bpm - asked_bpm, octave, measured_bpm - octave * asked_bpm)


def tempo_summary(errors: Sequence[TempoError]) -> dict[str, float]:
    """Mean |error| of the clips at the asked octave, the share of octave errors, and the mean
    |error| against the nearest octave over all clips (NaN where there is nothing to average)."""
    same = [abs(e.error_bpm) for e in errors if not e.is_octave_error]
    return {
        "clips": float(len(errors)),
        "mean_abs_error_bpm": float(np.mean(same)) if same else math.nan,
        "octave_error_rate": float(np.mean([e.is_octave_error for e in errors])) if errors else math.nan,
        "mean_abs_octave_error_bpm": float(np.mean([abs(e.octave_error_bpm) for e in errors])) if errors else math.nan,
    }
