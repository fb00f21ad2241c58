"""Training MuLan (MeLoDy §3.1) on the shared engine: `melody train mulan`.

One step: b (clip, caption) pairs of whole `mulan.crop_seconds` clips → the audio tower on the
waveform, the text tower on the caption → symmetric InfoNCE with CLIP's learnable temperature
(`melody.mulan`). Pairs with identical captions are not negatives of each other (their logits are
left out: `same_caption`), since a corpus may repeat a caption. A clip ingested without a caption takes no
part in the loss (`has_caption`), nor in the valid retrieval or the text half of the tokens' fit below. The
text encoder is frozen, so its sentence embedding of a caption never changes: the stage computes it once per
caption and keeps it (`_sentences`), and each step runs only the trained projection on it. Under DDP every rank
gathers the global batch's embeddings (differentiably) and captions, so the negatives and the loss
are those of one process holding the whole batch. With `train.grad_accum` > 1 the negatives are the
micro-batch's (as in CLIP without gradient caching): prefer more processes to more accumulation.

With `mulan.pretrained` (a user's local LAION-CLAP folder, `ClapMuLan`) there is nothing to train: the run
takes no step and only fits the tokens' RVQ on CLAP's embeddings of the training clips and captions; the
export holds the RVQ, its config names the folder and records CLAP's fingerprint.

Every `train.sample_every` steps the whole valid split is embedded and its retrieval figures are
logged (`valid/t2a_R@10`, …), so the curves show the joint space forming, not only the loss.

After the last step (`finalize`) the residual VQ that makes the MuLan tokens is fitted by
k-means on the embeddings of the training clips *and* of their captions, so its codebooks cover
both towers' regions of the space: the semantic LM trains on audio tokens and is prompted with
text tokens. Optimiser: AdamW with β = (0.9, 0.98), CLIP's.
"""

from __future__ import annotations

from pathlib import Path

import torch

from melody.config import MelodyConfig
from melody.data.loader import ShardDataset
from melody.eval.mulan import embed_split
from melody.io import write_json_atomic
from melody.mulan import MuLan, contrastive_loss, has_caption, retrieval_metrics, same_caption
from melody.train.engine import Engine, PerCaption, Stage

BETAS = (0.9, 0.98)


class MuLanStage(Stage):
    name = "mulan"
    ema_models = ("mulan",)
    export = ("mulan",)

    def __init__(self, cfg: MelodyConfig, data_root: str | Path) -> None:
        super().__init__(cfg)
        self.data_root = Path(data_root)
        torch.manual_seed(cfg.train.seed)
        mulan = MuLan.from_config(cfg.mulan, cfg.vae.sample_rate)
        self.models = {"mulan": mulan}
        if cfg.mulan.pretrained:  # a user's CLAP: nothing to train, only the tokens' RVQ to fit on its embeddings
            cfg.train.steps = 0
            cfg.mulan.embed_dim, cfg.mulan.pretrained_fingerprint = mulan.embed_dim, mulan.fingerprint()
            self.optimizers = {}
        else:
            self.optimizers = {"mulan": torch.optim.AdamW(mulan.parameters(), lr=cfg.train.lr, betas=BETAS,
                                                          weight_decay=cfg.train.weight_decay)}
        self._sentences = PerCaption()

    def dataset(self, split: str) -> ShardDataset:
        return ShardDataset.from_corpus(self.data_root, split, crop_seconds=self.cfg.mulan.crop_seconds,
                                        sample_rate=self.cfg.vae.sample_rate, channels=1, seed=self.cfg.train.seed)

    def sentences(self, mulan: MuLan, captions: list[str]) -> torch.Tensor:
        """The frozen encoder's sentence embeddings `(b, encoder_dim)`, each caption encoded once."""
        return self._sentences(captions, lambda new: mulan.text.sentence_embedding(mulan.text.tokenize(new)))

    def train_step(self, engine: Engine, batch: dict, generator: torch.Generator) -> dict[str, float]:
        mulan = engine.unwrapped("mulan")
        captions = batch["caption"]
        texts = self.sentences(mulan, captions).to(engine.device) if mulan.text.freeze else captions
        captioned = has_caption(captions)
        with engine.autocast():
            out = engine.model("mulan")(batch["audio"][:, 0], texts, batch["length"], same=same_caption(captions),
                                        captioned=captioned)
        loss = out.loss
        if engine.world_size > 1:  # negatives from the whole global batch, as on one process (CLIP's gathering)
            everyone = engine.gather_objects(captions)
            audio, text = engine.gather(out.audio), engine.gather(out.text)
            loss = contrastive_loss(audio, text, out.temperature, same_caption(everyone), has_caption(everyone))
        grad_norm = engine.optimize("mulan", loss)
        with torch.no_grad():
            keep = captioned.to(out.audio.device)
            hits = (out.audio[keep] @ out.text[keep].T).argmax(-1) == torch.arange(int(keep.sum()), device=keep.device)
        return {"mulan/total": loss.item(), "mulan/temperature": out.temperature.item(),
                "mulan/batch_a2t_acc": hits.float().mean().item() if len(hits) else float("nan"),
                "mulan/grad_norm": grad_norm}

    def sample(self, engine: Engine, batch: dict, folder: Path) -> None:
        """Retrieval on the whole valid split, logged beside the training curves."""
        emb = embed_split(engine.ema_or_model("mulan").eval(), self.data_root, "valid").captioned()
        if not emb.keys:
            return
        metrics = retrieval_metrics(emb.audio, emb.text, same_caption(emb.captions))
        engine.log({f"valid/{k.replace('/', '_')}": v for k, v in metrics.items()}, engine.step)
        write_json_atomic(folder / "retrieval.json", {"clips": len(emb.keys), **metrics})

    def finalize(self, engine: Engine) -> None:
        """Fit the MuLan tokens' RVQ on the training clips' audio and caption embeddings."""
        mulan = engine.ema_or_model("mulan").eval()
        emb = embed_split(mulan, self.data_root, "train")
        mulan.fit_tokens(torch.cat((emb.audio, emb.captioned().text)).to(engine.device), seed=self.cfg.train.seed)
