"""Training the semantic LM (MeLoDy §3.1) on the shared engine: `melody train semantic`.

The LM learns p(semantic tokens | MuLan tokens) on `semantic_lm.window_seconds` windows of the
corpus (10 s: 250 tokens at 25 Hz), with both conditioners frozen and run on the fly on each
batch: the trained tokenizer gives the semantic tokens, the trained MuLan the 12 tokens of the
window's **audio** (MusicLM's recipe: text only enters at inference, through the same RVQ).
With `train.cached_features` both come from `melody data encode`'s features of these two models
instead (computed once per clip; the MuLan tokens are then those of the whole clip, which for the
built-in corpus's 10 s clips is the window), for every split, with the captions' MuLan tokens too:
a run then reads no audio and runs no text encoder (`--latents none` features are a few kB a clip).

One step: teacher-forced next-token cross-entropy over the valid frames (`lm_loss`); the
condition is replaced by the learned null condition for `semantic_lm.cond_dropout` of the
examples (`condition_dropout_mask`, from the step's generator), which is what classifier-free
guidance needs at sampling. Where the LM has a tempo token (`semantic_lm.tempo_buckets`), it is the
bucket of the clip's `attributes.tempo_bpm`, left out ("no tempo") for `semantic_lm.tempo_dropout`
of the examples and for clips whose metadata states none. With `semantic_lm.tempo_stretch` the examples
that state their tempo are played faster or slower (`stretch_tokens`) and their tempo token moves with
them, so that the token sets the tokens' pace (`valid/ppl_stretched_told` against `_stale` shows it). With
`semantic_lm.tempo_clock` each frame's input also holds its place on the beat grid of that (moved) tempo, the grid
starting where the window's first frame falls in its piece (`clip_beat_phase`); a stretch keeps that first beat and
changes the pace.

With a captioned corpus, `semantic_lm.text_condition_prob` of the examples are conditioned on the
MuLan tokens of their *caption* instead (a departure from the paper, whose MuLan was trained on
other data): text and audio embeddings of one clip do not quantise to the same tokens (the
bundled MuLan's first tokens agree for 35 % of held-out clips), and an LM that only ever saw
audio tokens follows text prompts weakly. Caption tokens are computed once per caption.

The run's config takes the conditioners' `mulan` and `tokenizer` sections (their sizes set the
LM's vocabulary and condition), and `RUN/conditioners.json` records a fingerprint of each
conditioner's weights: resuming with different ones is refused, since the LM's targets would
change under it. Every `train.sample_every` steps the valid split's perplexity is logged with
the audio, text and null conditions (`valid/ppl`, `valid/ppl_text`, `valid/ppl_null`), and over
each clip's first second, where only the condition informs the LM (`valid/ppl_first_second_*`); with a tempo token,
also with the caption and the clip's stated tempo (`valid/ppl_text_tempo`), as a prompt stating a tempo generates.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
from torch import nn

from melody.config import MelodyConfig
from melody.data.features import FeatureDataset, find_features
from melody.data.loader import ShardDataset, clip_beat_phase, clip_bpm
from melody.data.synth.captions import restate_tempo
from melody.errors import MelodyError
from melody.eval.semantic import leading_frames, lm_nll, stretched_nll, tokenize_split, tokenized_features
from melody.io import write_json_atomic
from melody.mulan import MuLan
from melody.semantic.lm import (SemanticLM, beat_grid, condition_dropout_mask, lm_loss, stretch_rates, stretch_tokens,
                               tempo_bucket)
from melody.semantic.tokenizer import SemanticTokenizer, frame_count
from melody.train.engine import Engine, PerCaption, Stage, audio_or_caption, check_frozen

BETAS = (0.9, 0.95)  # LLaMA's


class SemanticLMStage(Stage):
    name = "semantic_lm"
    ema_models = ("semantic_lm",)
    export = ("semantic_lm",)
    shardable = True

    def __init__(self, cfg: MelodyConfig, data_root: str | Path, run_dir: str | Path,
                 mulan: tuple[MuLan, MelodyConfig], tokenizer: tuple[SemanticTokenizer, MelodyConfig]) -> None:
        (self.mulan, mulan_cfg), (self.tokenizer, tokenizer_cfg) = mulan, tokenizer
        cfg.mulan, cfg.tokenizer = copy.deepcopy(mulan_cfg.mulan), copy.deepcopy(tokenizer_cfg.tokenizer)
        if not bool(self.mulan.rvq.initialized):
            raise MelodyError("the MuLan model has no fitted tokens (its run did not finish); finish `melody train mulan`")
        if not bool(self.tokenizer.quantizer.centroids.abs().sum() > 0):
            raise MelodyError("the tokenizer has no k-means codebook (its run did not finish); finish `melody train tokenizer`")
        super().__init__(cfg)
        if cfg.semantic_lm.tempo_stretch < 0:
            raise MelodyError(f"semantic_lm.tempo_stretch must be ≥ 0 (0: off), got {cfg.semantic_lm.tempo_stretch}")
        if cfg.semantic_lm.tempo_stretch and not cfg.semantic_lm.tempo_buckets:
            raise MelodyError("semantic_lm.tempo_stretch moves the tempo token with the tokens: set semantic_lm.tempo_buckets "
                              "(e.g. 24) too, or tempo_stretch=0")
        self.data_root = Path(data_root)
        check_frozen(Path(run_dir), {"mulan": self.mulan, "tokenizer": self.tokenizer})
        self.mulan.eval().requires_grad_(False)
        self.tokenizer.eval().requires_grad_(False)
        torch.manual_seed(cfg.train.seed)
        lm = SemanticLM.from_config(cfg)
        if cfg.semantic_lm.condition_embedding == "codebook":
            lm.set_mulan_codebooks(self.mulan.rvq.codebooks)
        self.models = {"semantic_lm": lm}
        self.optimizers = {"semantic_lm": torch.optim.AdamW(lm.parameters(), lr=cfg.train.lr, betas=BETAS,
                                                            weight_decay=cfg.train.weight_decay)}
        self._valid = None
        self._caption_tokens = PerCaption()
        self.features = (find_features(self.data_root, {"mulan": self.mulan, "tokenizer": self.tokenizer})
                         if cfg.train.cached_features else None)

    def dataset(self, split: str) -> ShardDataset:
        if self.features is not None:  # every split from the features: training then needs no audio and no text encoder
            return FeatureDataset(self.features, split, self.cfg.semantic_lm.window_seconds, seed=self.cfg.train.seed)
        return ShardDataset.from_corpus(self.data_root, split, crop_seconds=self.cfg.semantic_lm.window_seconds,
                                        sample_rate=self.cfg.vae.sample_rate, channels=1, seed=self.cfg.train.seed)

    @torch.no_grad()
    def condition_and_targets(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(MuLan tokens of the audio `(b, L)`, semantic tokens `(b, t)`, valid frames `(b, t)` bool)."""
        self.mulan.to(wav.device)
        self.tokenizer.to(wav.device)
        semantic = self.tokenizer.tokens(wav, lengths)
        keep = torch.arange(semantic.shape[1], device=wav.device)[None, :] < frame_count(lengths, self.tokenizer.hop)[:, None]
        return self.mulan.tokens_from_audio(wav, lengths), semantic, keep

    @torch.no_grad()
    def caption_tokens(self, captions: list[str], device: torch.device) -> torch.Tensor:
        """MuLan tokens of each caption `(b, L)`, each caption quantised once."""
        self.mulan.to(device)
        return self._caption_tokens(captions, self.mulan.tokens_from_text).to(device)

    def check_init(self, model: str, source: nn.Module) -> None:
        if isinstance(source, SemanticLM) and not source.has_codebooks(self.mulan.rvq.codebooks):
            raise MelodyError("--init: that semantic LM read MuLan tokens through another MuLan's codebooks than this "
                              "run's --mulan; start from an LM trained with this MuLan, or give its MuLan")

    def train_step(self, engine: Engine, batch: dict, generator: torch.Generator) -> dict[str, float]:
        if "tokens" in batch:  # cached features
            mulan_tokens, semantic = batch["mulan"], batch["tokens"]
            keep = torch.arange(semantic.shape[1], device=semantic.device)[None, :] < batch["token_length"][:, None]
        else:
            mulan_tokens, semantic, keep = self.condition_and_targets(batch["audio"][:, 0], batch["length"])
        lm_cfg = self.cfg.semantic_lm
        drop = condition_dropout_mask(semantic.shape[0], lm_cfg.cond_dropout, generator)
        mulan_tokens, use_text = audio_or_caption(mulan_tokens, batch, lm_cfg.text_condition_prob,
                                                  generator, self.caption_tokens)
        tempo = beats = None
        if lm_cfg.tempo_buckets > 0:
            bpm = torch.tensor([clip_bpm(meta) for meta in batch["meta"]], dtype=torch.float64)
            unsaid = torch.rand(bpm.shape[0], generator=generator, device=generator.device).cpu() < lm_cfg.tempo_dropout
            bpm = bpm.masked_fill(unsaid, math.nan)
            if lm_cfg.tempo_stretch > 0:  # only examples that state their tempo: the token must say the new pace
                stretched = torch.isfinite(bpm) & (use_text.cpu() if lm_cfg.tempo_restate else True)
                rate = stretch_rates(bpm.shape[0], lm_cfg.tempo_stretch, generator).masked_fill(~stretched, 1.0)
                semantic, keep = stretch_tokens(semantic, keep, rate)
                bpm = bpm * rate
                if lm_cfg.tempo_restate and bool(stretched.any()):
                    rows = stretched.nonzero()[:, 0].tolist()
                    restated = self.caption_tokens([restate_tempo(batch["caption"][i], float(bpm[i])) for i in rows],
                                                   semantic.device)
                    mulan_tokens = mulan_tokens.clone()
                    mulan_tokens[rows] = restated
            tempo = tempo_bucket(bpm, lm_cfg.tempo_buckets, lm_cfg.tempo_range).to(semantic.device)
            if lm_cfg.tempo_clock:  # from the crop's first beat at the clip's own tempo: a stretch keeps it
                phase = torch.tensor([clip_beat_phase(meta, float(s)) for meta, s in zip(batch["meta"], batch["start"])],
                                     dtype=torch.float64)
                beats = beat_grid(bpm, self.tokenizer.config.frame_rate, phase)
        with engine.autocast():
            out = engine.model("semantic_lm")(mulan_tokens, semantic, drop.to(semantic.device), tempo=tempo, beats=beats)
        loss = lm_loss(out.logits, semantic, keep)
        grad_norm = engine.optimize("semantic_lm", loss.loss)
        return {"semantic_lm/total": loss.loss.item(), "semantic_lm/ppl": math.exp(min(loss.loss.item(), 50.0)),
                "semantic_lm/grad_norm": grad_norm}

    def sample(self, engine: Engine, batch: dict, folder: Path) -> None:
        """Perplexity of the whole valid split, with the audio condition and with the null one."""
        if self._valid is None and self.features is not None:
            self._valid = tokenized_features(self.features, "valid", self.cfg.semantic_lm.window_seconds)
        elif self._valid is None:
            self.mulan.to(engine.device)
            self.tokenizer.to(engine.device)
            self._valid = tokenize_split(self.mulan, self.tokenizer, self.data_root, "valid",
                                         self.cfg.semantic_lm.window_seconds)
        v, lm = self._valid, engine.ema_or_model("semantic_lm").eval()
        first = leading_frames(v.keep, self.tokenizer.config.frame_rate)
        logs = {"valid/ppl": math.exp(lm_nll(lm, v.audio_mulan, v.semantic, v.keep)),
                "valid/ppl_text": math.exp(lm_nll(lm, v.text_mulan, v.semantic, v.keep)),
                "valid/ppl_null": math.exp(lm_nll(lm, None, v.semantic, v.keep)),
                "valid/ppl_first_second_text": math.exp(lm_nll(lm, v.text_mulan, v.semantic, first)),
                "valid/ppl_first_second_null": math.exp(lm_nll(lm, None, v.semantic, first))}
        if lm.tempo_embedding is not None:
            tempo = tempo_bucket(v.bpm, lm.config.tempo_buckets, lm.config.tempo_range)
            beats = beat_grid(v.bpm, v.frame_rate, v.phase) if lm.config.tempo_clock else None
            logs["valid/ppl_first_second_text_tempo"] = math.exp(lm_nll(lm, v.text_mulan, v.semantic, first, tempo=tempo,
                                                                        beats=beats))
            logs["valid/ppl_text_tempo"] = math.exp(lm_nll(lm, v.text_mulan, v.semantic, v.keep, tempo=tempo, beats=beats))
            restate = (lambda c: self.caption_tokens(c, v.semantic.device)) if lm.config.tempo_restate else None
            logs |= {f"valid/ppl_stretched_{name}": math.exp(nll)
                     for name, nll in stretched_nll(lm, v, caption_tokens=restate).items()}
        engine.log(logs, engine.step)
        write_json_atomic(folder / "perplexity.json", logs)
