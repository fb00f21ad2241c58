"""Training the audio VAE-GAN (MeLoDy §3.3) on the shared engine: `melody train vae`.

One step, in DAC's order: (1) once the discriminators are on (`vae.disc_start_step`), their
loss on real vs detached reconstructions and their optimiser step; (2) the generator's losses
under the config's keys — `mel` (multi-scale mel L1), `kl`, and with the discriminators on
`adv` and `feat` — summed as Σ weight × term, and its step. Before the discriminators start, the
VAE learns from reconstruction and KL alone (a warm-up that keeps the early GAN from chasing noise);
the discriminators' learning-rate schedule starts when they do (its own warm-up from that step).
Optimisers: AdamW with β = (0.8, 0.99), HiFi-GAN's and DAC's choice for GAN vocoders.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from melody.audio import save_audio
from melody.config import MelodyConfig
from melody.data.loader import ShardDataset, make_loader
from melody.data.plots import spectrogram_grid
from melody.discriminators import Discriminators
from melody.losses import discriminator_loss, feature_matching_loss, generator_adversarial_loss, mel_loss_per_example
from melody.train.engine import Engine, Stage
from melody.vae import VAE, calibrate_clamp

BETAS = (0.8, 0.99)
SAMPLE_SECONDS = 4.0
CALIBRATION_CLIPS, CALIBRATION_SECONDS = 64, 4.0


class VAEStage(Stage):
    name = "vae"
    ema_models = ("vae",)
    export = ("vae",)

    def __init__(self, cfg: MelodyConfig, data_root: str | Path) -> None:
        super().__init__(cfg)
        self.data_root = Path(data_root)
        torch.manual_seed(cfg.train.seed)
        self.models = {"vae": VAE(cfg.vae), "discriminators": Discriminators(cfg.vae)}
        tc = cfg.train
        self.optimizers = {
            name: torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=BETAS, weight_decay=tc.weight_decay)
            for name, model in (("vae", self.models["vae"]), ("discriminators", self.models["discriminators"]))
        }

    def dataset(self, split: str) -> ShardDataset:
        # Short crops to train on; held-out samples long enough to hear the music.
        crop = self.cfg.vae.crop_seconds if split == "train" else max(self.cfg.vae.crop_seconds, SAMPLE_SECONDS)
        return ShardDataset.from_corpus(self.data_root, split, crop_seconds=crop,
                                        sample_rate=self.cfg.vae.sample_rate, channels=self.cfg.vae.channels,
                                        seed=self.cfg.train.seed)

    def train_step(self, engine: Engine, batch: dict, generator: torch.Generator) -> dict[str, float]:
        v = self.cfg.vae
        real = batch["audio"]
        vae, disc = engine.model("vae"), engine.model("discriminators")
        adversarial = engine.step >= v.disc_start_step
        with engine.autocast():
            out = vae(real, generator=generator)
        logs: dict[str, float] = {}
        if adversarial:
            with engine.autocast():
                d_loss = discriminator_loss(disc(real), disc(out.audio.detach()), v.adv_loss)
            logs["disc/grad_norm"] = engine.optimize("discriminators", d_loss)
            logs["disc/loss"] = d_loss.item()
        terms = {
            "mel": mel_loss_per_example(out.audio, real, v.sample_rate, v.mel_windows, v.mel_bins).mean(),
            "kl": out.posterior.kl().mean(),
        }
        if adversarial:
            with engine.autocast():
                d_fake = disc(out.audio)
                with torch.no_grad():  # feature matching's targets: no gradient needed
                    d_real = disc(real)
            terms["adv"] = generator_adversarial_loss(d_fake, v.adv_loss)
            terms["feat"] = feature_matching_loss(d_real, d_fake)
        weights = {"mel": v.mel_weight, "kl": v.kl_weight, "adv": v.adv_weight, "feat": v.feat_weight}
        total = sum(weights[k] * t for k, t in terms.items())
        logs["vae/grad_norm"] = engine.optimize("vae", total)
        logs |= {f"{k}/loss": t.item() for k, t in terms.items()}
        logs["vae/total"] = total.item()
        return logs

    def finalize(self, engine: Engine) -> None:
        """Set `vae.latent_clamp` so that `vae.latent_cut` of the training latents are cut by the [−1, 1] map."""
        vae = engine.ema_or_model("vae").eval()
        dataset = ShardDataset.from_corpus(self.data_root, "train", crop_seconds=CALIBRATION_SECONDS,
                                           sample_rate=self.cfg.vae.sample_rate, channels=self.cfg.vae.channels,
                                           seed=self.cfg.train.seed)
        generator = torch.Generator(device=engine.device).manual_seed(self.cfg.train.seed)
        latents = []
        for batch in make_loader(dataset, 8, 0, drop_last=False):
            latents.append(vae.encode(batch["audio"].to(engine.device)).sample(generator))
            if sum(z.shape[0] for z in latents) >= CALIBRATION_CLIPS:
                break
        self.cfg.vae.latent_clamp = round(calibrate_clamp(torch.cat(latents), self.cfg.vae.latent_cut), 4)

    def sample(self, engine: Engine, batch: dict, folder: Path) -> None:
        vae = engine.ema_or_model("vae").eval()
        real = batch["audio"]
        fake = vae(real, sample=False).audio
        rate = self.cfg.vae.sample_rate
        rows = {"real": [], "reconstructed": []}
        writer = engine.tensorboard()
        for i in range(real.shape[0]):
            n = int(batch["length"][i])  # a short clip is zero-padded: leave the padding out
            r, f = real[i, :, :n].float().cpu().numpy(), fake[i, :, :n].float().cpu().numpy()
            save_audio(folder / f"{i}-real.wav", r, rate)
            save_audio(folder / f"{i}-reconstructed.wav", f, rate)
            caption = batch["key"][i]
            rows["real"].append((caption, r.mean(0)))
            rows["reconstructed"].append((caption, f.mean(0)))
            if writer is not None:
                writer.add_audio(f"sample/{i}/reconstructed", torch.from_numpy(f.mean(0)), engine.step, sample_rate=rate)
                if engine.step <= self.cfg.train.sample_every:
                    writer.add_audio(f"sample/{i}/real", torch.from_numpy(r.mean(0)), engine.step, sample_rate=rate)
        png = spectrogram_grid(rows, rate, folder / "spectrograms.png")
        if writer is not None:
            import matplotlib.image as mpimg

            image = np.asarray(mpimg.imread(png))[..., :3]
            writer.add_image("sample/spectrograms", image, engine.step, dataformats="HWC")
