"""Training the MusicLM-style baseline's acoustic stage on the shared engine: `melody train musiclm`.

The baseline (`melody.baselines.musiclm`) shares melody's MuLan, tokenizer, semantic LM and VAE (a bundle,
frozen); this stage trains what it adds: the codec's RVQ and the coarse and fine acoustic LMs
(MusicLM, Agostinelli et al. 2023; AudioLM, Borsos et al. 2022).

- **Codec, once** (SoundStream's k-means initialisation, here the whole fit): on a new run the RVQ is
  fitted by k-means on the frames (the VAE's posterior means, `melody.baselines.codec`) of `codec.fit_clips`
  whole training clips spread evenly over the split (the corpus is stored source by source), seeded by
  `train.seed`, and written to `RUN/codec.safetensors`; a resumed run reads it back. It never changes after,
  so the LMs' targets never move. A pretrained codec (`codec.kind` "encodec" / "dac", `codec.path`:
  `melody.baselines.hf_codec`) is already quantised: nothing is fitted, its fingerprint goes into
  `RUN/conditioners.json` beside the frozen models', and a resume against another codec is refused.
- **One step**, on a batch of `coarse.window_seconds` crops: the frozen models give each crop's MuLan tokens
  (of its *audio*, as melody's LM learns; text only at inference), its 25 Hz semantic tokens (the bundle's
  tokenizer) and its codes (the codec). The coarse LM learns the crop's 4 coarse levels given the MuLan and
  semantic tokens; the fine LM a random `fine.window_seconds` span of it (one start per example, from the
  step's generator), its 8 fine levels given the span's coarse codes (another codec: its own split, frame
  rate and codebook); with `fine.code_vectors` (the presets') it reads the codec's code vectors, set once the codec is
  fitted or read. Both: teacher-forced next-token cross-entropy over the frames that hold audio
  (`lm_loss`), each LM with its own AdamW (β = 0.9, 0.95, LLaMA's) and schedule; EMA copies when
  `train.ema_decay` > 0.
- **Held out**, every `train.sample_every` steps: both LMs' perplexity on the fixed valid batch
  (`valid/coarse_ppl`, `valid/fine_ppl`).
- **Export**, when the run reaches `train.steps`: `RUN/musiclm.safetensors` + `RUN/musiclm.json`
  (`MusicLMStyle.save_pretrained`, EMA weights when kept), loadable with `MusicLMStyle.from_pretrained(RUN, melody)`.

The run's `config.json` is the `MusicLMConfig` (with its `train` section, which the engine reads);
`RUN/conditioners.json` records the frozen models' fingerprints, and resuming against another bundle is refused.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from melody.audio import resample, to_channels
from melody.baselines.codec import LatentCodec, vae_latents
from melody.baselines.hf_codec import HFCodec
from melody.baselines.musiclm import (FROZEN, MusicLMConfig, MusicLMStyle, codec_vectors, flatten_codes, preset,
                                      window_frames)
from melody.checkpoint import fingerprint, load_weights, read_tensors, write_tensors
from melody.config import apply_overrides, from_dict
from melody.data.loader import ShardDataset
from melody.data.shards import iter_samples, read_manifest
from melody.errors import MelodyError
from melody.eval.attributes import spread_indices
from melody.io import read_json, write_json_atomic
from melody.semantic.lm import lm_loss
from melody.train.engine import Engine, Stage, check_frozen

BETAS = (0.9, 0.95)  # LLaMA's, as melody's semantic LM


@dataclass
class Crops:
    """What the frozen models make of a batch of crops."""

    mulan: torch.Tensor  # (b, 12) long: MuLan tokens of each crop's audio
    semantic: torch.Tensor  # (b, S) long: 25 Hz semantic tokens
    codes: torch.Tensor  # (b, n, levels) long: codec codes (50 Hz × 12 levels for the latent codec)
    keep: torch.Tensor  # (b, n) bool: frames that hold audio (not the loader's padding)


def spread_audio(data_root: str | Path, split: str, clips: int, sample_rate: int, channels: int) -> Iterator[torch.Tensor]:
    """Whole clips `(1, channels, n)` of `split`, `clips` of them spread evenly over it in corpus order
    (`spread_indices`): the corpus is written source by source, so its first clips are all of one source."""
    manifest = read_manifest(data_root)
    total = int(manifest["splits"].get(split, {}).get("clips", 0))
    if total == 0 or clips < 1:
        raise MelodyError(f"{data_root}: the '{split}' split has no clips to read (or {clips} were asked for)")
    wanted = set(spread_indices(total, clips))
    for i, sample in enumerate(iter_samples(data_root, split)):
        if i in wanted:
            audio = resample(to_channels(sample["audio"], channels), sample["sample_rate"], sample_rate)
            yield torch.from_numpy(audio)[None]


@torch.no_grad()
def fit_codec(codec: LatentCodec, vae, data_root: Path, clips: int, seed: int) -> LatentCodec:
    """Fit `codec` on the VAE latents of `clips` whole training clips spread over the split (`spread_audio`)."""
    latents = [vae_latents(vae, audio) for audio in spread_audio(data_root, "train", clips, vae.cfg.sample_rate,
                                                                  vae.cfg.channels)]
    codec.fit(latents, seed=seed)
    return codec


def check_codec(run_dir: Path, codec: HFCodec) -> None:
    """Record a pretrained codec's fingerprint in `RUN/conditioners.json` (written by `check_frozen`), or, when the
    run has one, refuse another codec: the LMs' targets would change under them."""
    path = run_dir / "conditioners.json"
    record, value = read_json(path, "conditioners record"), fingerprint(codec.model)
    if "codec" not in record:
        write_json_atomic(path, {**record, "codec": value})
    elif record["codec"] != value:
        raise MelodyError(f"{run_dir}: this run learned the codes of another codec (fingerprint {record['codec']}, given "
                          f"{value}); set codec.path to the codec it started with, or start a new --out")


class MusicLMStage(Stage):
    name = "musiclm"
    ema_models = ("coarse", "fine")
    export = ()  # `finalize` exports the MusicLMStyle folder: its weights with their own JSON config

    def __init__(self, config: MusicLMConfig, data_root: str | Path, run_dir: str | Path, melody) -> None:
        super().__init__(config)
        self.data_root, self.run_dir, self.melody = Path(data_root), Path(run_dir), melody
        check_frozen(self.run_dir, {name: getattr(melody, name) for name in FROZEN})
        for model in (melody.mulan, melody.tokenizer, melody.vae):
            model.eval().requires_grad_(False)
        torch.manual_seed(config.train.seed)
        self.codec, coarse, fine = MusicLMStyle.build(config, melody.cfg)
        self._codec(self.run_dir / "codec.safetensors")
        vectors = codec_vectors(self.codec)  # fitted or read now: the LMs that read code vectors take them (not saved)
        for model in (coarse, fine):
            model.set_code_vectors(vectors)
        self.models = {"coarse": coarse, "fine": fine}
        self.optimizers = {name: torch.optim.AdamW(model.parameters(), lr=config.train.lr, betas=BETAS,
                                                   weight_decay=config.train.weight_decay)
                           for name, model in self.models.items()}
        self.frame_rate = self.codec.frame_rate
        self.fine_frames = window_frames(config.fine, self.frame_rate)[0]

    def _codec(self, path: Path) -> None:
        """Read the run's fitted codec, or fit it (a new run) and write it before any training step; a pretrained
        codec is only checked against the run's record."""
        if isinstance(self.codec, HFCodec):
            check_codec(self.run_dir, self.codec)
            return
        if path.is_file():
            tensors, _ = read_tensors(path, "codec")
            load_weights(self.codec, tensors, str(path))
            return
        fit_codec(self.codec, self.melody.vae, self.data_root, self.cfg.codec.fit_clips, self.cfg.train.seed)
        write_tensors(path, self.codec.state_dict(), {"stage": "musiclm-codec"})

    def dataset(self, split: str) -> ShardDataset:
        vae = self.melody.vae.cfg
        return ShardDataset.from_corpus(self.data_root, split, crop_seconds=self.cfg.coarse.window_seconds,
                                        sample_rate=vae.sample_rate, channels=vae.channels, seed=self.cfg.train.seed)

    @torch.no_grad()
    def crops(self, audio: torch.Tensor, lengths: torch.Tensor) -> Crops:
        """MuLan tokens, semantic tokens and codes of crops `(b, c, n)` with `lengths` real samples each."""
        melody, device = self.melody, audio.device
        for model in (melody.mulan, melody.tokenizer, melody.vae, self.codec):
            model.to(device)
        mono = audio.mean(1)
        codes = self.codec.encode_audio(audio, melody.vae)  # (b, n, levels)
        real = torch.tensor([self.codec.audio_frames(int(n), melody.vae) for n in lengths], device=device)
        keep = torch.arange(codes.shape[1], device=device)[None, :] < real[:, None]
        return Crops(melody.mulan.tokens_from_audio(mono, lengths), melody.tokenizer.tokens(mono, lengths), codes, keep)

    def losses(self, coarse, fine, crops: Crops, generator: torch.Generator | None) -> dict[str, object]:
        """Teacher-forced `LMLoss` of both LMs on `crops`; the fine LM's span starts at random (None: at 0)."""
        levels = self.codec.coarse_levels
        coarse_targets = flatten_codes(crops.codes[..., :levels])
        coarse_out = coarse(coarse_targets, crops.mulan, crops.semantic)
        b, n, _ = crops.codes.shape
        span = min(self.fine_frames, n)
        if generator is None:
            start = torch.zeros(b, dtype=torch.long)
        else:
            start = torch.randint(0, n - span + 1, (b,), generator=generator, device=generator.device).cpu()
        frames = (start[:, None] + torch.arange(span)[None, :]).to(crops.codes.device)  # (b, span)
        window = crops.codes.gather(1, frames[..., None].expand(-1, -1, crops.codes.shape[-1]))
        fine_keep = crops.keep.gather(1, frames)
        fine_targets = flatten_codes(window[..., levels:])
        fine_out = fine(fine_targets, window[..., :levels])
        return {"coarse": lm_loss(coarse_out.logits, coarse_targets, crops.keep.repeat_interleave(levels, 1)),
                "fine": lm_loss(fine_out.logits, fine_targets, fine_keep.repeat_interleave(window.shape[-1] - levels, 1))}

    def train_step(self, engine: Engine, batch: dict, generator: torch.Generator) -> dict[str, float]:
        crops = self.crops(batch["audio"], batch["length"])
        with engine.autocast():
            loss = self.losses(engine.model("coarse"), engine.model("fine"), crops, generator)
        logs = {}
        for name in ("coarse", "fine"):
            value = loss[name].loss
            logs[f"{name}/grad_norm"] = engine.optimize(name, value)
            logs[f"{name}/total"] = value.item()
            logs[f"{name}/ppl"] = math.exp(min(value.item(), 50.0))
        return logs

    def sample(self, engine: Engine, batch: dict, folder: Path) -> None:
        """Both LMs' perplexity on the fixed valid batch (the fine LM on each crop's first span)."""
        crops = self.crops(batch["audio"], batch["length"])
        loss = self.losses(engine.ema_or_model("coarse").eval(), engine.ema_or_model("fine").eval(), crops, None)
        logs = {f"valid/{name}_ppl": math.exp(min(loss[name].loss.item(), 50.0)) for name in ("coarse", "fine")}
        engine.log(logs, engine.step)
        write_json_atomic(folder / "perplexity.json", logs)

    def finalize(self, engine: Engine) -> None:
        """Export `RUN/musiclm.safetensors` + `RUN/musiclm.json` (EMA weights when kept)."""
        coarse, fine = engine.ema_or_model("coarse"), engine.ema_or_model("fine")
        model = MusicLMStyle(self.melody, self.codec, coarse, fine, self.cfg)
        model.save_pretrained(self.run_dir, trained_against=read_json(self.run_dir / "conditioners.json", "conditioners record"))


@dataclass
class TrainedMusicLM:
    step: int
    steps: int
    run_dir: Path

    def summary(self) -> str:
        if self.step < self.steps:
            return f"trained musiclm to step {self.step} of {self.steps}; continue with --resume"
        return f"trained musiclm to step {self.step}; model: {self.run_dir / 'musiclm.safetensors'} (+ musiclm.json)"


def run_config(run_dir: Path, preset_name: str, overrides: list[str], resume: bool) -> MusicLMConfig:
    """A new run starts from the preset; a resumed one from its own config.json, overrides on top."""
    path = run_dir / "config.json"
    if resume and path.is_file():
        data = read_json(path, "config")
        if not isinstance(data, dict) or data.pop("format_version", None) != 1:
            raise MelodyError(f"{path}: not a MusicLM-style run config; pass the run folder of `melody train musiclm`")
        return apply_overrides(from_dict(data, MusicLMConfig), overrides)
    return preset(preset_name, overrides)


def train_musiclm(data: Path, bundle: Path, run_dir: Path, preset_name: str = "tiny", overrides: list[str] | None = None,
                  resume: bool = False, progress: bool = True, stop_at: int | None = None) -> TrainedMusicLM:
    """Fit the codec (a new run) and train both acoustic LMs to `train.steps` (or `stop_at`), against the
    melody bundle in `bundle`; exports the model into `run_dir` when it reaches `train.steps`."""
    from melody.pipeline import MeLoDy

    read_manifest(data)
    run_dir = Path(run_dir)
    if (run_dir / "latest.json").exists() != resume:  # the engine says so too, but only after the codec's fit
        raise MelodyError(f"{run_dir}: holds a run already; pass --resume to continue it, or choose another --out" if not resume
                          else f"{run_dir}: no checkpoint to resume from (no latest.json); start without --resume")
    config = run_config(run_dir, preset_name, list(overrides or []), resume)
    stage = MusicLMStage(config, data, run_dir, MeLoDy.from_pretrained(bundle))
    position = Engine(stage, run_dir, resume=resume, progress=progress).fit(stop_at)
    return TrainedMusicLM(position.step, config.train.steps, run_dir)
