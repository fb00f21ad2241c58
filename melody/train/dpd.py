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
from melody.dpd import DPD
from melody.eval.metrics import mel_distance
from melody.semantic.lm import condition_dropout_mask
from melody.semantic.tokenizer import SemanticTokenizer
from melody.train.engine import Engine, Stage, check_frozen
from melody.vae import VAE, Posterior

BETAS = (0.9, 0.99)
SAMPLE_SECONDS = 4.0


class DPDStage(Stage):
    name = "dpd"
    ema_models = ("dpd",)
    export = ("dpd",)
    shardable = True

    def __init__(self, cfg: MelodyConfig, data_root: str | Path, run_dir: str | Path,
                 vae: tuple[VAE, MelodyConfig], tokenizer: tuple[SemanticTokenizer, MelodyConfig]) -> None:
        (self.vae, vae_cfg), (self.tokenizer, tokenizer_cfg) = vae, tokenizer
        cfg.vae, cfg.tokenizer = copy.deepcopy(vae_cfg.vae), copy.deepcopy(tokenizer_cfg.tokenizer)
        super().__init__(cfg)
        self.data_root = Path(data_root)
        check_frozen(Path(run_dir), {"vae": self.vae, "tokenizer": self.tokenizer})
        self.vae.eval().requires_grad_(False)
        self.tokenizer.eval().requires_grad_(False)
        torch.manual_seed(cfg.train.seed)
        dpd = DPD.from_config(cfg)
        self.models = {"dpd": dpd}
        self.optimizers = {"dpd": torch.optim.AdamW(dpd.parameters(), lr=cfg.train.lr, betas=BETAS,
                                                    weight_decay=cfg.train.weight_decay)}
        self.features = (find_features(self.data_root, {"vae": self.vae, "tokenizer": self.tokenizer})
                         if cfg.train.cached_features else None)

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
