"""`melody eval semantic`: how well the semantic LM predicts held-out semantic tokens.

The held-out clips are tokenised exactly as in training (one `semantic_lm.window_seconds` window
per clip from its start: the tokenizer's 25 Hz tokens, and the MuLan tokens of the clip's audio and
of its caption). The report gives per-token perplexities exp(mean −log p) over the valid frames:

- the LM conditioned on the **audio** MuLan tokens (the training condition, teacher-forced),
- the LM conditioned on the **text** MuLan tokens (what a prompt gives at inference),
- the LM with the **null** condition (what guidance subtracts),
- a **unigram** model (token frequencies of the training split, add-one smoothed) and a
  **bigram** model (transition counts of the training split, Dirichlet-smoothed towards the
  unigram with strength `BIGRAM_PRIOR`): the baselines an LM must beat, the bigram one
  capturing how often a token simply repeats at 25 Hz.

Perplexity is teacher-forced: after a few tokens the context tells the LM which codes a piece
uses, and the condition matters little. What the condition does for *generation* is measured
directly (`generation`): from each clip's text (and audio) MuLan tokens, and from the null
condition, the LM writes one window with the configured guidance and temperature 1 (seeded);
the report gives the share of generated tokens whose code occurs in the clip's own tokens,
beside the same share for another clip of the split (half the split away: another piece) —
the chance level for music of this corpus.

Also the tokens' code usage and their unigram perplexity (the tokenizer's effective vocabulary).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from melody.data.features import FeatureDataset
from melody.data.loader import ShardDataset, clip_beat_phase, clip_bpm, make_loader
from melody.data.synth.captions import restate_tempo
from melody.errors import MelodyError
from melody.io import write_json_atomic
from melody.modules import device_of
from melody.mulan import MuLan, has_caption
from melody.semantic.lm import SemanticLM, beat_grid, lm_loss, stretch_tokens, tempo_bucket
from melody.semantic.tokenizer import SemanticTokenizer, frame_count

BIGRAM_PRIOR = 1.0  # pseudo-counts of the unigram distribution added to each row of bigram counts


@dataclass
class TokenizedSplit:
    """A split as the semantic LM sees it: one window per clip."""

    semantic: torch.Tensor  # (n, t) long
    keep: torch.Tensor  # (n, t) bool: valid frames
    audio_mulan: torch.Tensor  # (n, L) long: MuLan tokens of the clip
    text_mulan: torch.Tensor  # (n, L) long: MuLan tokens of its caption
    captions: list[str]
    keys: list[str]
    bpm: torch.Tensor  # (n,) float64: the tempo its metadata states, NaN where none
    phase: torch.Tensor  # (n,) float64: the beat at its first frame (`clip_beat_phase`), NaN where no tempo is stated
    frame_rate: float  # of the semantic tokens (Hz)


@torch.no_grad()
def tokenize_split(mulan: MuLan, tokenizer: SemanticTokenizer, data_root: str | Path, split: str, seconds: float,
                   limit: int | None = None, batch_size: int = 16, progress=None) -> TokenizedSplit:
    """The first `seconds` of every clip of `split`, tokenised by both conditioners."""
    dataset = ShardDataset.from_corpus(data_root, split, crop_seconds=seconds, sample_rate=mulan.sample_rate,
                                       channels=1, shuffle=0, random_offset=False)
    device = device_of(tokenizer)
    parts = _SplitParts()
    for batch in parts.batches(make_loader(dataset, batch_size, 0, drop_last=False), limit):
        wav, lengths = batch["audio"][:, 0].to(device), batch["length"].to(device)
        semantic = tokenizer.tokens(wav, lengths)
        keep = torch.arange(semantic.shape[1], device=device)[None, :] < frame_count(lengths, tokenizer.hop)[:, None]
        parts.add(batch, semantic.cpu(), keep.cpu(), mulan.tokens_from_audio(wav, lengths).cpu(),
                  mulan.tokens_from_text(batch["caption"]).cpu())
        if progress is not None:
            progress(len(batch["key"]))
    return parts.joined(data_root, split, tokenizer.config.frame_rate)


def tokenized_features(folder: str | Path, split: str, seconds: float, limit: int | None = None) -> TokenizedSplit:
    """`tokenize_split` read from cached features (`melody data encode` with a MuLan): the first `seconds` of every clip
    of `split`, without running the conditioners (the whole clip's tokens, where `tokenize_split` encodes the crop;
    the same for clips no longer than `seconds`)."""
    dataset = FeatureDataset(folder, split, seconds, shuffle=0, random_offset=False)
    parts = _SplitParts()
    for batch in parts.batches(make_loader(dataset, 64, 0, drop_last=False), limit):
        if "text_mulan" not in batch:
            raise MelodyError(f"{folder}: these features hold no MuLan tokens of the captions (made with no MuLan, or before "
                              "version 3); run `melody data encode` again with a MuLan")
        keep = torch.arange(batch["tokens"].shape[1])[None, :] < batch["token_length"][:, None]
        parts.add(batch, batch["tokens"], keep, batch["mulan"], batch["text_mulan"])
    return parts.joined(folder, split, dataset.token_rate)


class _SplitParts:
    """A `TokenizedSplit` gathered batch by batch (each batch's captions, keys and metadata beside its tensors)."""

    TENSORS = ("semantic", "keep", "audio_mulan", "text_mulan")

    def __init__(self) -> None:
        self.tensors: dict[str, list[torch.Tensor]] = {k: [] for k in self.TENSORS}
        self.captions: list[str] = []
        self.keys: list[str] = []
        self.bpm: list[float] = []
        self.phase: list[float] = []

    def batches(self, loader, limit: int | None):
        """The loader's batches, the last one cut so that at most `limit` clips are gathered."""
        for batch in loader:
            if limit is not None:
                batch = {k: v[: limit - len(self.keys)] for k, v in batch.items()}
            yield batch
            if limit is not None and len(self.keys) >= limit:
                return

    def add(self, batch: dict, *tensors: torch.Tensor) -> None:
        for name, x in zip(self.TENSORS, tensors, strict=True):
            self.tensors[name].append(x)
        self.captions += batch["caption"]
        self.bpm += [clip_bpm(meta) for meta in batch["meta"]]
        self.phase += [clip_beat_phase(meta, float(s)) for meta, s in zip(batch["meta"], batch["start"])]
        self.keys += batch["key"]

    def joined(self, where: str | Path, split: str, frame_rate: float) -> TokenizedSplit:
        if not self.keys:
            raise MelodyError(f"{where}: the '{split}' split has no clips; choose another --split")
        return TokenizedSplit(**{k: torch.cat(v) for k, v in self.tensors.items()}, captions=self.captions, keys=self.keys,
                              bpm=torch.tensor(self.bpm, dtype=torch.float64),
                              phase=torch.tensor(self.phase, dtype=torch.float64), frame_rate=float(frame_rate))


# --- baselines (pure functions) -----------------------------------------------------------------

def unigram_log_probs(tokens: torch.Tensor, keep: torch.Tensor, vocab: int) -> torch.Tensor:
    """log p(s) `(vocab,)` from the kept tokens' counts, add-one smoothed."""
    counts = torch.bincount(tokens[keep], minlength=vocab).double()
    return ((counts + 1.0) / (counts.sum() + vocab)).log()


def bigram_log_probs(tokens: torch.Tensor, keep: torch.Tensor, vocab: int, prior: float = BIGRAM_PRIOR) -> torch.Tensor:
    """log p(s_i | s_{i−1}) `(vocab, vocab)` (row = previous token): (c(a, b) + prior · p(b)) / (c(a) + prior)."""
    unigram = unigram_log_probs(tokens, keep, vocab).exp()
    pairs = keep[:, 1:] & keep[:, :-1]
    index = tokens[:, :-1][pairs] * vocab + tokens[:, 1:][pairs]
    counts = torch.bincount(index, minlength=vocab * vocab).double().reshape(vocab, vocab)
    return ((counts + prior * unigram[None, :]) / (counts.sum(-1, keepdim=True) + prior)).log()


def ngram_nll(tokens: torch.Tensor, keep: torch.Tensor, unigram: torch.Tensor, bigram: torch.Tensor | None) -> float:
    """Mean −log p per kept token: the first token of a row (and every token without `bigram`) from the
    unigram, the others from the bigram given the previous token."""
    nll = -unigram[tokens]  # (n, t)
    if bigram is not None:
        nll[:, 1:] = -bigram[tokens[:, :-1], tokens[:, 1:]]
    return float(nll[keep].mean())


def leading_frames(keep: torch.Tensor, frames: int) -> torch.Tensor:
    """The valid frames `keep` `(n, t)` among each clip's first `frames` (its first second at the frame rate), where
    only the condition informs the LM."""
    return keep & (torch.arange(keep.shape[1], device=keep.device)[None, :] < frames)


@torch.no_grad()
def lm_nll(lm: SemanticLM, mulan_tokens: torch.Tensor | None, semantic: torch.Tensor, keep: torch.Tensor,
           batch_size: int = 16, tempo: torch.Tensor | None = None, beats: torch.Tensor | None = None) -> float:
    """Mean −log p(s_i | condition, s_<i) per kept token, teacher-forced (None: the null condition;
    `tempo` `(n,)`: the LM's tempo tokens, None: no tempo given; `beats` `(n, 2)`: the beat grids (`beat_grid`) of an
    LM with a beat clock)."""
    device = lm.bos.device
    total, count = 0.0, 0
    for start in range(0, semantic.shape[0], batch_size):
        rows = slice(start, start + batch_size)
        cond = None if mulan_tokens is None else mulan_tokens[rows].to(device)
        out = lm(cond, semantic[rows].to(device), tempo=None if tempo is None else tempo[rows].to(device),
                 beats=None if beats is None else beats[rows])
        loss = lm_loss(out.logits, semantic[rows].to(device), keep[rows].to(device))
        total += float(loss.loss) * int(loss.tokens)
        count += int(loss.tokens)
    return total / max(count, 1)


def stretched_nll(lm: SemanticLM, split: TokenizedSplit, rates: tuple[float, ...] = (0.8, 1.25),
                  caption_tokens: Callable[[list[str]], torch.Tensor] | None = None) -> dict[str, float]:
    """Does the LM's tempo token set the pace? The clips that state a tempo, played at each of `rates`
    (`stretch_tokens`), text-conditioned: mean NLL per token with the tempo token (and beat clock) moved with them
    (`told`) and with the clip's own, now wrong, ones (`stale`). `told` below `stale` means the LM reads the pace from the token.
    With `caption_tokens` (captions → MuLan tokens `(n, L)`), also `told_restated`: the token moved and the caption
    restating the new tempo (`restate_tempo`), the condition that `semantic_lm.tempo_restate` trains with."""
    config = lm.config
    stated = torch.isfinite(split.bpm) & (split.bpm > 0)
    if lm.tempo_embedding is None or not bool(stated.any()):
        return {}
    captions = [c for c, s in zip(split.captions, stated.tolist()) if s]
    parts: dict[str, list] = {"semantic": [], "keep": [], "mulan": [], "told": [], "stale": [], "restated": [],
                              "told_beats": [], "stale_beats": []}
    for r in rates:
        rate = torch.full((int(stated.sum()),), float(r), dtype=torch.float64)
        semantic, keep = stretch_tokens(split.semantic[stated], split.keep[stated], rate)
        parts["semantic"].append(semantic)
        parts["keep"].append(keep)
        parts["mulan"].append(split.text_mulan[stated])
        parts["told"].append(tempo_bucket(split.bpm[stated] * rate, config.tempo_buckets, config.tempo_range))
        parts["stale"].append(tempo_bucket(split.bpm[stated], config.tempo_buckets, config.tempo_range))
        parts["told_beats"].append(beat_grid(split.bpm[stated] * rate, split.frame_rate, split.phase[stated]))
        parts["stale_beats"].append(beat_grid(split.bpm[stated], split.frame_rate, split.phase[stated]))
        if caption_tokens is not None:
            new_bpm = (split.bpm[stated] * rate).tolist()
            parts["restated"].append(caption_tokens([restate_tempo(c, b) for c, b in zip(captions, new_bpm)]).cpu())
    joined = {k: torch.cat(v) for k, v in parts.items() if v}
    clocked = config.tempo_clock
    nll = {name: lm_nll(lm, joined["mulan"], joined["semantic"], joined["keep"], tempo=joined[name],
                        beats=joined[f"{name}_beats"] if clocked else None) for name in ("told", "stale")}
    if caption_tokens is not None:
        nll["told_restated"] = lm_nll(lm, joined["restated"], joined["semantic"], joined["keep"], tempo=joined["told"],
                                      beats=joined["told_beats"] if clocked else None)
    return nll


@dataclass
class SemanticReport:
    clips: int
    split: str
    tokens: int
    vocab: int
    perplexity: dict[str, float]  # lm_audio, lm_text, lm_null, bigram, unigram
    # the same over each clip's first second only, where the condition is all the LM has to go on
    perplexity_first_second: dict[str, float]
    codes_used: int  # distinct semantic tokens in the split
    # per condition (text, audio, null): share of generated tokens in the clip's own code set vs another clip's
    generation: dict[str, dict[str, float]] | None
    guidance: float
    token_unigram_perplexity: float  # exp(entropy) of the split's token histogram


def code_overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of the tokens of `a` whose code also occurs in `b` (both 1-d long)."""
    return float(torch.isin(a, b.unique()).float().mean()) if a.numel() else float("nan")


@torch.no_grad()
def generation_agreement(lm: SemanticLM, split: TokenizedSplit, guidance: float, seed: int = 0) -> dict[str, dict[str, float]]:
    """For text, audio and null conditions: generated tokens' overlap with their own clip's codes and another clip's."""
    from melody.semantic.sampling import generate

    n, length = split.semantic.shape
    captioned = has_caption(split.captions).tolist()
    out = {}
    for name, cond in (("text", split.text_mulan), ("audio", split.audio_mulan), ("null", None)):
        generator = torch.Generator(device=lm.bos.device).manual_seed(seed)
        prefix = None if cond is not None else torch.zeros(n, 0, dtype=torch.long)
        made = generate(lm, cond, length, prefix, temperature=1.0, guidance=guidance, generator=generator,
                        window=length, stride=length).tokens.cpu()
        rows = [i for i in range(n) if name != "text" or captioned[i]]  # "" asks for nothing: no text row to judge
        own = [code_overlap(made[i], split.semantic[i][split.keep[i]]) for i in rows]
        other = [code_overlap(made[i], split.semantic[j][split.keep[j]]) for i in rows for j in [(i + n // 2) % n] if j != i]
        out[name] = {"own_clip": round(float(np.mean(own)), 4) if own else float("nan"),
                     "other_clip": round(float(np.mean(other)), 4) if other else float("nan")}
    return out


def evaluate_semantic(lm: SemanticLM, mulan: MuLan, tokenizer: SemanticTokenizer, data_root: str | Path,
                      split: str = "test", seconds: float = 10.0, limit: int | None = None, progress=None,
                      guidance: float = 3.0, generation: bool = True) -> SemanticReport:
    vocab = lm.vocab_size
    train = tokenize_split(mulan, tokenizer, data_root, "train", seconds, progress=progress)
    test = tokenize_split(mulan, tokenizer, data_root, split, seconds, limit, progress=progress)
    unigram = unigram_log_probs(train.semantic, train.keep, vocab)
    bigram = bigram_log_probs(train.semantic, train.keep, vocab)
    captioned = has_caption(test.captions)

    def perplexities(keep: torch.Tensor) -> dict[str, float]:
        text_keep = keep & captioned[:, None]  # a clip without a caption has no text condition to score
        nll = {
            "lm_audio": lm_nll(lm, test.audio_mulan, test.semantic, keep),
            "lm_text": lm_nll(lm, test.text_mulan, test.semantic, text_keep) if text_keep.any() else math.nan,
            "lm_null": lm_nll(lm, None, test.semantic, keep),
            "bigram": ngram_nll(test.semantic, keep, unigram, bigram),
            "unigram": ngram_nll(test.semantic, keep, unigram, None),
        }
        return {k: round(math.exp(v), 3) for k, v in nll.items()}

    first = leading_frames(test.keep, tokenizer.config.frame_rate)
    counts = torch.bincount(test.semantic[test.keep], minlength=vocab).double()
    p = counts / counts.sum()
    entropy = float(-(p[p > 0] * p[p > 0].log()).sum())
    return SemanticReport(clips=len(test.keys), split=split, tokens=int(test.keep.sum()), vocab=vocab,
                          perplexity=perplexities(test.keep), perplexity_first_second=perplexities(first),
                          codes_used=int((counts > 0).sum()), token_unigram_perplexity=round(math.exp(entropy), 3),
                          generation=generation_agreement(lm, test, guidance) if generation else None, guidance=guidance)


def write_semantic_report(report: SemanticReport, out: str | Path) -> tuple[Path, Path]:
    """`out/semantic_eval.json` and `out/semantic_eval.png` (perplexities as bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from melody.data.plots import save_figure

    out = Path(out)
    json_path = write_json_atomic(out / "semantic_eval.json", asdict(report))
    labels = {"unigram": "unigram", "bigram": "bigram", "lm_null": "LM, null\ncondition",
              "lm_text": "LM, text\nMuLan tokens", "lm_audio": "LM, audio\nMuLan tokens"}
    fig, ax = plt.subplots(figsize=(7.2, 3.8))
    names = list(labels)
    x = np.arange(len(names))
    for offset, (title, values, color) in enumerate((("whole clip", report.perplexity, "#2c6fb7"),
                                                      ("first second", report.perplexity_first_second, "#e08a2c"))):
        bars = ax.bar(x + (offset - 0.5) * 0.4, [values[k] for k in names], 0.4, label=title, color=color)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(x, [labels[k] for k in names])
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_ylabel("perplexity per semantic token")
    ax.set_title(f"semantic LM, {report.split} split: {report.clips} clips, {report.tokens} tokens, vocabulary {report.vocab}",
                 fontsize=9)
    return json_path, save_figure(fig, out / "semantic_eval.png")


def summary(report: SemanticReport) -> str:
    p = report.perplexity
    f = report.perplexity_first_second
    return (f"{report.clips} {report.split} clips, {report.tokens} tokens: perplexity LM {p['lm_audio']:.2f} (audio MuLan "
            f"tokens), {p['lm_text']:.2f} (text), {p['lm_null']:.2f} (null) vs bigram {p['bigram']:.2f}, unigram "
            f"{p['unigram']:.2f}; first second: LM {f['lm_audio']:.2f} / {f['lm_text']:.2f} / {f['lm_null']:.2f} vs bigram "
            f"{f['bigram']:.2f}; {report.codes_used}/{report.vocab} codes used" + _generation_summary(report))


def _generation_summary(report: SemanticReport) -> str:
    if report.generation is None:
        return ""
    parts = [f"{name} {g['own_clip']:.2f} vs {g['other_clip']:.2f}" for name, g in report.generation.items()]
    return (f"; generated tokens (guidance {report.guidance:g}) in the own clip's codes vs another clip's: "
            + ", ".join(parts))
