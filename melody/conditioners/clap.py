"""LAION-CLAP (Wu et al. 2023) as a frozen MuLan stand-in, for users who own a CLAP checkpoint.

MuLan (MeLoDy §3.1) is a joint text/music embedding trained contrastively; CLAP is the openly
released model of the same kind (HTSAT audio encoder + RoBERTa text encoder, 512-d). Nothing here
downloads: `load_clap(folder)` reads a `transformers` `ClapModel` folder (config.json + weights +
tokenizer files, and preprocessor_config.json if present) from disk.

Choices:
- Audio goes in at melody's 24 kHz and is resampled to the extractor's rate (48 kHz for
  laion/clap-htsat-*) with soxr (`melody.audio.resample`); each clip is cut to its `lengths` first.
- Without a preprocessor_config.json the feature extractor is built with laion/clap-htsat-unfused's
  settings (64 mel bins, 48 kHz, hop 480, 10 s, 50–14 000 Hz, "repeatpad"). The truncation mode
  follows the model: "fusion" for a fused model, else "rand_trunc" (clips ≤ 10 s are then
  deterministic; longer ones get a random 10 s crop, CLAP's own behaviour).
- Both embeddings come back L2-normalised (CLAP's projection output), as unit vectors `(b, 512)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from melody.audio import resample
from melody.errors import MelodyError, first_line


def _features(output: Any) -> torch.Tensor:
    """transformers ≥ 5 returns a model output whose `pooler_output` is the embedding; 4.x returns the tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ClapConditioner(nn.Module):
    """A frozen `transformers.ClapModel` + its tokenizer and feature extractor; `embed_text`, `embed_audio` → `(b, d)`."""

    def __init__(self, model: nn.Module, tokenizer: Any, feature_extractor: Any, sample_rate: int = 24_000) -> None:
        super().__init__()
        self.model = model.requires_grad_(False).eval()
        self.tokenizer, self.feature_extractor, self.sample_rate = tokenizer, feature_extractor, sample_rate
        self.fused = bool(getattr(model.config.audio_config, "enable_fusion", False))
        self.embed_dim = int(model.config.projection_dim)

    def train(self, mode: bool = True) -> ClapConditioner:
        return super().train(False)  # frozen: always in eval mode

    @torch.no_grad()
    def embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Captions → `(b, d)` unit vectors."""
        device = next(self.model.parameters()).device
        batch = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
        out = self.model.get_text_features(input_ids=batch["input_ids"].to(device),
                                           attention_mask=batch["attention_mask"].to(device))
        return F.normalize(_features(out).float(), dim=-1)

    @torch.no_grad()
    def embed_audio(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Mono clips `(b, samples)` at `sample_rate` (valid `lengths` `(b,)`) → `(b, d)` unit vectors."""
        if wav.dim() != 2:
            raise ValueError(f"embed_audio wants mono waveforms (b, samples), got shape {tuple(wav.shape)}")
        device = next(self.model.parameters()).device
        lengths = [wav.shape[1]] * wav.shape[0] if lengths is None else [int(n) for n in lengths]
        rate = int(self.feature_extractor.sampling_rate)
        clips = [resample(w[None, :n].detach().float().cpu().numpy(), self.sample_rate, rate)[0] for w, n in zip(wav, lengths)]
        inputs = self.feature_extractor(clips, sampling_rate=rate, return_tensors="pt",
                                        truncation="fusion" if self.fused else "rand_trunc")
        out = self.model.get_audio_features(input_features=inputs["input_features"].to(device),
                                            is_longer=inputs["is_longer"].to(device))
        return F.normalize(_features(out).float(), dim=-1)


def load_clap(folder: str | Path, sample_rate: int = 24_000) -> ClapConditioner:
    """A `ClapConditioner` from a local `transformers` CLAP folder; a one-line `MelodyError` if it cannot be read."""
    from transformers import AutoTokenizer, ClapFeatureExtractor, ClapModel

    from melody.mulan import _quiet_transformers

    folder = Path(folder)
    if not folder.is_dir():
        raise MelodyError(f"CLAP folder {folder} does not exist; give a local folder saved with ClapModel.save_pretrained")
    try:
        with _quiet_transformers():
            model = ClapModel.from_pretrained(str(folder), local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            if (folder / "preprocessor_config.json").is_file():
                extractor = ClapFeatureExtractor.from_pretrained(str(folder), local_files_only=True)
            else:
                extractor = ClapFeatureExtractor(feature_size=model.config.audio_config.num_mel_bins, sampling_rate=48_000,
                                                 hop_length=480, max_length_s=10, fft_window_size=1024,
                                                 frequency_min=50, frequency_max=14_000, padding="repeatpad",
                                                 truncation="rand_trunc")
    except Exception as err:
        first = first_line(err)
        raise MelodyError(f"cannot load CLAP from {folder}: {first}; "
                          "save it with ClapModel.save_pretrained and its tokenizer") from err
    return ClapConditioner(model.eval(), tokenizer, extractor, sample_rate)
