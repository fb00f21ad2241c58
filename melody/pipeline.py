"""MeLoDy end to end (paper Fig. 1, sampling): text → MuLan tokens → semantic LM → DPD → VAE decoder → audio.

`MeLoDy.from_pretrained(folder)` loads a bundle: one sub-folder per stage (`mulan`, `tokenizer`,
`semantic_lm`, `dpd`, `vae`), each as its training run exported it (`<stage>.safetensors` +
`config.json`), checked for consistency (the LM's vocabulary is the tokenizer's, its condition
MuLan's RVQ, the DPD's latents the VAE's). `generate` reads like the paper's inference:

1. the prompts' MuLan tokens (text tower → RVQ), or a music prompt's (audio tower → RVQ);
2. ⌈25 · duration⌉ semantic tokens from the LM (`melody.semantic.sampling.generate`: KV cache,
   guidance, 10 s sliding windows);
3. latents from the DPD, window by window (`melody.diffusion`): the first window from noise,
   each next one continuing the previous with half a window of clean context
   (`continue_latents`); each window cross-attends to the semantic tokens covering it;
4. the VAE decoder → exactly round(duration · sample_rate) samples.

Randomness: prompt i of a batch uses seed + i, so a batch gives each prompt exactly what a run of
that prompt alone with seed + i gives; per prompt, the LM's generator and each DPD window's derive
from (seed, stage, window index), so a window's noise does not depend on how many tokens came before.
Every stage's network calls and wall time are counted (`GenerateOutput.forward_passes`, `seconds`).

`continue_` extends a clip and `inpaint` regenerates a region of one (the DPD's per-frame noise levels
keep the latents around the region clean); both return the input's own samples where they keep them.

Choices where the paper is silent: the DPD samples `dpd.window_seconds` windows (10 s, as the paper's
lineage continues; longer than the `tiny` model's 2.56 s training crops, which costs no measurable
quality and half the time: benchmarks/dpd_windows.py) advancing by half of one; guidance runs both
branches in one batched call (`guided_in_one_call`), one DPD pass per step; a window's tokens are
those whose 25 Hz frames overlap its latent frames (latent rate / 25 must be an integer: 5 for
`tiny`, 10 for `paper`).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from melody.checkpoint import load_model_and_config
from melody.config import MelodyConfig
from melody.cuda_graphs import GraphedCalls
from melody.data.loader import mix_seeds
from melody.data.synth.captions import prompt_bpm, with_controls
from melody.diffusion import (SCHEDULES, angles_from_steps, check_solver, continue_latents, guided_in_one_call, inpaint_latents,
                              noise_like_rows, sample)
from melody.dpd import DPD
from melody.errors import MelodyError
from melody.mulan import MuLan
from melody.runtime import Compiled, few_row_linears, stacked_gates
from melody.semantic.lm import SemanticLM, beat_grid, continued_grid, stretch_tokens, tempo_bucket, window_and_stride
from melody.semantic.sampling import generate as generate_tokens
from melody.semantic.tokenizer import SemanticTokenizer
from melody.vae import VAE

# Each stage's model, built from the config it was trained with (what `load_model_and_config` calls).
STAGE_BUILDERS = {
    "mulan": lambda c: MuLan.from_config(c.mulan, c.vae.sample_rate),
    "tokenizer": lambda c: SemanticTokenizer.from_config(c.tokenizer, c.vae.sample_rate),
    "semantic_lm": SemanticLM.from_config,
    "dpd": DPD.from_config,
    "vae": lambda c: VAE(c.vae),
}
STAGES = ("mulan", "tokenizer", "semantic_lm", "dpd", "vae")
MAX_SECONDS = 600.0  # a stated limit on one call's duration
MAX_PROMPT_CHARS = 1000
MAX_BEST_OF = 16
# A streamed chunk is decoded with this much of the latents before it and after it (both beyond the VAE
# decoder's receptive field), so chunks join exactly as one decode of everything would.
DECODE_CONTEXT_SECONDS = 1.0
DECODE_LOOKAHEAD_SECONDS = 0.5
BLEND_SECONDS = 0.1  # inpainting: the crossfade on each side of a regenerated region
FIT_MIN_SECONDS = 4.0  # the tempo fit listens to clips this long or longer: a few beats say little about a tempo
RESYNTHESIS = ("dpd", "vae")  # `resynthesize`: through the DPD from the clip's own tokens, or through the VAE alone


@dataclass
class GenerateOutput:
    audio: torch.Tensor  # (b, channels, round(duration · sample_rate)) float32 in [-1, 1]
    sample_rate: int
    semantic_tokens: torch.Tensor  # (b, ⌈25 · duration⌉) long
    latents: torch.Tensor  # (b, frames, latent_dim) in [-1, 1]
    forward_passes: dict[str, int] = field(default_factory=dict)  # per stage, network calls
    seconds: dict[str, float] = field(default_factory=dict)  # per stage, wall time
    prompts: list[str] | None = None  # the texts the music was conditioned on (with bpm and key said)
    candidate: list[int] | None = None  # best-of: the kept candidate per prompt
    mulan_scores: list[list[float]] | None = None  # best-of: cosine(prompt, candidate) per prompt and candidate
    # fit_tempo: per row, None (no tempo asked) or {"asked_bpm", "heard_bpm" (first render), "rate" (1: kept)}
    tempo_fit: list[dict | None] | None = None


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


class _Autocast:
    """A network run under autocast to `dtype` (bf16: the matmuls' half-width inputs), its output back in fp32, so
    the sampler's updates and the guidance combination stay in fp32."""

    def __init__(self, model, dtype: torch.dtype, device: torch.device) -> None:
        self.model, self.dtype, self.device_type = model, dtype, device.type

    def __call__(self, *args, **kwargs):
        # no weight-cast cache: a CUDA graph recorded under it would read cached casts freed after the call
        with torch.autocast(self.device_type, dtype=self.dtype, cache_enabled=False):
            return self.model(*args, **kwargs).float()


def check_device(device: str | torch.device) -> torch.device:
    """`device` as a torch device, when this machine has it: cpu, or cuda[:N] with that GPU present; else one line."""
    try:
        device = torch.device(device)
    except (RuntimeError, ValueError):
        raise MelodyError(f"--device {device}: give cpu or cuda[:N]") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise MelodyError(f"--device {device}: this machine has no CUDA GPU that torch can use; use --device cpu")
        if (device.index or 0) >= torch.cuda.device_count():
            raise MelodyError(f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s)")
    elif device.type != "cpu":
        raise MelodyError(f"--device {device}: give cpu or cuda[:N]")
    return device


def precision_dtype(precision: str) -> torch.dtype | None:
    """The dtype a precision name asks for (None: fp32, the models as they are); an unknown name is one line."""
    if precision not in PRECISIONS:
        raise MelodyError(f"unknown precision '{precision}'; choose one of: {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


def linears_in(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of `model` whose `nn.Linear` weights and biases are in `dtype`, everything else as it was. The linear
    layers' tensors are cast straight into the copy, never copied at full width first."""
    memo = {id(p): nn.Parameter(p.detach().to(dtype), requires_grad=False)
            for module in model.modules() if isinstance(module, nn.Linear) for p in module.parameters(recurse=False)}
    return copy.deepcopy(model, memo)


def at_precision(model, precision: str, device: torch.device):
    """`model` as the sampler calls it at `precision` ("fp32": as it is; "bf16": under autocast)."""
    dtype = precision_dtype(precision)
    return model if dtype is None else _Autocast(model, dtype, device)


class _Counted:
    """Wraps a model's forward to count its calls."""

    def __init__(self, model) -> None:
        self.model, self.calls = model, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.model(*args, **kwargs)


def check_prompts(prompts: list[str]) -> list[str]:
    if isinstance(prompts, str) or not prompts:
        raise MelodyError("give a list of one or more prompts")
    for p in prompts:
        if not isinstance(p, str) or not p.strip():
            raise MelodyError("a prompt is empty; describe the music, e.g. 'an upbeat funk groove with slap bass'")
        if len(p) > MAX_PROMPT_CHARS:
            raise MelodyError(f"a prompt is {len(p)} characters long; keep it under {MAX_PROMPT_CHARS}")
    return [p.strip() for p in prompts]


def check_duration(seconds: float) -> float:
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds)) or seconds <= 0:
        raise MelodyError(f"duration must be a positive number of seconds, got {seconds}")
    if seconds > MAX_SECONDS:
        raise MelodyError(f"duration {seconds:g} s is beyond the limit of {MAX_SECONDS:g} s; generate less, or continue a clip")
    return float(seconds)


def check_sampling(steps: int | None = None, guidance: float | None = None, temperature: float | None = None,
                   top_k: int | None = None, lm_guidance: float | None = None, solver: str | None = None) -> None:
    """One line for a sampling setting out of its range; None stands for the bundle's own and always passes."""
    def number(x) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    def whole(x) -> bool:
        return number(x) and float(x).is_integer()

    if steps is not None and not (whole(steps) and steps >= 1):
        raise MelodyError(f"steps must be a whole number of DPD steps, 1 or more, got {steps}")
    if guidance is not None and not (number(guidance) and guidance >= 0):
        raise MelodyError(f"guidance must be a number ≥ 0 (1: no guidance; the bundle's is 2.5), got {guidance}")
    if temperature is not None and not (number(temperature) and temperature >= 0):
        raise MelodyError(f"temperature must be a number ≥ 0 (0: always the likeliest token; 1: the LM's own "
                          f"distribution), got {temperature}")
    if top_k is not None and not (whole(top_k) and top_k >= 0):
        raise MelodyError(f"top_k must be a whole number ≥ 0 (0: keep every token), got {top_k}")
    if lm_guidance is not None and not (number(lm_guidance) and lm_guidance >= 0):
        raise MelodyError(f"lm_guidance must be a number ≥ 0 (1: no guidance), got {lm_guidance}")
    if solver is not None:
        check_solver(solver)


def tempo_fit_asks(prompts: list[str] | None, duration: float) -> list[float | None]:
    """The tempo each prompt asks the tempo fit for (None: none stated), or [] where the fit does not listen: music
    prompts, and clips shorter than `FIT_MIN_SECONDS`."""
    if prompts is None or duration < FIT_MIN_SECONDS:
        return []
    return [prompt_bpm(p) for p in prompts]


def stated_bpm(prompts: list[str]) -> torch.Tensor:
    """The tempo each prompt states `(b,)` float64 (`prompt_bpm`), NaN where it states none."""
    return torch.tensor([math.nan if (b := prompt_bpm(p)) is None else b for p in prompts], dtype=torch.float64)


def check_region(start: float, end: float, clip_seconds: float, shortest: float = 0.0,
                 blend: float = 0.0) -> tuple[float, float]:
    """A region start … end (seconds) of a clip `clip_seconds` long, at least `shortest` long, with crossfades of
    `blend` seconds; an end within a millisecond past the clip's (rounding of a resampled file's length) is
    taken as the clip's end."""
    if not (isinstance(blend, (int, float)) and math.isfinite(blend)) or blend < 0:
        raise MelodyError(f"the crossfade must be 0 or more seconds, got {blend}")
    for name, value in (("start", start), ("end", end)):
        if not (isinstance(value, (int, float)) and math.isfinite(value)):
            raise MelodyError(f"the region's {name} must be a number of seconds, got {value}")
    if start < 0:
        raise MelodyError(f"the region starts at {start:g} s, before the clip; give a start of 0 s or more")
    if end <= start:
        raise MelodyError(f"the region ends at {end:g} s, not after its start at {start:g} s; give an end after the start")
    if end > clip_seconds + 1e-3:
        raise MelodyError(f"the region ends at {end:g} s, beyond the end of the {clip_seconds:.3f} s clip")
    if end - start < shortest:
        raise MelodyError(f"the region is {end - start:g} s long, shorter than one semantic token ({shortest:g} s); "
                          "give a longer one")
    return float(start), min(float(end), clip_seconds)


def region_windows(first: int, last: int, total: int, window: int, context: int,
                   align: int = 1) -> list[tuple[int, int, int, int]]:
    """The DPD windows that make frames first … last − 1 of `total` anew, left to right, as
    (window start, first new frame, new frames, window end), each at most `window` frames and each with
    `context` clean frames where the clip has them. While the rest of the region and `context` clean
    frames do not fit one window, a window continues what is left of it: `context` clean frames on its
    left and `window − context` new ones (as `MeLoDy.latents` continues). The last window holds the rest
    with its clean frames shared evenly between both sides as far as the clip allows, its left share a
    multiple of `align`."""
    plan, at, size = [], first, min(window, total)
    while at < last:
        rest = last - at
        if rest + min(context, total - rest) > size:  # continue, with clean context on the left
            left, new = min(context, at), window - context
            plan.append((at - left, at, new, at + new))
            at += new
        else:  # the rest fits: clean frames on both sides, the window inside the clip
            spare = size - rest
            left = min(at, max(spare // 2 - (spare // 2) % align, spare - (total - last)))
            plan.append((at - left, at, rest, at - left + size))
            at = last
    return plan


def splice(original: torch.Tensor, replacement: torch.Tensor, start: int, end: int, fade: int) -> torch.Tensor:
    """`original` `(..., n)` with samples start … end − 1 from `replacement` (same shape), faded in linearly over
    the `fade` samples before `start` and out over the `fade` after `end`; every other sample is `original`'s."""
    n = original.shape[-1]
    lo, hi = max(0, start - fade), min(n, end + fade)
    position = torch.arange(lo, hi, device=original.device, dtype=torch.float64)
    rising = (position - (start - fade) + 1) / (fade + 1)  # 1/(fade+1) … fade/(fade+1) before the region
    falling = (end + fade - position) / (fade + 1)  # fade/(fade+1) … 1/(fade+1) after it
    weight = rising.clamp(max=1.0).minimum(falling.clamp(max=1.0)).to(original.dtype)  # 1 inside the region
    out = original.clone()
    out[..., lo:hi] = (1 - weight) * original[..., lo:hi] + weight * replacement[..., lo:hi]
    return out


class MeLoDy:
    """The five trained stages and the procedure that joins them."""

    def __init__(self, mulan: MuLan, tokenizer: SemanticTokenizer, semantic_lm: SemanticLM, dpd: DPD, vae: VAE,
                 cfg: MelodyConfig) -> None:
        self.mulan, self.tokenizer, self.semantic_lm, self.dpd, self.vae, self.cfg = mulan, tokenizer, semantic_lm, dpd, vae, cfg
        if (semantic_lm.vocab_size, semantic_lm.mulan_levels, semantic_lm.mulan_codebook_size) != (
                tokenizer.quantizer.codebook_size, mulan.rvq.levels, mulan.rvq.codebook_size):
            raise MelodyError("the bundle's semantic LM was trained with another tokenizer or MuLan; re-export the bundle")
        if (dpd.vocab_size, dpd.latent_dim) != (tokenizer.quantizer.codebook_size, vae.cfg.latent_dim):
            raise MelodyError("the bundle's DPD was trained with another tokenizer or VAE; re-export the bundle")
        self.token_rate = cfg.tokenizer.frame_rate
        ratio = vae.latent_rate / self.token_rate
        if abs(ratio - round(ratio)) > 1e-9:
            raise MelodyError(f"the VAE's {vae.latent_rate:g} Hz latents are not a whole multiple of the "
                              f"{self.token_rate} Hz semantic tokens")
        self.frames_per_token = round(ratio)
        for model in (mulan, tokenizer, semantic_lm, dpd, vae):
            model.eval()

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> MeLoDy:
        """Load a bundle folder (one sub-folder per stage); one-line errors for anything missing or mismatched."""
        folder = Path(folder)
        if not folder.is_dir():
            raise MelodyError(f"{folder}: no such bundle folder; give a folder with {', '.join(STAGES)} sub-folders")
        models, configs = {}, {}
        for stage in STAGES:
            if not (folder / stage).is_dir():
                raise MelodyError(f"{folder}: the bundle has no '{stage}' folder; export it with `melody export RUN "
                                  f"--out {folder / stage} --stage {stage}`")
            models[stage], configs[stage] = load_model_and_config(folder / stage, stage, stage, STAGE_BUILDERS[stage])
        cfg = configs["dpd"]
        cfg.mulan, cfg.semantic_lm = configs["mulan"].mulan, configs["semantic_lm"].semantic_lm
        for stage in ("semantic_lm", "dpd"):
            if not models[stage].has_codebooks(models["mulan"].rvq.codebooks):
                raise MelodyError(f"{folder}: the {stage} was trained with another MuLan's codebooks than the bundle's "
                                  "'mulan'; export both from the same runs")
        return cls(**models, cfg=cfg)

    @torch.no_grad()
    def generate(self, prompts: list[str] | None, duration: float, steps: int | None = None, guidance: float | None = None,
                 temperature: float | None = None, top_k: int | None = None, lm_guidance: float | None = None,
                 seed: int = 0, prompt_audio: torch.Tensor | None = None, bpm: float | None = None,
                 key: str | None = None, best_of: int = 1, fit_tempo: bool | None = None,
                 progress: Callable[[str], None] | None = None) -> GenerateOutput:
        """Music for each prompt `(b, channels, round(duration · rate))`; None takes the config's value.

        `prompt_audio` `(b, samples)` mono at the VAE's rate: music prompts instead of text (their MuLan
        tokens come from the audio tower, §3.1). `bpm` and `key` ('A minor') are said in every prompt the
        way the training captions say them (`with_controls`), replacing a tempo or key the text names.
        `best_of` N draws N candidates per prompt and keeps the one whose MuLan audio embedding is closest
        (cosine) to the prompt's embedding; candidate 0 is what `best_of=1` gives, candidate j > 0 uses
        the seed mix(seed, 4, j), so more candidates never score lower. `fit_tempo`: where a prompt states a
        tempo (`bpm`, or "at 90 BPM" in its text) and the music lasts `FIT_MIN_SECONDS` or more, the beat
        tracker measures the music and, if it is more than 4 % off at its nearest octave, the tokens are
        stretched to the asked tempo and rendered again (`_fit_tempo`); None: `fits_tempo`, on only for an LM without a
        beat clock."""
        duration = check_duration(duration)
        fit_tempo = self.fits_tempo if fit_tempo is None else bool(fit_tempo)
        prompts = self._check_condition(prompts, prompt_audio, bpm, key)
        if not isinstance(best_of, int) or not 1 <= best_of <= MAX_BEST_OF:
            raise MelodyError(f"best_of {best_of}: draw between 1 and {MAX_BEST_OF} candidates")
        steps, guidance = self._sampling(steps, guidance, temperature, top_k, lm_guidance)
        tell = progress or (lambda stage: None)  # told the name of each stage as it starts

        tell("mulan")
        clock = time.perf_counter()
        reference = self._reference(prompts, prompt_audio)
        mulan_tokens = self.mulan.tokens(reference)  # (b, L)
        times, passes = {"mulan": time.perf_counter() - clock}, {"mulan": 1}

        candidates = []
        for j in range(best_of):
            label = "" if best_of == 1 else f" (candidate {j + 1}/{best_of})"
            out = self._music(mulan_tokens, duration, steps, guidance, temperature, top_k, lm_guidance,
                              seed if j == 0 else mix_seeds(seed, 4, j), lambda stage: tell(stage + label),
                              None if prompt_audio is not None else prompts, fit_tempo)
            candidates.append(out)
            for stage, seconds in out.seconds.items():
                times[stage] = times.get(stage, 0.0) + seconds
            for stage, calls in out.forward_passes.items():
                passes[stage] = passes.get(stage, 0) + calls
        if best_of == 1:
            best = candidates[0]
            best.prompts, best.forward_passes, best.seconds = prompts, passes, times
            return best

        tell("mulan (scoring candidates)")
        clock = time.perf_counter()
        scores = torch.stack([(self.mulan.embed_audio(c.audio.mean(1)) * reference).sum(-1) for c in candidates], 1)
        pick = scores.argmax(1)  # (b,) the kept candidate per prompt
        times["mulan"] += time.perf_counter() - clock
        passes["mulan"] += best_of
        rows = torch.arange(len(pick))

        def kept(name: str) -> torch.Tensor:
            return torch.stack([getattr(c, name) for c in candidates], 1)[rows, pick]

        fits = None if candidates[0].tempo_fit is None else [c.tempo_fit for c in candidates]
        return GenerateOutput(kept("audio"), self.vae.cfg.sample_rate, kept("semantic_tokens"), kept("latents"),
                              passes, times, prompts=prompts, candidate=pick.tolist(), mulan_scores=scores.tolist(),
                              tempo_fit=None if fits is None else [fits[j][i] for i, j in enumerate(pick.tolist())])

    @torch.no_grad()
    def semantic_tokens(self, prompts: list[str] | None, duration: float, temperature: float | None = None,
                        top_k: int | None = None, lm_guidance: float | None = None, seed: int = 0,
                        prompt_audio: torch.Tensor | None = None) -> torch.Tensor:
        """The semantic LM's tokens `(b, ⌈duration · 25⌉)` for text prompts, or for music prompts `prompt_audio`:
        what `generate` with the same arguments hands the DPD before any tempo fit (row i seeded by seed + i),
        without rendering them."""
        duration = check_duration(duration)
        check_sampling(temperature=temperature, top_k=top_k, lm_guidance=lm_guidance)
        prompts = self._check_condition(prompts, prompt_audio)
        mulan_tokens = self.mulan.tokens(self._reference(prompts, prompt_audio))
        return self._semantic_tokens(mulan_tokens, math.ceil(duration * self.token_rate), None,
                                     self._seeded(seed, 1, rows=mulan_tokens.shape[0]), temperature, top_k, lm_guidance,
                                     prompts).tokens

    @staticmethod
    def _check_condition(prompts: list[str] | None, prompt_audio: torch.Tensor | None, bpm: float | None = None,
                         key: str | None = None) -> list[str] | None:
        """Text prompts (checked, with `bpm` and `key` said in them) or a music prompt, never both: one line if not."""
        if prompt_audio is None:
            prompts = check_prompts(prompts)
            return prompts if bpm is None and key is None else [with_controls(p, bpm, key) for p in prompts]
        if prompts is not None:
            raise MelodyError("give text prompts or a music prompt, not both")
        if bpm is not None or key is not None:
            raise MelodyError("bpm and key steer a text prompt; give a text prompt with them")
        if prompt_audio.dim() != 2 or prompt_audio.shape[-1] < 1:
            raise MelodyError(f"a music prompt must be mono audio (batch, samples), got {tuple(prompt_audio.shape)}")
        return None

    def _reference(self, prompts: list[str] | None, prompt_audio: torch.Tensor | None) -> torch.Tensor:
        """The condition's MuLan embeddings `(b, embed_dim)` (unit vectors): the prompts' text, or the music prompts'
        audio (§3.1)."""
        if prompt_audio is None:
            return self.mulan.embed_text(prompts)
        return self.mulan.embed_audio(prompt_audio.to(self._device, torch.float32))

    def _music(self, mulan_tokens: torch.Tensor, duration: float, steps: int, guidance: float, temperature: float | None,
               top_k: int | None, lm_guidance: float | None, seed: int, tell: Callable[[str], None],
               prompts: list[str] | None = None, fit_tempo: bool = False) -> GenerateOutput:
        """Semantic LM → DPD → VAE decoder for MuLan tokens `(b, L)` (of `prompts`, None for music prompts);
        row i seeded by seed + i; with `fit_tempo`, then `_fit_tempo`."""
        times, passes = {}, {}
        tell("semantic_lm")
        clock = time.perf_counter()
        result = self._semantic_tokens(mulan_tokens, math.ceil(duration * self.token_rate), None,
                                       self._seeded(seed, 1, rows=mulan_tokens.shape[0]), temperature, top_k, lm_guidance,
                                       prompts)
        times["semantic_lm"], passes["semantic_lm"] = time.perf_counter() - clock, result.forward_passes

        latents, audio = self._render(result.tokens, duration, steps, guidance, seed, times, passes, tell, mulan_tokens)
        out = GenerateOutput(audio, self.vae.cfg.sample_rate, result.tokens, latents, passes, times)
        asked = tempo_fit_asks(prompts, duration) if fit_tempo else []
        if any(a is not None for a in asked):
            out = self._fit_tempo(out, asked, mulan_tokens, duration, steps, guidance, temperature, top_k, lm_guidance,
                                  seed, tell, prompts)
        return out

    def _render(self, tokens: torch.Tensor, duration: float, steps: int, guidance: float, seed: int,
                times: dict[str, float], passes: dict[str, int],
                tell: Callable[[str], None] = lambda stage: None,
                mulan_tokens: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """DPD latents and the VAE's audio `(b, channels, round(duration · rate))` for semantic tokens `(b, t)` (and
        the prompts' MuLan tokens `(b, L)`, for a DPD that hears them), each stage's wall time and network calls added
        to `times` and `passes`."""
        tell("dpd")
        clock = time.perf_counter()
        counted = _Counted(self.dpd_for_sampling())
        latents = self.latents(counted, tokens, duration, steps, guidance, seed, mulan=mulan_tokens)
        times["dpd"] = times.get("dpd", 0.0) + time.perf_counter() - clock
        passes["dpd"] = passes.get("dpd", 0) + counted.calls

        tell("vae")
        clock = time.perf_counter()
        audio = self.vae.decode_latents(latents, round(duration * self.vae.cfg.sample_rate)).clamp(-1.0, 1.0).float()
        times["vae"] = times.get("vae", 0.0) + time.perf_counter() - clock
        passes["vae"] = passes.get("vae", 0) + 1
        return latents, audio

    def _fit_tempo(self, out: GenerateOutput, asked: list[float | None], mulan_tokens: torch.Tensor, duration: float,
                   steps: int, guidance: float, temperature: float | None, top_k: int | None,
                   lm_guidance: float | None, seed: int, tell: Callable[[str], None],
                   prompts: list[str]) -> GenerateOutput:
        """Tempo control beyond the LM's tempo token, outside the paper: librosa's beat tracker measures each row
        whose prompt asks for a tempo; a row more than 4 % off (at the nearest octave) gets its semantic tokens
        played at `tempo_fit_rate` (`stretch_tokens`; the LM continues the row's own tokens with seed
        (seed + i, 5) where a faster rate needs more of them), and the DPD and VAE render them again with the
        same noise. Rows that are near enough keep their music; `tempo_fit` records each row's measure."""
        from melody.eval.quality import measure_tempo, tempo_fit_rate  # librosa: only where a tempo is asked for

        tell("tempo fit")
        clock = time.perf_counter()
        heard = [measure_tempo(a, out.sample_rate) if bpm is not None else math.nan for a, bpm in zip(out.audio, asked)]
        rates = [1.0 if bpm is None else tempo_fit_rate(h, bpm) for h, bpm in zip(heard, asked)]
        out.seconds["tempo_fit"] = time.perf_counter() - clock  # the tracker: no network, no forward pass
        out.tempo_fit = [None if bpm is None else {"asked_bpm": bpm, "heard_bpm": round(h, 2), "rate": round(r, 4)}
                         for h, bpm, r in zip(heard, asked, rates)]
        if all(r == 1.0 for r in rates):
            return out
        tokens, n = out.semantic_tokens, out.semantic_tokens.shape[1]
        rate = torch.tensor(rates, dtype=torch.float64)
        more = math.floor((n - 1) * max(rates)) + 1 - n  # source frames a faster row reads beyond the ones made
        if more > 0:
            clock = time.perf_counter()
            extra = self._semantic_tokens(mulan_tokens, more, tokens, self._seeded(seed, 5, rows=tokens.shape[0]),
                                          temperature, top_k, lm_guidance, prompts)
            tokens = torch.cat((tokens, extra.tokens), dim=1)
            out.seconds["semantic_lm"] += time.perf_counter() - clock
            out.forward_passes["semantic_lm"] += extra.forward_passes
        tokens = stretch_tokens(tokens, torch.ones_like(tokens, dtype=torch.bool), rate)[0][:, :n]
        latents, audio = self._render(tokens, duration, steps, guidance, seed, out.seconds, out.forward_passes,
                                      mulan_tokens=mulan_tokens)
        moved = torch.tensor([r != 1.0 for r in rates], device=audio.device)
        out.audio = torch.where(moved[:, None, None], audio, out.audio)
        out.latents = torch.where(moved[:, None, None], latents, out.latents)
        out.semantic_tokens = torch.where(moved[:, None], tokens, out.semantic_tokens)
        return out

    def _semantic_tokens(self, mulan_tokens: torch.Tensor, n_tokens: int, prefix: torch.Tensor | None, generator,
                         temperature: float | None, top_k: int | None, lm_guidance: float | None,
                         prompts: list[str] | None = None, beats: torch.Tensor | None = None):
        """`n_tokens` semantic tokens from the LM after `prefix`, with the config's sampling settings where None;
        an LM with a tempo token gets the tempo each of `prompts` states (none for a prompt naming none), and an LM with
        a beat clock its beat grid: `beats`, else the prompts' from a downbeat at `prefix`'s first token (the first new
        one without a prefix)."""
        lm_cfg = self.cfg.semantic_lm
        window, stride = window_and_stride(lm_cfg, self.token_rate)
        return generate_tokens(self.lm_at_precision(), mulan_tokens.to(self._device), n_tokens, prefix,
                               temperature=lm_cfg.temperature if temperature is None else temperature,
                               top_k=lm_cfg.top_k if top_k is None else int(top_k), top_p=lm_cfg.top_p,
                               guidance=lm_cfg.guidance if lm_guidance is None else lm_guidance,
                               generator=generator, window=window, stride=stride, tempo=self.tempo_tokens(prompts),
                               beats=self.tempo_beats(prompts) if beats is None else beats,
                               tempo_guidance=lm_cfg.tempo_guidance,
                               graphs=self._device.type == "cuda" and lm_cfg.cuda_graphs, compiled=lm_cfg.compile)

    def to(self, device: str | torch.device) -> MeLoDy:
        """Every stage moved to `device` ("cpu", "cuda", "cuda:1"); an unknown or absent device is one line."""
        device = check_device(device)
        for stage in STAGES:
            getattr(self, stage).to(device)
        return self

    def set_precision(self, precision: str) -> None:
        """Sample both networks at `precision`: the DPD under autocast, the semantic LM from weights in that dtype."""
        precision_dtype(precision)
        self.cfg.dpd.precision = self.cfg.semantic_lm.precision = precision

    def dpd_for_sampling(self):
        """The DPD as the samplers call it: at `dpd.precision`, and on a CUDA device with `dpd.cuda_graphs` through
        `GraphedCalls` (one CUDA graph per input shape and precision, recorded at its first call and kept with the
        model); otherwise the DPD itself under `at_precision`. Wrap it in a call counter, not the other way round:
        a replay runs no Python inside. With `dpd.compile` the network is `torch.compile`d first (`compiled_dpd`)."""
        model = self.compiled_dpd() if self.cfg.dpd.compile else self.dpd_at_precision()
        if self._device.type != "cuda" or not self.cfg.dpd.cuda_graphs:
            return model
        graphs = self.__dict__.setdefault("_dpd_graphs", {})
        key = (self.cfg.dpd.precision, self._device, self.cfg.dpd.compile)
        if key not in graphs:
            graphs[key] = GraphedCalls(model)
        return graphs[key]

    def compiled_dpd(self):
        """`dpd_at_precision()` with its network through `torch.compile` (inductor; one compilation per input shape,
        at its first call), kept for that network (one per precision and device, as `dpd_at_precision` keeps them).
        Under autocast the compiled network is the bf16 copy, the autocast context around it, as `dpd_at_precision`
        runs it."""
        sampled = self.dpd_at_precision()
        network = sampled.model if isinstance(sampled, _Autocast) else sampled
        kept = self.__dict__.setdefault("_dpd_compiled", {})  # by the network compiled: the DPD or its kept copy
        if network not in kept:
            kept[network] = Compiled(network)
        compiled = kept[network]
        return _Autocast(compiled, sampled.dtype, self._device) if isinstance(sampled, _Autocast) else compiled

    def dpd_at_precision(self):
        """The DPD as sampled at `dpd.precision`: itself in fp32; for bf16, under autocast, a copy whose linear layers
        hold their weights and biases in bf16 (`linears_in`), made once per device and kept. Those are the casts
        autocast makes of them at every pass, so the numbers are the same; made once, they stop costing a read and a
        write of every weight per pass (a CUDA graph recorded under autocast must not cache them)."""
        dtype = precision_dtype(self.cfg.dpd.precision)
        if dtype is None:
            return self.dpd
        copies = self.__dict__.setdefault("_dpd_copies", {})
        key = (dtype, next(self.dpd.parameters()).device)
        if key not in copies:
            copies[key] = linears_in(self.dpd, dtype).eval()
        return _Autocast(copies[key], dtype, self._device)

    def lm_at_precision(self):
        """The semantic LM at `semantic_lm.precision`: itself in fp32, else a copy in that dtype, made once per device
        and kept (the fp32 weights stay as they are, so switching back loses nothing; moving the LM to another device
        makes a new copy there, rather than sampling from a copy left on the old one). The copy's linear layers are
        `FewRowLinear`s on a CPU; on a GPU its SwiGLUs' W1 and W3 are one product (`stacked_gates`)."""
        dtype = precision_dtype(self.cfg.semantic_lm.precision)
        if dtype is None:
            return self.semantic_lm
        copies = self.__dict__.setdefault("_lm_copies", {})
        key = (dtype, self.semantic_lm.bos.device)
        if key not in copies:
            lm = copy.deepcopy(self.semantic_lm).to(dtype).eval()
            copies[key] = few_row_linears(lm) if key[1].type == "cpu" else stacked_gates(lm)
        return copies[key]

    @property
    def fits_tempo(self) -> bool:
        """Whether `generate` fits the music to a stated tempo unless told: for an LM without a beat clock
        (`semantic_lm.tempo_clock`). An LM with one keeps to the asked grid itself, and the fit, which hears
        with one tracker, moved music the other tracker had heard at the asked tempo (docs/semantic.md)."""
        return self.semantic_lm.clock_projection is None

    def tempo_tokens(self, prompts: list[str] | None) -> torch.Tensor | None:
        """The LM's tempo token for each prompt `(b,)` (0 where it states no tempo); None without prompts or tempo token."""
        lm_cfg = self.semantic_lm.config
        if prompts is None or self.semantic_lm.tempo_embedding is None:
            return None
        return tempo_bucket(stated_bpm(prompts), lm_cfg.tempo_buckets, lm_cfg.tempo_range).to(self._device)

    def tempo_beats(self, prompts: list[str] | None) -> torch.Tensor | None:
        """The LM's beat grid for each prompt `(b, 2)` (`beat_grid`: a downbeat at the first frame; no clock where the
        prompt states no tempo); None without prompts or beat clock."""
        if prompts is None or self.semantic_lm.clock_projection is None:
            return None
        return beat_grid(stated_bpm(prompts), self.token_rate)

    def _sampling(self, steps: int | None, guidance: float | None, temperature: float | None = None,
                  top_k: int | None = None, lm_guidance: float | None = None) -> tuple[int, float]:
        """The DPD's sampling steps and guidance scale, the bundle's own where None; every setting checked."""
        check_sampling(steps, guidance, temperature, top_k, lm_guidance)
        d = self.cfg.dpd
        return (d.steps if steps is None else int(steps)), (d.guidance if guidance is None else guidance)

    def sampling_settings(self, steps: int | None = None, guidance: float | None = None, temperature: float | None = None,
                          top_k: int | None = None, lm_guidance: float | None = None) -> dict:
        """The settings a call with these arguments samples with, the bundle's own filled in (for sidecars)."""
        steps, guidance = self._sampling(steps, guidance, temperature, top_k, lm_guidance)
        lm = self.cfg.semantic_lm
        return {"steps": steps, "guidance": guidance, "solver": self.cfg.dpd.solver,
                "temperature": lm.temperature if temperature is None else temperature,
                "top_k": lm.top_k if top_k is None else int(top_k), "top_p": lm.top_p,
                "lm_guidance": lm.guidance if lm_guidance is None else lm_guidance,
                **({"lm_tempo_guidance": lm.tempo_guidance} if lm.tempo_guidance > 0 else {})}

    def _seeded(self, seed: int, *parts: int, rows: int) -> list[torch.Generator]:
        """One generator per prompt i, seeded by (seed + i, *parts)."""
        return [torch.Generator(device=self._device).manual_seed(mix_seeds(seed + i, *parts)) for i in range(rows)]

    @property
    def _device(self) -> torch.device:
        return next(self.dpd.parameters()).device

    def _window(self) -> tuple[int, int]:
        """(frames per DPD window, frames of clean context when continuing), in whole tokens."""
        window = max(self.frames_per_token, round(self.cfg.dpd.window_seconds * self.vae.latent_rate))
        window -= window % self.frames_per_token
        return window, window // 2 - (window // 2) % self.frames_per_token

    def _window_tokens(self, tokens: torch.Tensor, first_frame: int, frames: int) -> torch.Tensor:
        """The semantic tokens `(b, t)` whose 25 Hz frames overlap latent frames first_frame … first_frame + frames − 1."""
        first, last = first_frame // self.frames_per_token, math.ceil((first_frame + frames) / self.frames_per_token)
        return tokens[:, first:min(last, tokens.shape[1])]

    def _window_noise(self, seed: int, k: int, rows: int) -> list[torch.Generator]:
        """DPD window k's noise: one generator per prompt i, seeded by (seed + i, 2, k)."""
        return self._seeded(seed, 2, k, rows=rows)

    def latents(self, model, tokens: torch.Tensor, duration: float, steps: int, guidance: float, seed: int,
                start: torch.Tensor | None = None, mulan: torch.Tensor | None = None) -> torch.Tensor:
        """DPD latents `(b, frames, d)` for `duration` seconds, window by window with clean-context continuation;
        `start` `(b, P, d)`: latents that already exist (continuation), kept as they are. `model`: the DPD as
        `dpd_for_sampling()` gives it (at its precision), or a wrapper of that. `mulan` `(b, L)`: the prompts' MuLan
        tokens, which a DPD with `dpd.mulan_condition` hears beside each window's tokens (others ignore them)."""
        total = math.ceil(duration * self.vae.latent_rate)
        window, context = self._window()
        deltas = angles_from_steps(SCHEDULES["melody"](steps))
        model, guidance = guided_in_one_call(model, guidance), 1.0  # one pass per step
        b = tokens.shape[0]

        def window_tokens(first_frame: int, frames: int) -> torch.Tensor:
            return self.dpd.condition_of(self._window_tokens(tokens, first_frame, frames), mulan)

        def generator(k: int) -> list[torch.Generator]:  # window k's noise, one generator per prompt
            return self._window_noise(seed, k, b)

        if start is None:
            first = min(window, total)
            noise = noise_like_rows(b, first, self.vae.cfg.latent_dim, generator(0), self._device)
            latents = sample(model, noise, deltas, window_tokens(0, first), guidance, solver=self.cfg.dpd.solver)
        else:
            latents = start
        k = 1
        while latents.shape[1] < total:
            new = min(window - context, total - latents.shape[1])
            keep = min(context, latents.shape[1])
            made = continue_latents(model, latents, new, window_tokens(latents.shape[1] - keep, keep + new), deltas,
                                    guidance, generator(k), context=keep, solver=self.cfg.dpd.solver)
            latents = torch.cat((latents, made), dim=1)
            k += 1
        return latents

    @torch.no_grad()
    def continue_(self, audio: torch.Tensor, seconds: float, prompts: list[str] | None = None, steps: int | None = None,
                  guidance: float | None = None, temperature: float | None = None, top_k: int | None = None,
                  lm_guidance: float | None = None, seed: int = 0,
                  progress: Callable[[str], None] | None = None) -> GenerateOutput:
        """`audio` `(b, channels, n)` at the VAE's rate, extended by `seconds`: the output starts with the input,
        sample for sample. The condition is the prompts' MuLan tokens, or the input's own (a music prompt)."""
        audio = self._clip(audio, "the audio to continue")
        rate = self.vae.cfg.sample_rate
        seconds = check_duration(seconds)
        steps, guidance = self._sampling(steps, guidance, temperature, top_k, lm_guidance)
        b, n_in = audio.shape[0], audio.shape[-1]
        times, passes = {}, {}
        tell = progress or (lambda stage: None)

        mulan_tokens, prefix = self._read_clip(audio, prompts, times, passes, tell)  # the input's own tokens lead

        tell("semantic_lm")
        clock = time.perf_counter()
        total_seconds = n_in / rate + seconds
        n_new = max(0, math.ceil(total_seconds * self.token_rate) - prefix.shape[1])
        result = self._semantic_tokens(mulan_tokens, n_new, prefix, self._seeded(seed, 1, rows=b), temperature, top_k,
                                       lm_guidance, prompts)
        tokens = torch.cat((prefix, result.tokens), dim=1)
        times["semantic_lm"], passes["semantic_lm"] = time.perf_counter() - clock, result.forward_passes

        tell("dpd")
        clock = time.perf_counter()
        start = self._encode(audio, seed)
        counted = _Counted(self.dpd_for_sampling())
        latents = self.latents(counted, tokens, total_seconds, steps, guidance, seed, start=start, mulan=mulan_tokens)
        times["dpd"], passes["dpd"] = time.perf_counter() - clock, counted.calls

        tell("vae")
        clock = time.perf_counter()
        samples = n_in + round(seconds * rate)
        decoded = self.vae.decode_latents(latents, samples).clamp(-1.0, 1.0).float()
        out = torch.cat((audio, decoded[..., n_in:]), dim=-1)  # the input, untouched, then what follows it
        times["vae"], passes["vae"] = time.perf_counter() - clock, 2  # encode the input, decode the whole
        return GenerateOutput(out, rate, tokens, latents, passes, times)

    @torch.no_grad()
    def resynthesize(self, audio: torch.Tensor, through: str = "dpd", steps: int | None = None,
                     guidance: float | None = None, seed: int = 0) -> GenerateOutput:
        """Clips `(b, channels, n)` made again by the second half of the pipeline, for telling where a stage loses
        what the music asked for: `through="dpd"` renders the clips' own semantic tokens (the tokenizer's, in place
        of the LM's) with the DPD and the VAE decoder, clip i's noise from seed + i as in `generate`;
        `through="vae"` encodes each clip (posterior sample (seed + i, 3)) and decodes it, the ceiling of any model
        of the VAE's latents. The output has the input's length."""
        if through not in RESYNTHESIS:
            raise MelodyError(f"resynthesize through '{through}': choose one of {', '.join(RESYNTHESIS)}")
        audio = self._clip(audio, "the audio to resynthesize")
        steps, guidance = self._sampling(steps, guidance)
        n, times, passes = audio.shape[-1], {}, {}
        clock = time.perf_counter()
        tokens = self.tokenizer.tokens(audio.mean(1))
        times["tokenizer"], passes["tokenizer"] = time.perf_counter() - clock, 1
        if through == "dpd":
            own = None
            if self.dpd.mulan_levels:  # a DPD that hears MuLan tokens hears the clips' own sound
                clock = time.perf_counter()
                own = self.mulan.tokens_from_audio(audio.mean(1))
                times["mulan"], passes["mulan"] = time.perf_counter() - clock, 1
            latents, out = self._render(tokens, n / self.vae.cfg.sample_rate, steps, guidance, seed, times, passes,
                                        mulan_tokens=own)
        else:
            clock = time.perf_counter()
            latents = self._encode(audio, seed)
            out = self.vae.decode_latents(latents, n).clamp(-1.0, 1.0).float()
            times["vae"], passes["vae"] = time.perf_counter() - clock, 2  # encode, decode
        return GenerateOutput(out, self.vae.cfg.sample_rate, tokens, latents, passes, times)

    @torch.no_grad()
    def inpaint(self, audio: torch.Tensor, start: float, end: float, prompts: list[str] | None = None,
                steps: int | None = None, guidance: float | None = None, temperature: float | None = None,
                top_k: int | None = None, lm_guidance: float | None = None, seed: int = 0, blend: float = BLEND_SECONDS,
                progress: Callable[[str], None] | None = None) -> GenerateOutput:
        """`audio` `(b, channels, n)` at the VAE's rate with the region `start` … `end` seconds regenerated; the
        output has n samples, equal to the input's sample for sample outside start − blend … end + blend.

        The region is widened to whole semantic tokens (25 Hz): tokens ⌊25·start⌋ … ⌈25·end⌉ − 1 and their
        latent frames are made anew, everything else is the input's own.

        1. condition: the prompts' MuLan tokens, or the input's own (a music prompt), as in `continue_`;
        2. semantic tokens: the input's own (`tokenizer.tokens`) before the region; the region's from the
           LM continuing them (seeded like `continue_`); the input's own after it. The LM is causal, so the
           region's tokens do not see what follows; the DPD's clean right context joins the two (step 3);
        3. latents: the input encoded by the VAE (a posterior sample, seeded like `continue_`); the region's
           frames made again by the DPD with the paper's per-frame noise levels (multi-chunk, §3.2): frames
           outside the region are known, clean at δ = 0 and written back after every step, while the
           region's start from noise at δ = π/2 (`melody.diffusion.inpaint_latents`, `Known`). The DPD samples
           windows of `dpd.window_seconds`, so the region is made window by window, left to right
           (`region_windows`): while the rest of the region and half a window of clean frames do not fit one
           window, a window continues it with that much clean context on its left (as `latents` does); the
           last one holds the rest with its clean frames shared between both sides. Window k's noise comes
           from (seed + i, 2, k);
        4. the VAE decodes all the latents, and the decoded audio replaces the input on start … end, joined
           by linear crossfades over the `blend` seconds just outside it (`splice`).

        Choices where the paper is silent: the windows and their placement; the linear (not equal-power)
        fade, since outside the region the decoded audio is the VAE's reconstruction of the input, which
        is correlated with it; the tokens after the region are kept, not re-sampled. Forward passes: MuLan 1,
        tokenizer 1, LM one per region token, DPD one per step and window (guidance batched in), VAE 2 (encode, decode)."""
        audio = self._clip(audio, "the audio to inpaint")
        rate = self.vae.cfg.sample_rate
        b, n_in = audio.shape[0], audio.shape[-1]
        start, end = check_region(start, end, n_in / rate, 1 / self.token_rate, blend)
        steps, guidance = self._sampling(steps, guidance, temperature, top_k, lm_guidance)
        # the region's tokens (a start or end within 1e-6 token of a token's edge is on it)
        first, last = math.floor(start * self.token_rate + 1e-6), math.ceil(end * self.token_rate - 1e-6)
        times, passes = {}, {}
        tell = progress or (lambda stage: None)

        mulan_tokens, own = self._read_clip(audio, prompts, times, passes, tell)  # (b, L), (b, ⌈n_in / hop⌉)
        last = min(last, own.shape[1])

        tell("semantic_lm")
        clock = time.perf_counter()
        result = self._semantic_tokens(mulan_tokens, last - first, own[:, :first], self._seeded(seed, 1, rows=b),
                                       temperature, top_k, lm_guidance, prompts)
        tokens = torch.cat((own[:, :first], result.tokens, own[:, last:]), dim=1)
        times["semantic_lm"], passes["semantic_lm"] = time.perf_counter() - clock, result.forward_passes

        tell("dpd")
        clock = time.perf_counter()
        known = self._encode(audio, seed)  # (b, ⌈n_in / hop⌉, d)
        counted = _Counted(self.dpd_for_sampling())
        region = (first * self.frames_per_token, min(last * self.frames_per_token, known.shape[1]))
        latents = self.regenerate_latents(counted, known, tokens, *region, steps, guidance, seed, mulan=mulan_tokens)
        times["dpd"], passes["dpd"] = time.perf_counter() - clock, counted.calls

        tell("vae")
        clock = time.perf_counter()
        decoded = self.vae.decode_latents(latents, n_in).clamp(-1.0, 1.0).float()
        out = splice(audio, decoded, round(start * rate), round(end * rate), round(blend * rate))
        times["vae"], passes["vae"] = time.perf_counter() - clock, 2  # encode the input, decode the whole
        return GenerateOutput(out, rate, tokens, latents, passes, times)

    def regenerate_latents(self, model, latents: torch.Tensor, tokens: torch.Tensor, first: int, last: int, steps: int,
                           guidance: float, seed: int, mulan: torch.Tensor | None = None) -> torch.Tensor:
        """`latents` `(b, F, d)` with frames first … last − 1 made anew by the DPD, window by window
        (`region_windows`), each window conditioned on the tokens `(b, T)` covering it (and `mulan`, as `latents`
        takes it); the other frames are returned as they are, exactly. `model`: as `latents` takes it."""
        window, context = self._window()
        deltas = angles_from_steps(SCHEDULES["melody"](steps))
        model, guidance = guided_in_one_call(model, guidance), 1.0  # one pass per step
        out = latents.clone()
        plan = region_windows(first, last, latents.shape[1], window, context, self.frames_per_token)
        for k, (lo, new_first, new, hi) in enumerate(plan):
            out[:, new_first:new_first + new] = inpaint_latents(
                model, out[:, lo:hi], new_first - lo, new, self.dpd.condition_of(self._window_tokens(tokens, lo, hi - lo), mulan),
                deltas, guidance, self._window_noise(seed, k, out.shape[0]), solver=self.cfg.dpd.solver)
        return out

    def _read_clip(self, audio: torch.Tensor, prompts: list[str] | None, times: dict, passes: dict,
                   tell: Callable[[str], None]) -> tuple[torch.Tensor, torch.Tensor]:
        """(MuLan tokens `(b, L)` of the prompts or of the clips themselves, the clips' own semantic tokens
        `(b, ⌈n / hop⌉)`) for clips `(b, channels, n)`; each stage's time and passes written to `times`, `passes`."""
        tell("mulan")
        clock = time.perf_counter()
        mono = audio.mean(1)
        mulan_tokens = self._condition(prompts, mono)
        times["mulan"], passes["mulan"] = time.perf_counter() - clock, 1
        tell("tokenizer")
        clock = time.perf_counter()
        own = self.tokenizer.tokens(mono)
        times["tokenizer"], passes["tokenizer"] = time.perf_counter() - clock, 1
        return mulan_tokens, own

    def _clip(self, audio: torch.Tensor, what: str) -> torch.Tensor:
        """`audio` checked to be `(b, channels, n ≥ 1)`, as float32 on the models' device."""
        rate, channels = self.vae.cfg.sample_rate, self.vae.cfg.channels
        if audio.dim() != 3 or audio.shape[1] != channels or audio.shape[-1] < 1:
            raise MelodyError(f"{what} must be (batch, {channels}, samples) at {rate} Hz, got {tuple(audio.shape)}")
        return audio.to(self._device, torch.float32)

    def _condition(self, prompts: list[str] | None, mono: torch.Tensor) -> torch.Tensor:
        """MuLan tokens `(b, L)` of the prompts (one per clip), or of the clips `mono` `(b, n)` themselves."""
        if prompts is None:
            return self.mulan.tokens_from_audio(mono)
        mulan_tokens = self.mulan.tokens_from_text(check_prompts(prompts))
        if mulan_tokens.shape[0] != mono.shape[0]:
            raise MelodyError(f"{mulan_tokens.shape[0]} prompts for {mono.shape[0]} clips; give one prompt per clip")
        return mulan_tokens

    def _encode(self, audio: torch.Tensor, seed: int) -> torch.Tensor:
        """The clips' latents `(b, ⌈n / hop⌉, d)`: clip i's VAE posterior sample drawn with (seed + i, 3)."""
        return self.vae.encode_latents(audio, self._seeded(seed, 3, rows=audio.shape[0]))

    @torch.no_grad()
    def stream(self, prompts: Iterable[str], chunk_seconds: float = 5.0, steps: int | None = None,
               guidance: float | None = None, temperature: float | None = None, top_k: int | None = None,
               lm_guidance: float | None = None, seed: int = 0) -> Iterator[torch.Tensor]:
        """Music chunk by chunk, one chunk `(channels, round(chunk_seconds · rate))` per prompt of `prompts` (any
        iterable, endless ones too): the prompt may change between chunks, and the music goes on from what was
        written — the LM from its token history, the DPD from the latents' clean tail. Chunk k's randomness
        derives from (seed, k) only, so a re-run gives the same chunks. Tokens and latents are written
        `DECODE_LOOKAHEAD_SECONDS` ahead of the audio handed out, and each chunk is decoded with the latents
        around it, so the chunks join exactly as one decode of everything would; a new prompt is therefore
        heard from that far into its chunk."""
        chunk_seconds = check_duration(chunk_seconds)
        steps, guidance = self._sampling(steps, guidance, temperature, top_k, lm_guidance)
        rate, hop = self.vae.cfg.sample_rate, self.vae.hop
        tokens = torch.zeros(1, 0, dtype=torch.long, device=self._device)
        latents, emitted, grid = None, 0, None
        for k, prompt in enumerate(prompts):
            end = round((k + 1) * chunk_seconds * rate)  # the chunk's last sample (exclusive)
            ahead = (k + 1) * chunk_seconds + DECODE_LOOKAHEAD_SECONDS  # what tokens and latents must cover
            cond = self.mulan.tokens_from_text(check_prompts([prompt])).to(self._device)
            n_new = math.ceil(ahead * self.token_rate) - tokens.shape[1]
            beats = self.tempo_beats([prompt])
            if beats is not None:  # a new tempo goes on from the old one's beat, not from where its own grid would be
                beats = grid = continued_grid(grid, beats, tokens.shape[1])
            made = self._semantic_tokens(cond, n_new, tokens if tokens.shape[1] else None,
                                         torch.Generator(device=self._device).manual_seed(mix_seeds(seed, 1, k)),
                                         temperature, top_k, lm_guidance, [prompt], beats=beats)
            tokens = torch.cat((tokens, made.tokens), dim=1)
            latents = self.latents(self.dpd_for_sampling(), tokens, ahead, steps, guidance, mix_seeds(seed, 2, k),
                                   start=latents, mulan=cond)
            first_frame = max(0, emitted // hop - round(DECODE_CONTEXT_SECONDS * self.vae.latent_rate))
            audio = self.vae.decode_latents(latents[:, first_frame:]).clamp(-1.0, 1.0).float()
            yield audio[0, :, emitted - first_frame * hop:end - first_frame * hop]
            emitted = end
