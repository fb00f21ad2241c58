"""`melody eval mulan`: does the joint embedding put a held-out clip next to its own caption?

On the held-out split (whole clips): text → audio and audio → text retrieval (R@1, R@10, mean
rank; a clip that shares the query's caption also counts as a hit) beside the chance levels
(1/n and 10/n); the mean cosine of matched pairs against mismatched ones (the paper's MuLan
cycle consistency, measured on real clips: the reference a generated clip is compared with);
and, when the RVQ is fitted, how often the tokens of a caption equal those of its clip, level
by level (the LM trains on audio tokens and is prompted with text tokens), and each level's
code usage. The picture is the text × audio similarity matrix: a bright diagonal is the goal.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from melody.data.loader import ShardDataset, make_loader
from melody.errors import MelodyError
from melody.io import write_json_atomic
from melody.modules import device_of
from melody.modules.rvq import code_perplexity
from melody.mulan import MuLan, has_caption, retrieval_metrics, same_caption


@dataclass
class SplitEmbeddings:
    audio: torch.Tensor  # (n, embed_dim) unit vectors of whole clips
    text: torch.Tensor  # (n, embed_dim) unit vectors of their captions
    captions: list[str]
    keys: list[str]

    def captioned(self) -> SplitEmbeddings:
        """The clips that have a caption: an empty one says nothing to retrieve or to quantise."""
        keep = has_caption(self.captions)
        rows = keep.nonzero()[:, 0].tolist()
        return SplitEmbeddings(self.audio[keep], self.text[keep], [self.captions[i] for i in rows],
                               [self.keys[i] for i in rows])


@torch.no_grad()
def embed_split(mulan: MuLan, data_root: str | Path, split: str, limit: int | None = None, batch_size: int = 16,
                progress=None) -> SplitEmbeddings:
    """Embed every clip of `split` (whole, in corpus order) and its caption with both towers."""
    dataset = ShardDataset.whole_clips(data_root, split, mulan.sample_rate)
    device = device_of(mulan)
    audio, text, captions, keys = [], [], [], []
    for batch in make_loader(dataset, batch_size, 0, drop_last=False):
        if limit is not None:
            batch = {k: v[: limit - len(keys)] for k, v in batch.items()}
        audio.append(mulan.embed_audio(batch["audio"][:, 0].to(device), batch["length"].to(device)).float().cpu())
        text.append(mulan.embed_text(batch["caption"]).float().cpu())
        captions += batch["caption"]
        keys += batch["key"]
        if progress is not None:
            progress(len(batch["key"]))
        if limit is not None and len(keys) >= limit:
            break
    if not keys:
        raise MelodyError(f"{data_root}: the '{split}' split has no clips; choose another --split")
    return SplitEmbeddings(torch.cat(audio), torch.cat(text), captions, keys)


@dataclass
class MuLanReport:
    clips: int
    split: str
    retrieval: dict[str, float]  # t2a/R@1 … a2t/mean_rank
    chance: dict[str, float]  # R@1, R@10 and mean rank of a random ranking
    cosine_matched: float  # mean cos(text_i, audio_i)
    cosine_mismatched: float  # mean cos(text_i, audio_j), i ≠ j
    token_match_by_level: list[float] | None  # share of clips whose first l+1 text tokens equal the audio's
    token_perplexity_audio: list[float] | None  # per level, exp(entropy) of the audio tokens' histogram
    token_perplexity_text: list[float] | None
    per_clip: list[dict]


def evaluate_mulan(mulan: MuLan, data_root: str | Path, split: str = "test", limit: int | None = None,
                   progress=None) -> tuple[MuLanReport, torch.Tensor]:
    """The report and the `(n text, n audio)` cosine similarity matrix it was computed from."""
    emb = embed_split(mulan, data_root, split, limit, progress=progress).captioned()
    n = len(emb.keys)
    if not n:
        raise MelodyError(f"{data_root}: no clip of the '{split}' split has a caption, so there is no retrieval to "
                          "measure; caption some (melody data ingest --captions) or choose another --split")
    relevant = same_caption(emb.captions)
    similarity = emb.text @ emb.audio.T
    off = ~torch.eye(n, dtype=torch.bool)
    match = perplexity_audio = perplexity_text = None
    rows = [{"key": k, "caption": c, "cosine": round(float(similarity[i, i]), 4)}
            for i, (k, c) in enumerate(zip(emb.keys, emb.captions, strict=True))]
    if bool(mulan.rvq.initialized):
        audio_tokens, text_tokens = mulan.tokens(emb.audio.to(mulan.rvq.codebooks.device)).cpu(), \
            mulan.tokens(emb.text.to(mulan.rvq.codebooks.device)).cpu()
        same_prefix = (audio_tokens == text_tokens).long().cumprod(-1).float()  # (n, levels): first l+1 all equal
        match = [round(float(v), 4) for v in same_prefix.mean(0)]
        k = mulan.rvq.codebook_size
        perplexity_audio = [round(float(v), 2) for v in code_perplexity(audio_tokens, k)[0]]
        perplexity_text = [round(float(v), 2) for v in code_perplexity(text_tokens, k)[0]]
        for i, row in enumerate(rows):
            row["audio_tokens"], row["text_tokens"] = audio_tokens[i].tolist(), text_tokens[i].tolist()
    report = MuLanReport(
        clips=n, split=split, retrieval=retrieval_metrics(emb.audio, emb.text, relevant),
        chance={"R@1": 1 / n, "R@10": min(10, n) / n, "mean_rank": (n + 1) / 2},
        cosine_matched=float(similarity.diagonal().mean()),
        cosine_mismatched=float(similarity[off].mean()) if n > 1 else float("nan"),
        token_match_by_level=match, token_perplexity_audio=perplexity_audio, token_perplexity_text=perplexity_text,
        per_clip=rows,
    )
    return report, similarity


def write_mulan_report(report: MuLanReport, similarity: torch.Tensor, out: str | Path) -> tuple[Path, Path]:
    """`out/mulan_eval.json` and `out/mulan_eval.png` (the text × audio similarity matrix)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from melody.data.plots import save_figure

    out = Path(out)
    json_path = write_json_atomic(out / "mulan_eval.json", asdict(report))
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    image = ax.imshow(similarity.numpy(), cmap="magma", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="cosine similarity")
    r = report.retrieval
    ax.set_title(f"MuLan, {report.split} split ({report.clips} clips): text→audio R@1 {r['t2a/R@1']:.2f}, "
                 f"R@10 {r['t2a/R@10']:.2f}\n(chance {report.chance['R@1']:.2f} / {report.chance['R@10']:.2f})", fontsize=9)
    ax.set_xlabel("audio clip")
    ax.set_ylabel("caption")
    return json_path, save_figure(fig, out / "mulan_eval.png")


def summary(report: MuLanReport) -> str:
    r, c = report.retrieval, report.chance
    line = (f"{report.clips} {report.split} clips: text→audio R@1 {r['t2a/R@1']:.3f} R@10 {r['t2a/R@10']:.3f} "
            f"mean rank {r['t2a/mean_rank']:.1f}; audio→text R@1 {r['a2t/R@1']:.3f} R@10 {r['a2t/R@10']:.3f} "
            f"mean rank {r['a2t/mean_rank']:.1f} (chance R@1 {c['R@1']:.3f}, R@10 {c['R@10']:.3f}, "
            f"mean rank {c['mean_rank']:.1f}); cosine matched {report.cosine_matched:.3f} vs mismatched "
            f"{report.cosine_mismatched:.3f}")
    if report.token_match_by_level is not None:
        line += f"; text/audio tokens equal at level 1: {report.token_match_by_level[0]:.2f}"
    return line
