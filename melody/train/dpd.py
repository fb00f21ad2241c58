"""Training the dual-path diffusion model (MeLoDy §3.2) on the shared engine: `melody train dpd`.

Both conditioners of the DPD are frozen and run on the fly on each batch of `dpd.crop_seconds`
crops: the trained VAE-GAN's encoder gives the target latents (a posterior sample mapped to
[−1, 1], `VAE.encode_latents`, `(b, L, d)`), the trained semantic tokenizer the 25 Hz tokens of the
same crop (its frames and the latents' frames start together, so token ⌊j T / L⌋ covers frame j).
`RUN/conditioners.json` records both models' fingerprints: resuming with others is refused.
With `train.cached_features`, the train split comes from `melody data encode`'s features of these two
models instead (the VAE posterior and the tokens, computed once; a fresh posterior sample per step as
on audio); the held-out samples still start from audio.

One step (`melody.diffusion`): per-frame angles from `multichunk_angles` (`dpd.chunks` chunks with
independent δ_m ~ U[0, π/2], and with probability `dpd.clean_prob` a clean left or right stretch,
the continuation situation), noise ε, z_δ = cos δ z + sin δ ε, the condition dropped for
`dpd.cond_dropout` of the examples; loss = `multichunk_loss` (velocity MSE over the noisy frames),
averaged over the batch. Every draw comes from the step's generator.

With `dpd.mulan_condition` (outside the paper) the DPD also hears MuLan tokens: those of the crop's clip's audio
(frozen MuLan, `--mulan`; with cached features the whole clip's), or for `dpd.text_condition_prob` of the examples
those of its caption, as the semantic LM's text-conditioned examples are (what generation gives the DPD is the
caption's). The run copies MuLan's codebooks into the DPD once, before step 0, and records MuLan's fingerprint with
the other conditioners'.

Every `train.sample_every` steps the valid clips' latents are generated from their own semantic
tokens (the paper's sampler, `dpd.steps` steps, guidance `dpd.guidance`) and decoded by the VAE;
the engine logs their mel distance to the originals (`valid/mel_distance`) beside that of the
VAE's own reconstruction (`valid/mel_distance_vae`, the floor), and writes the audio and a
spectrogram picture. Optimiser: AdamW, β = (0.9, 0.99).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from melody.audio import save_audio
from melody.config import MelodyConfig
from melody.data.features import FeatureDataset, find_features
from melody.data.loader import ShardDataset
from melody.data.plots import spectrogram_grid
from melody.diffusion import (SCHEDULES, angles_from_steps, guided_in_one_call, multichunk_angles, multichunk_loss, noisy, sample,
                              velocity_target)
from melody.dpd import DPD, join_condition
from melody.errors import MelodyError
from melody.eval.metrics import mel_distance
from melody.mulan import MuLan
from melody.semantic.lm import condition_dropout_mask
from melody.semantic.tokenizer import SemanticTokenizer
from melody.train.engine import Engine, PerCaption, Stage, audio_or_caption, check_frozen
from melody.vae import VAE, Posterior

BETAS = (0.9, 0.99)
SAMPLE_SECONDS = 4.0


class DPDStage(Stage):
    name = "dpd"
    ema_models = ("dpd",)
    export = ("dpd",)
    shardable = True

    def __init__(self, cfg: MelodyConfig, data_root: str | Path, run_dir: str | Path,
                 vae: tuple[VAE, MelodyConfig], tokenizer: tuple[SemanticTokenizer, MelodyConfig],
                 mulan: tuple[MuLan, MelodyConfig] | None = None) -> None:
        (self.vae, vae_cfg), (self.tokenizer, tokenizer_cfg) = vae, tokenizer
        cfg.vae, cfg.tokenizer = copy.deepcopy(vae_cfg.vae), copy.deepcopy(tokenizer_cfg.tokenizer)
        self.mulan = None
        if cfg.dpd.mulan_condition:
            if mulan is None:
                raise MelodyError("dpd.mulan_condition: the DPD hears MuLan tokens, so training needs a MuLan; give --mulan")
            if not 0.0 <= cfg.dpd.text_condition_prob <= 1.0:
                raise MelodyError(f"dpd.text_condition_prob must be in [0, 1], got {cfg.dpd.text_condition_prob}")
            self.mulan, mulan_cfg = mulan
            cfg.mulan = copy.deepcopy(mulan_cfg.mulan)
            if not bool(self.mulan.rvq.initialized):
                raise MelodyError("the MuLan model has no fitted tokens (its run did not finish); finish `melody train mulan`")
        super().__init__(cfg)
        self.data_root = Path(data_root)
        frozen = {"vae": self.vae, "tokenizer": self.tokenizer} | ({"mulan": self.mulan} if self.mulan is not None else {})
        check_frozen(Path(run_dir), frozen)
        for model in frozen.values():
            model.eval().requires_grad_(False)
        torch.manual_seed(cfg.train.seed)
        dpd = DPD.from_config(cfg)
        if self.mulan is not None:
            dpd.set_mulan_codebooks(self.mulan.rvq.codebooks)
        self.models = {"dpd": dpd}
        self.optimizers = {"dpd": torch.optim.AdamW(dpd.parameters(), lr=cfg.train.lr, betas=BETAS,
                                                    weight_decay=cfg.train.weight_decay)}
        self._caption_tokens = PerCaption()
        self.features = find_features(self.data_root, frozen) if cfg.train.cached_features else None

    def new_in_init(self, model: str, source: torch.nn.Module) -> tuple[str, ...]:
        """A DPD trained without the MuLan condition starts one with it: the condition's projection (zero) and
        codebooks are this run's own."""
        return ("mulan_codebooks", "mulan_projection.") if self.mulan is not None and not source.mulan_levels else ()

    def check_init(self, model: str, source: torch.nn.Module) -> None:
        if self.mulan is not None and source.mulan_levels and not source.has_codebooks(self.mulan.rvq.codebooks):
            raise MelodyError("--init: that DPD read MuLan tokens through another MuLan's codebooks than this run's "
                              "--mulan; start from a DPD trained with this MuLan, or give its MuLan")

    def dataset(self, split: str) -> ShardDataset:
        if split == "train" and self.features is not None:
            return FeatureDataset(self.features, split, self.cfg.dpd.crop_seconds, seed=self.cfg.train.seed)
        crop = self.cfg.dpd.crop_seconds if split == "train" else max(self.cfg.dpd.crop_seconds, SAMPLE_SECONDS)
        return ShardDataset.from_corpus(self.data_root, split, crop_seconds=crop, sample_rate=self.cfg.vae.sample_rate,
                                        channels=self.cfg.vae.channels, seed=self.cfg.train.seed)

    @torch.no_grad()
    def latents_and_tokens(self, audio: torch.Tensor, lengths: torch.Tensor,
                           generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Target latents `(b, L, d)` in [−1, 1] and semantic tokens `(b, T)` of audio `(b, c, n)`."""
        self.vae.to(audio.device)
        self.tokenizer.to(audio.device)
        return self.vae.encode_latents(audio, generator), self.tokenizer.tokens(audio.mean(1), lengths)

    @torch.no_grad()
    def audio_mulan_tokens(self, audio: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """MuLan tokens `(b, levels)` of audio `(b, c, n)`."""
        self.mulan.to(audio.device)
        return self.mulan.tokens_from_audio(audio.mean(1), lengths)

    @torch.no_grad()
    def caption_tokens(self, captions: list[str], device: torch.device) -> torch.Tensor:
        """MuLan tokens of each caption `(b, levels)`, each caption quantised once."""
        self.mulan.to(device)
        return self._caption_tokens(captions, self.mulan.tokens_from_text).to(device)

    def mulan_condition(self, batch: dict, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        """The examples' MuLan tokens `(b, levels)`: their audio's, or their caption's for `dpd.text_condition_prob`
        of them (drawn from the step's generator; `audio_or_caption`, as the semantic LM's stage draws them)."""
        audio = batch["mulan"] if "mulan" in batch else self.audio_mulan_tokens(batch["audio"], batch["length"])
        return audio_or_caption(audio.to(device), batch, self.cfg.dpd.text_condition_prob, generator,
                                self.caption_tokens)[0]

    def train_step(self, engine: Engine, batch: dict, generator: torch.Generator) -> dict[str, float]:
        d = self.cfg.dpd
        if "mean" in batch:  # cached features: the posterior's parameters, sampled here as `VAE.encode_latents` does
            posterior = Posterior(batch["mean"].transpose(1, 2), batch["logvar"].transpose(1, 2))
            z, tokens = self.vae.posterior_latents(posterior, generator), batch["tokens"]
        else:
            z, tokens = self.latents_and_tokens(batch["audio"], batch["length"], generator)
        b, length, _ = z.shape
        delta = multichunk_angles(b, length, d.chunks, generator, d.clean_prob).to(z.device)
        noise = torch.randn(z.shape, generator=generator, device=generator.device).to(z.device)
        drop = condition_dropout_mask(b, d.cond_dropout, generator).to(z.device)
        if self.mulan is not None:  # drawn after the paper's draws, which stay as they were
            # our own MuLan's tokens: `join_condition` without `condition_of`'s range check, which waits on the host
            tokens = join_condition(tokens.to(z.device), self.mulan_condition(batch, generator, z.device))
        with engine.autocast():
            v = engine.model("dpd")(noisy(z, noise, delta), delta, tokens, drop)
        loss = multichunk_loss(v, velocity_target(z, noise, delta), delta).mean()
        grad_norm = engine.optimize("dpd", loss)
        return {"dpd/total": loss.item(), "dpd/grad_norm": grad_norm}

    def sample(self, engine: Engine, batch: dict, folder: Path) -> None:
        """Latents from the valid clips' own tokens → audio, beside the originals and the VAE's reconstruction."""
        d, rate = self.cfg.dpd, self.cfg.vae.sample_rate
        dpd = engine.ema_or_model("dpd").eval()
        real, lengths = batch["audio"], batch["length"]
        generator = torch.Generator(device=engine.device).manual_seed(self.cfg.train.seed)
        z, tokens = self.latents_and_tokens(real, lengths, None)
        if self.mulan is not None:  # the clips' own audio's MuLan tokens
            tokens = dpd.condition_of(tokens, self.audio_mulan_tokens(real, lengths))
        start = torch.randn(z.shape, generator=generator, device=engine.device)
        made = sample(guided_in_one_call(dpd, d.guidance), start, angles_from_steps(SCHEDULES["melody"](d.steps)), tokens)
        fake = self.vae.decode_latents(made, real.shape[-1])
        recon = self.vae.decode_latents(z, real.shape[-1])
        rows = {"real": [], "VAE reconstruction": [], "DPD from semantic tokens": []}
        for i in range(real.shape[0]):
            n = int(lengths[i])
            clips = [x[i, :, :n].float().cpu().numpy() for x in (real, recon, fake)]
            for (name, row), clip in zip(rows.items(), clips, strict=True):
                row.append((batch["key"][i], clip.mean(0)))
            save_audio(folder / f"{i}-real.wav", clips[0], rate)
            save_audio(folder / f"{i}-generated.wav", clips[2], rate)
        spectrogram_grid(rows, rate, folder / "spectrograms.png")
        engine.log({"valid/mel_distance": float(mel_distance(fake, real, rate).mean()),
                    "valid/mel_distance_vae": float(mel_distance(recon, real, rate).mean())}, engine.step)
