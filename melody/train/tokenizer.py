"""Training the semantic tokenizer (MeLoDy §3.1; HuBERT's recipe) on the shared engine: `melody train tokenizer`.

HuBERT (Hsu et al. 2021) learns by masked prediction of cluster targets and refines its targets
by iterating: iteration 1 predicts k-means classes of acoustic frames, iteration 2 the k-means
classes of iteration 1's own features. Here:

- **Iteration 1** (`melody train tokenizer --data D --out R1`): the targets are `tokenizer.targets`
  k-means classes of the encoder's normalised log-mel frames, fitted once on up to
  `tokenizer.kmeans_frames` frames sampled from the training clips and kept in
  `RUN/targets.safetensors` (so a resumed run predicts the same targets).
- **Iteration 2** (`--teacher R1`): the targets are the semantic tokens of the iteration-1
  tokenizer (its `feature_layer` features → its k-means codebook); the head predicts its
  `codebook_size` classes.

One step: span masks (`span_mask`, seeded by the step's generator) → the encoder on the masked
frames → cross-entropy on the masked valid frames (`masked_prediction_loss`). Every
`train.sample_every` steps the whole valid split is scored the same way with a fixed mask
(`valid/masked_loss`, `valid/masked_acc`, and the accuracy of always guessing the most common
class, `valid/majority_acc`, as the floor).

After the last step (`finalize`) the token codebook is fitted: `tokenizer.codebook_size` k-means
centroids on up to `tokenizer.kmeans_frames` `frame_features` of training frames; the
exported `tokenizer.safetensors` holds the encoder and the centroids. Optimiser: AdamW with
β = (0.9, 0.98) (HuBERT's).

With `tokenizer.pretrained` (a user's local HuBERT or Wav2Vec2-Conformer folder, `HFFeatureExtractor`)
there is nothing to train: the run takes no step and only fits the codebook on that model's
`feature_layer` features; the exported tokenizer holds the codebook, its config names the folder and
records the model's fingerprint, so loading it against another model is refused.

With `--encoder TOKENIZER` (`encoder=`) the run keeps that trained tokenizer's built-in encoder as it is, takes no
step and only fits a new codebook with this run's settings (`tokenizer.onset_weight`, `codebook_size`,
`feature_layer`): new tokens from the same features, in a minute instead of a training run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from melody.checkpoint import read_tensors, write_tensors
from melody.config import MelodyConfig
from melody.data.loader import ShardDataset, make_loader
from melody.errors import MelodyError
from melody.io import write_json_atomic
from melody.modules.kmeans import KMeansQuantizer
from melody.semantic.tokenizer import MASK_SPAN, SemanticTokenizer, SSLEncoder, frame_count, masked_prediction_loss, mel_targets, span_mask
from melody.train.engine import Engine, Stage

BETAS = (0.9, 0.98)
FIT_BATCH = 16


@torch.no_grad()
def sample_frames(frames_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], dataset: ShardDataset, hop: int,
                  max_frames: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Up to `max_frames` valid frames `(n, d)` of `frames_of(wav, lengths)` `(b, t, d)` over a whole split,
    a uniform random subset (seeded) when there are more."""
    bag = []
    for batch in make_loader(dataset, FIT_BATCH, 0, drop_last=False):
        wav, lengths = batch["audio"][:, 0].to(device), batch["length"].to(device)
        frames = frames_of(wav, lengths)
        keep = torch.arange(frames.shape[1], device=device)[None, :] < frame_count(lengths, hop)[:, None]
        bag.append(frames[keep].float().cpu())
    if not bag:
        raise MelodyError("the training split has no clips to fit k-means on; build a bigger corpus")
    frames = torch.cat(bag)
    if frames.shape[0] > max_frames:
        frames = frames[torch.randperm(frames.shape[0], generator=torch.Generator().manual_seed(seed))[:max_frames]]
    return frames


class TokenizerStage(Stage):
    name = "tokenizer"
    ema_models = ("tokenizer",)
    export = ("tokenizer",)

    def __init__(self, cfg: MelodyConfig, data_root: str | Path, run_dir: str | Path,
                 teacher: SemanticTokenizer | None = None, encoder: SemanticTokenizer | None = None) -> None:
        if teacher is not None:
            cfg.tokenizer.targets = teacher.quantizer.codebook_size
        super().__init__(cfg)
        self.data_root, self.run_dir, self.teacher = Path(data_root), Path(run_dir), teacher
        torch.manual_seed(cfg.train.seed)
        tokenizer = SemanticTokenizer.from_config(cfg.tokenizer, cfg.vae.sample_rate)
        self.models = {"tokenizer": tokenizer}
        if cfg.tokenizer.pretrained:  # a user's HuBERT / Wav2Vec2-Conformer: nothing to train, only the codebook to fit
            if teacher is not None:
                raise MelodyError("--teacher trains the built-in encoder; a pretrained tokenizer.pretrained model is not trained")
            cfg.train.steps = 0
            cfg.tokenizer.pretrained_fingerprint = tokenizer.encoder.fingerprint()
            self.optimizers = {}
        elif encoder is not None:  # a trained encoder kept as it is: only the codebook is fitted anew
            if teacher is not None:
                raise MelodyError("--encoder keeps a trained encoder as it is; --teacher trains one: give one of them")
            if not isinstance(encoder.encoder, SSLEncoder):
                raise MelodyError("--encoder takes a tokenizer with the built-in encoder; for a transformers model "
                                  "set tokenizer.pretrained instead")
            try:
                tokenizer.encoder.load_state_dict(encoder.encoder.state_dict())
            except RuntimeError:
                raise MelodyError("the --encoder tokenizer's encoder has other sizes than this run's; use the preset "
                                  "and tokenizer.* settings it was trained with") from None
            cfg.train.steps = 0
            self.optimizers = {}
        else:
            self.optimizers = {"tokenizer": torch.optim.AdamW(tokenizer.parameters(), lr=cfg.train.lr, betas=BETAS,
                                                              weight_decay=cfg.train.weight_decay)}
        self._mel_codebook: KMeansQuantizer | None = None

    def dataset(self, split: str) -> ShardDataset:
        return ShardDataset.from_corpus(self.data_root, split, crop_seconds=self.cfg.tokenizer.crop_seconds,
                                        sample_rate=self.cfg.vae.sample_rate, channels=1, seed=self.cfg.train.seed)

    def _whole_clips(self, split: str) -> ShardDataset:
        return ShardDataset.whole_clips(self.data_root, split, self.cfg.vae.sample_rate)

    def targets(self, engine: Engine, wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The masked-prediction targets `(b, frames)` long: the teacher's tokens, or log-mel k-means classes."""
        if self.teacher is not None:
            return self.teacher.to(wav.device).tokens(wav, lengths)
        encoder = engine.unwrapped("tokenizer").encoder
        if self._mel_codebook is None:
            self._mel_codebook = self._load_or_fit_mel_codebook(encoder, wav.device).to(wav.device)
        return self._mel_codebook(encoder.log_mel(wav, lengths)[0])

    def _load_or_fit_mel_codebook(self, encoder, device) -> KMeansQuantizer:
        path = self.run_dir / "targets.safetensors"
        t = self.cfg.tokenizer
        if path.is_file():
            centroids = read_tensors(path, "tokenizer targets")[0]["centroids"]
            quantizer = KMeansQuantizer(*centroids.shape)
            quantizer.centroids.copy_(centroids)
            return quantizer
        frames = sample_frames(lambda w, n: encoder.log_mel(w, n)[0], self._whole_clips("train"), encoder.hop,
                               t.kmeans_frames, self.cfg.train.seed, device)
        quantizer = mel_targets(frames, t.targets, self.cfg.train.seed)
        write_tensors(path, {"centroids": quantizer.centroids}, {"stage": self.name})
        return quantizer

    def masked_step(self, model, engine: Engine, wav: torch.Tensor, lengths: torch.Tensor,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, logits of the masked frames `(m, K)`, their targets `(m,)`) for one batch."""
        targets = self.targets(engine, wav, lengths)
        mask = span_mask(wav.shape[0], targets.shape[1], self.cfg.tokenizer.mask_prob, MASK_SPAN, generator)
        with engine.autocast():
            out = model(wav, lengths, mask=mask)
        return masked_prediction_loss(out.logits, targets, out.mask), out.logits[out.mask], targets[out.mask]

    def train_step(self, engine: Engine, batch: dict, generator: torch.Generator) -> dict[str, float]:
        loss, logits, targets = self.masked_step(engine.model("tokenizer"), engine, batch["audio"][:, 0],
                                                 batch["length"], generator)
        grad_norm = engine.optimize("tokenizer", loss)
        accuracy = (logits.argmax(-1) == targets).float().mean().item() if targets.numel() else float("nan")
        return {"tokenizer/total": loss.item(), "tokenizer/masked_acc": accuracy, "tokenizer/grad_norm": grad_norm}

    def sample(self, engine: Engine, batch: dict, folder: Path) -> None:
        """Masked prediction on the whole valid split with a fixed mask, logged beside the training curves."""
        if self.cfg.tokenizer.pretrained:
            return  # a pretrained model is not trained here: there is no masked prediction to follow
        model = engine.ema_or_model("tokenizer").eval()
        generator = torch.Generator(device=engine.device).manual_seed(self.cfg.train.seed)
        losses, hits, counts = [], 0, torch.zeros(self.cfg.tokenizer.targets, dtype=torch.long)
        for valid in make_loader(self._whole_clips("valid"), FIT_BATCH, 0, drop_last=False):
            loss, logits, targets = self.masked_step(model, engine, valid["audio"][:, 0].to(engine.device),
                                                     valid["length"].to(engine.device), generator)
            losses.append((loss.item(), targets.numel()))
            hits += int((logits.argmax(-1) == targets).sum())
            counts += torch.bincount(targets.cpu(), minlength=counts.numel())
        total = max(1, int(counts.sum()))
        logs = {"valid/masked_loss": sum(l * n for l, n in losses) / total, "valid/masked_acc": hits / total,
                "valid/majority_acc": int(counts.max()) / total}
        engine.log(logs, engine.step)
        write_json_atomic(folder / "masked_prediction.json", logs)

    def finalize(self, engine: Engine) -> None:
        """Fit the token codebook on `frame_features` of the training clips."""
        tokenizer = engine.ema_or_model("tokenizer").eval()
        t = self.cfg.tokenizer
        frames = sample_frames(tokenizer.frame_features, self._whole_clips("train"), tokenizer.hop, t.kmeans_frames,
                               self.cfg.train.seed, engine.device)
        tokenizer.fit_codebook(frames.to(engine.device), self.cfg.train.seed)
