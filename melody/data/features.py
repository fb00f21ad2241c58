"""Cached features: a corpus's VAE posteriors, semantic tokens and MuLan tokens, computed once (`melody data encode`).

The DPD and the semantic LM train against frozen models (the VAE-GAN's encoder, the semantic tokenizer,
MuLan) that otherwise run on every batch: at scale that is most of a step's cost, repeated every epoch.
`encode_corpus` runs them once over every whole clip of every split and writes WebDataset shards
beside the corpus, under `CORPUS/features/<key>/`, where the key hashes the frozen models' weight
fingerprints: features made by other checkpoints can never be used by mistake, and several sets live
side by side. `FeatureDataset` reads them with the shard loader's sharding, shuffling and resume, and
serves random crops whose latent frames and tokens start together.

Per clip (`<key>.npz`, plus the clip's metadata as `<key>.json`):
- `mean`, `logvar` `(l, d)` float16: the VAE posterior, not a sample of it, so training still draws
  a fresh posterior sample per step (`VAE.encode_latents` does the same on audio); or, with
  `latents="uint8"` (a quarter of the size, for carrying a corpus's features where space is short, such
  as the 64 MiB a lent GPU machine takes), `mean_q` `(l, d)` uint8 with `mean_lo`, `mean_step` `(d,)`
  (256 even levels per dimension over the clip's range: error ≤ step / 2) and `logvar_avg` `(d,)`, the
  clip's log-variance averaged over its frames: an approximation of the posterior's noise, which the
  float16 format keeps per frame. `unpack` returns `mean` and `logvar` `(l, d)` either way. With
  `latents="none"` there are none, and no VAE is needed: features for the semantic LM alone, a few kB a clip;
- `tokens` `(T,)` int16: the semantic tokens of the whole clip (25 Hz);
- `mulan` `(levels,)` int16: the MuLan tokens of the clip's audio (when a MuLan is given);
- `text_mulan` `(levels,)` int16: the MuLan tokens of the clip's caption (when a MuLan is given), which the LM's
  text-conditioned examples read (`semantic_lm.text_condition_prob`), so that training needs no text encoder.
Whole-clip features differ from those of a crop only near the crop's edges (the encoders see more
context); stages read them through the same crop grid as audio (`features.latents_per_token`).

`features.json` records the format version, the corpus manifest's hash, the fingerprints, the rates
and the per-split shards; a stage checks it against the models it is given.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from melody.checkpoint import fingerprint
from melody.data.loader import ShardDataset, choose_crop, key_seed, make_loader
from melody.data.shards import MANIFEST, ShardWriter, read_manifest
from melody.errors import MelodyError
from melody.io import read_json, write_json_atomic

FEATURES_FORMAT = "melody-features"
FEATURES_VERSION = 3  # 2 added the uint8 latents, 3 the captions' MuLan tokens and latent-free sets; older files read the same
READABLE_VERSIONS = (1, 2, 3)
FEATURES_FILE = "features.json"
LATENT_FORMATS = ("float16", "uint8", "none")


def features_key(models: dict[str, nn.Module]) -> str:
    """The cache's name: a hash of the named frozen models' weight fingerprints."""
    text = ",".join(f"{name}={fingerprint(models[name])}" for name in sorted(models))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def features_dir(corpus: str | Path, models: dict[str, nn.Module], latents: str = "float16") -> Path:
    """Where `encode_corpus` writes the features these models make: `CORPUS/features/<features_key>`, with `-uint8`
    after it for the uint8 latents (`-none` for none: the key then has no VAE in it)."""
    return Path(corpus) / "features" / (features_key(models) + ("" if latents == "float16" else f"-{latents}"))


def quantize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x `(l, d)` → (codes `(l, d)` uint8, lo `(d,)`, step `(d,)`): 256 even levels from each column's minimum to its
    maximum, so `dequantize` gives x back within step / 2 (exactly for a constant column)."""
    x = x.astype(np.float32)
    lo, hi = x.min(axis=0), x.max(axis=0)
    step = np.where(hi > lo, (hi - lo) / 255.0, 1.0).astype(np.float32)
    codes = np.clip(np.rint((x - lo) / step), 0, 255).astype(np.uint8)
    return codes, lo, step


def dequantize(codes: np.ndarray, lo: np.ndarray, step: np.ndarray) -> np.ndarray:
    return lo + step * codes.astype(np.float32)


def _manifest_hash(corpus: Path) -> str:
    return hashlib.sha256((corpus / MANIFEST).read_bytes()).hexdigest()[:16]


@torch.no_grad()
def encode_corpus(corpus: str | Path, vae, tokenizer, mulan=None, batch_size: int = 8, progress: bool = True,
                  splits: tuple[str, ...] | None = None, latents: str = "float16") -> Path:
    """Write every split's features under `features_dir(corpus, models, latents)`; returns that folder. `latents`:
    "float16" (the posterior per frame), "uint8" or "none" (no VAE: pass `vae=None`; module docstring)."""
    from tqdm.auto import tqdm

    if latents not in LATENT_FORMATS:
        raise MelodyError(f"unknown latent format '{latents}'; choose one of: {', '.join(LATENT_FORMATS)}")
    if (vae is None) != (latents == "none"):
        raise MelodyError("features without latents take no VAE, and latents need one: pass a VAE, or --latents none")
    corpus = Path(corpus)
    manifest = read_manifest(corpus)
    models = ({"vae": vae} if vae is not None else {}) | {"tokenizer": tokenizer} | ({"mulan": mulan} if mulan is not None else {})
    out = features_dir(corpus, models, latents)
    for model in models.values():
        model.eval()
    rate = tokenizer.hop * tokenizer.config.frame_rate  # the tokenizer's sample rate
    if vae is not None and vae.cfg.sample_rate != rate:
        raise MelodyError(f"the VAE reads {vae.cfg.sample_rate} Hz audio and the tokenizer {rate} Hz; pass models of one bundle")
    text_tokens: dict[str, torch.Tensor] = {}  # each caption once, alone, so that its tokens do not depend on the batch
    record_splits = {}
    for split in splits or tuple(name for name, entry in manifest["splits"].items() if entry.get("shards")):
        dataset = ShardDataset.whole_clips(corpus, split, rate, vae.cfg.channels if vae is not None else 1)
        writer = ShardWriter(out, split, rate, clips_per_shard=int(manifest.get("data_config", {}).get("clips_per_shard", 256)))
        total = int(manifest["splits"][split].get("clips") or 0) or None
        bar = tqdm(total=total, desc=f"encode {split}", unit="clip", disable=not progress)
        for batch in make_loader(dataset, batch_size, 0, drop_last=False):
            arrays, lengths_of = {}, batch["length"].tolist()
            # clips of one length together, cut to it: a clip's features must not depend on what it was batched with
            for n in sorted(set(lengths_of)):
                rows = [i for i, m in enumerate(lengths_of) if m == n]
                audio, lengths = batch["audio"][rows, :, :n], batch["length"][rows]
                posterior = vae.encode(audio) if vae is not None else None
                tokens = tokenizer.tokens(audio.mean(1), lengths)
                mulan_tokens = mulan.tokens_from_audio(audio.mean(1), lengths) if mulan is not None else None
                for j, i in enumerate(rows):
                    arrays[i] = {"tokens": tokens[j]}
                    if posterior is not None:
                        arrays[i] |= {"mean": posterior.mean[j].T, "logvar": posterior.logvar[j].T}
                    if mulan_tokens is not None:
                        caption = batch["caption"][i]
                        if caption not in text_tokens:
                            text_tokens[caption] = mulan.tokens_from_text([caption])[0]
                        arrays[i] |= {"mulan": mulan_tokens[j], "text_mulan": text_tokens[caption]}
            for i, key in enumerate(batch["key"]):
                writer.add_raw(key, pack(arrays[i], latents), batch["meta"][i] | {"seconds": lengths_of[i] / rate})
            bar.update(len(batch["key"]))
        bar.close()
        writer.flush()
        record_splits[split] = writer.summary()
    write_json_atomic(out / FEATURES_FILE, {
        "format": FEATURES_FORMAT, "version": FEATURES_VERSION, "latents": latents, "corpus_manifest": _manifest_hash(corpus),
        "fingerprints": {name: fingerprint(m) for name, m in models.items()}, "sample_rate": rate,
        "latent_rate": rate / vae.hop if vae is not None else None, "token_rate": rate / tokenizer.hop, "splits": record_splits})
    return out


def pack(arrays: dict[str, torch.Tensor], latents: str = "float16") -> bytes:
    """Feature tensors → `.npz` bytes: codes as int16 (exact below 32 768); the posterior `mean` and `logvar` as float16,
    or with `latents="uint8"` as `quantize`d means and the frames' average log-variance (module docstring)."""
    arrays, out = dict(arrays), {}
    if latents == "uint8":
        mean, logvar = (arrays.pop(k).cpu().float().numpy() for k in ("mean", "logvar"))
        out["mean_q"], out["mean_lo"], out["mean_step"] = quantize(mean)
        out["logvar_avg"] = logvar.mean(axis=0)
    out |= {k: v.cpu().numpy().astype(np.int16 if not v.is_floating_point() else np.float16) for k, v in arrays.items()}
    buffer = io.BytesIO()
    np.savez(buffer, **out)
    return buffer.getvalue()


def unpack(data: bytes) -> dict[str, np.ndarray]:
    """`.npz` bytes → the arrays, with uint8 latents turned back into `mean` and `logvar` `(l, d)` float32."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:  # never unpickle what a file holds
        f = {k: npz[k] for k in npz.files}
    if "mean_q" in f:
        f["mean"] = dequantize(f.pop("mean_q"), f.pop("mean_lo"), f.pop("mean_step"))
        f["logvar"] = np.broadcast_to(f.pop("logvar_avg").astype(np.float32), f["mean"].shape)
    return f


def find_features(corpus: str | Path, models: dict[str, nn.Module]) -> Path:
    """The features of `corpus` made by (at least) exactly these models, or a one-line error saying how to make them."""
    wanted = {name: fingerprint(model) for name, model in models.items()}
    names = " + ".join(sorted(models))
    candidates = sorted((Path(corpus) / "features").glob(f"*/{FEATURES_FILE}"))
    for path in candidates:
        record = read_json(path, "features record")
        prints = record.get("fingerprints", {}) if isinstance(record, dict) else {}
        if all(prints.get(name) == value for name, value in wanted.items()):
            if record.get("format") != FEATURES_FORMAT or record.get("version") not in READABLE_VERSIONS:
                raise MelodyError(f"{path}: not features this melody reads (format {record.get('format')} "
                                  f"v{record.get('version')}); run `melody data encode` again")
            if record.get("corpus_manifest") != _manifest_hash(Path(corpus)):
                raise MelodyError(f"{path}: made from another version of the corpus (its manifest changed); "
                                  "run `melody data encode` again")
            return path.parent
    raise MelodyError(f"{corpus}: no cached features for these {names} checkpoints ({len(candidates)} other set(s) in "
                      f"{Path(corpus) / 'features'}); run `melody data encode {corpus}` with them, or train without train.cached_features")


@dataclass
class FeatureCrop:
    latent_frames: int
    tokens: int


class FeatureDataset(ShardDataset):
    """Random crops of cached features: `{"mean", "logvar" (l, d), "tokens" (T,), "mulan", "text_mulan" (levels,),
    "length" (valid latent frames), "token_length", "caption", "key", "meta"}` (what the set holds), crops starting on
    a token boundary so that latent frame j is covered by token ⌊j / latents_per_token⌋, as on audio. Sharding,
    shuffling and resume are the shard loader's."""

    def __init__(self, folder: str | Path, split: str, crop_seconds: float, *, shuffle: int = 256, seed: int = 0,
                 random_offset: bool = True) -> None:
        folder = Path(folder)
        record = read_json(folder / FEATURES_FILE, "features record")
        if split not in record["splits"]:
            raise MelodyError(f"{folder}: the features have no '{split}' split; they have {', '.join(record['splits'])}")
        super().__init__([folder / s for s in record["splits"][split]["shards"]], crop_seconds, record["sample_rate"],
                         shuffle=shuffle, seed=seed, random_offset=random_offset)
        latent_rate = record.get("latent_rate") or 0.0  # none: features for the semantic LM alone
        ratio = latent_rate / record["token_rate"]
        if abs(ratio - round(ratio)) > 1e-6:
            raise MelodyError(f"{folder}: {record['latent_rate']} Hz latents are no whole multiple of {record['token_rate']} Hz tokens")
        self.latents_per_token = round(ratio)
        self.token_rate = record["token_rate"]
        self.shape = FeatureCrop(round(crop_seconds * latent_rate), round(crop_seconds * record["token_rate"]))
        self.collate = collate_features

    def decode(self, raw: dict) -> dict:
        try:
            return {"key": raw["__key__"], "features": unpack(raw["npz"]), "meta": json.loads(raw["json"])}
        except (KeyError, ValueError, OSError):
            raise MelodyError(f"feature sample {raw.get('__key__')!r} is incomplete or corrupt; run `melody data encode` again") from None

    def _prepare(self, sample: dict) -> dict:
        f, crop = sample["features"], self.shape
        rng = np.random.default_rng([self.seed, self.epoch, key_seed(sample["key"])])
        where = choose_crop(len(f["tokens"]), crop.tokens, rng, self.random_offset)  # in tokens
        first = where.start * self.latents_per_token
        frames = max(0, min(where.length * self.latents_per_token, len(f["mean"]) - first, crop.latent_frames)) if "mean" in f else 0
        out = {"length": frames, "token_length": where.length, "start": where.start / self.token_rate,
               "caption": sample["meta"].get("caption", ""),
               "key": sample["key"], "meta": sample["meta"]}
        # padding frames: a posterior of exactly 0 (the variance of e^-30 is the VAE's own lower bound)
        for name, pad in (("mean", 0.0), ("logvar", -30.0)) if "mean" in f else ():
            x = np.full((crop.latent_frames, f[name].shape[1]), pad, np.float32)
            x[:frames] = f[name][first:first + frames]
            out[name] = torch.from_numpy(x)
        tokens = np.zeros(crop.tokens, np.int64)
        tokens[:where.length] = f["tokens"][where.start:where.start + where.length]
        out["tokens"] = torch.from_numpy(tokens)
        for name in ("mulan", "text_mulan"):
            if name in f:
                out[name] = torch.from_numpy(f[name].astype(np.int64))
        return out


def collate_features(batch: list[dict]) -> dict:
    """Stacks what every sample has (a set made before version 3 has no `text_mulan`, one without latents no `mean`)."""
    stacked = [k for k in ("mean", "logvar", "tokens", "mulan", "text_mulan") if all(k in b for b in batch)]
    out = {k: torch.stack([b[k] for b in batch]) for k in stacked}
    out |= {k: torch.tensor([b[k] for b in batch]) for k in ("length", "token_length")}
    out["start"] = torch.tensor([b["start"] for b in batch], dtype=torch.float64)
    return out | {k: [b[k] for b in batch] for k in ("caption", "key", "meta")}
