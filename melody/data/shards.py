"""The corpus format: WebDataset tar shards of FLAC clips with JSON metadata, plus a manifest.

Both corpus paths (`melody data synth` and `melody data ingest`) write this format and every
training stage reads it, so it is the contract between data and models:

    DIR/manifest.json                 format name + version, sample rate, per-split shard lists, the
                                      shards' SHA-256 digest (which corpus a report was measured on)
    DIR/{train,valid,test}/shard-000000.tar
        <key>.flac                    16-bit FLAC, mono (or stereo), at the manifest's rate
        <key>.json                    metadata: caption, source, piece, split, attributes, ...

Keys hold no dots (WebDataset splits a member name at its first dot). Shards are written
atomically (temp file + rename) with fixed tar mtimes, so a re-run with the same inputs gives
byte-identical shards.

A manifest's shard entries may also be brace patterns (`train/shard-{000000..000099}.tar`) and
URLs of any scheme WebDataset opens: `pipe:CMD` (the shard is CMD's standard output: `pipe:aws s3
cp s3://bucket/train-000000.tar -`, `pipe:curl -s URL`, …), `http(s)://…`, `file:…`. So a corpus
that lives elsewhere is a local folder holding only its manifest (`melody data manifest`), and
every stage trains from it unchanged. Local shards are checked before a run starts; remote ones
when they are read (a failing command or a truncated stream is a one-line error naming the shard).
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import webdataset as wds

from melody.audio import decode_audio_bytes, encode_flac
from melody.errors import MelodyError
from melody.io import atomic_path, read_json, write_json_atomic

FORMAT = "melody-shards"
FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test")
MANIFEST = "manifest.json"
_KEY_RE = re.compile(r"^[A-Za-z0-9_\-]+$")


def safe_key(text: str) -> str:
    """A shard key from any text: letters, digits, '-' and '_' only (no dots)."""
    key = re.sub(r"[^A-Za-z0-9_\-]+", "_", text).strip("_")
    return key or "clip"


@dataclass
class ShardWriter:
    """Writes one split's clips into numbered shards of at most `clips_per_shard` clips each."""

    root: Path
    split: str
    sample_rate: int
    clips_per_shard: int = 256
    start_index: int = 0
    shards: list[str] = field(default_factory=list)
    clips: int = 0
    seconds: float = 0.0
    _buffer: list[tuple[str, str, bytes, bytes]] = field(default_factory=list, repr=False)  # key, member, payload, json

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise MelodyError(f"unknown split '{self.split}'; use one of {', '.join(SPLITS)}")
        self.root = Path(self.root)
        self._index = self.start_index

    def add(self, key: str, audio: np.ndarray, meta: dict) -> None:
        if not _KEY_RE.match(key):
            raise ValueError(f"shard key {key!r} must hold only letters, digits, '-' and '_'")
        audio = np.atleast_2d(audio)
        seconds = audio.shape[-1] / self.sample_rate
        meta = {**meta, "key": key, "split": self.split, "sample_rate": self.sample_rate, "seconds": round(seconds, 6)}
        self._append(key, "flac", encode_flac(audio, self.sample_rate), meta, seconds)

    def add_raw(self, key: str, data: bytes, meta: dict, member: str = "npz") -> None:
        """A sample whose payload is already encoded (`member` names its type, e.g. cached features as `npz`)."""
        self._append(key, member, data, meta, float(meta.get("seconds", 0.0)))

    def _append(self, key: str, member: str, data: bytes, meta: dict, seconds: float) -> None:
        self._buffer.append((key, member, data, json.dumps(meta, sort_keys=True).encode()))
        self.clips += 1
        self.seconds += seconds
        if len(self._buffer) >= self.clips_per_shard:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        rel = shard_name(self.split, self._index)
        write_shard(self.root / rel, self._buffer)
        self.shards.append(rel)
        self._buffer = []
        self._index += 1

    def summary(self) -> dict:
        return {"shards": list(self.shards), "clips": self.clips, "seconds": round(self.seconds, 3)}


def split_of(relative_path: str, seed: int = 0, valid_fraction: float = 0.05, test_fraction: float = 0.05) -> str:
    """The split of one source piece or file: a uniform draw from a SHA-256 of (seed, path), not from file order."""
    digest = hashlib.sha256(f"{seed}\0{relative_path}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < valid_fraction:
        return "valid"
    if u < valid_fraction + test_fraction:
        return "test"
    return "train"


def shard_name(split: str, index: int) -> str:
    return f"{split}/shard-{index:06d}.tar"


def write_shard(path: Path, samples: list[tuple]) -> None:
    """Write `(key, flac, json)` (or `(key, member, payload, json)`) samples as one tar, atomically and reproducibly."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        sink = wds.TarWriter(f, mtime=0.0, user="melody", group="melody")
        for sample in samples:  # (key, flac, json), or (key, member, payload, json)
            key, member, data, meta = sample if len(sample) == 4 else (sample[0], "flac", *sample[1:])
            sink.write({"__key__": key, member: data, "json": meta})
        sink.close()


def shards_digest(root: str | Path, splits: dict[str, dict]) -> str | None:
    """SHA-256 over every shard's bytes, split by split in manifest order: which corpus this is, wherever it lives
    (shards are byte-reproducible, so two builds from the same inputs and code share it, and a corpus built by other
    code does not). None when a shard is remote (a URL) or missing."""
    digest = hashlib.sha256()
    for split in SPLITS:
        for path in expand_shards(Path(root), splits.get(split, {}).get("shards", [])):
            if not isinstance(path, Path) or not path.is_file():
                return None
            digest.update(f"{split}/{path.name}\0".encode())
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def write_manifest(root: Path, splits: dict[str, dict], **info) -> Path:
    """The manifest, with the shards' `digest` (`shards_digest`) so that reports can name the corpus they read."""
    manifest = {"format": FORMAT, "version": FORMAT_VERSION, **info, "digest": shards_digest(root, splits), "splits": splits}
    return write_json_atomic(Path(root) / MANIFEST, manifest)


def read_manifest(root: str | Path) -> dict:
    root = Path(root)
    if not root.is_dir():
        raise MelodyError(f"{root}: no such corpus folder; build one with `melody data synth` or `melody data ingest`")
    manifest = read_json(root / MANIFEST, "corpus manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise MelodyError(f"{root / MANIFEST}: not a melody corpus manifest; rebuild the corpus")
    if manifest.get("version") != FORMAT_VERSION:
        raise MelodyError(
            f"{root / MANIFEST}: corpus format version {manifest.get('version')} is not supported "
            f"(this melody reads version {FORMAT_VERSION}); rebuild the corpus"
        )
    return manifest


def is_url(entry: str) -> bool:
    """A shard entry WebDataset opens itself (`pipe:CMD`, `http://…`, `s3://…` via a user's handler, `file:…`)."""
    return entry.startswith("pipe:") or bool(re.match(r"^[a-z][a-z0-9+.-]*:", entry)) and not re.match(r"^[A-Za-z]:[\\/]", entry)


def expand_shards(root: Path, entries: list[str]) -> list[Path | str]:
    """Manifest entries → shards: brace patterns expanded; local entries are paths under `root`, URLs stay strings."""
    from braceexpand import braceexpand

    return [one if is_url(one) else root / one for entry in entries for one in braceexpand(entry)]


def relocate_manifest(src: str | Path, out: str | Path, template: str) -> Path:
    """A manifest at `out` for corpus `src`'s shards where they now live: each entry becomes
    `template` with `{shard}` replaced by the shard's path in `src` (e.g. `pipe:aws s3 cp s3://b/c/{shard} -`).
    Clip counts, hours and the rest are kept, so `out` is the same corpus, read from elsewhere."""
    if "{shard}" not in template:
        raise MelodyError(f"the URL template {template!r} has no {{shard}} to put each shard's path in, "
                          "e.g. 'pipe:curl -s https://host/corpus/{shard}'")
    manifest = read_manifest(src)
    if Path(out).resolve() == Path(src).resolve():
        raise MelodyError(f"{out}: is the source corpus; write the relocated manifest to another folder")
    for info in manifest["splits"].values():
        info["shards"] = [template.replace("{shard}", str(entry)) for entry in info["shards"]]
    Path(out).mkdir(parents=True, exist_ok=True)
    return write_json_atomic(Path(out) / MANIFEST, manifest)


def shard_paths(root: str | Path, split: str | None = None) -> list[Path | str]:
    """The shards of one split (or of every split), in manifest order: local `Path`s, or URL strings."""
    root = Path(root)
    manifest = read_manifest(root)
    names = [split] if split else [s for s in SPLITS if s in manifest["splits"]]
    paths: list[Path | str] = []
    for name in names:
        if name not in manifest["splits"]:
            raise MelodyError(f"{root}: the corpus has no '{name}' split; it has {', '.join(manifest['splits'])}")
        paths += expand_shards(root, manifest["splits"][name]["shards"])
    missing = [p for p in paths if isinstance(p, Path) and not p.is_file()]
    if missing:
        raise MelodyError(f"{missing[0]}: shard listed in the manifest is missing; rebuild the corpus")
    return paths


def decode_sample(sample: dict) -> dict:
    """A raw WebDataset sample (`__key__`, `flac`, `json` bytes) → audio `(channels, samples)` + meta."""
    try:
        meta = json.loads(sample["json"])
        audio, rate = decode_audio_bytes(sample["flac"])
    except KeyError as err:
        raise MelodyError(f"shard sample {sample.get('__key__')!r} lacks its {err.args[0]} member; rebuild the shard") from None
    except json.JSONDecodeError:
        raise MelodyError(f"shard sample {sample.get('__key__')!r} has corrupt metadata; rebuild the shard") from None
    return {"key": sample["__key__"], "audio": audio, "sample_rate": rate, "meta": meta}


def iter_samples(root: str | Path, split: str | None = None) -> Iterator[dict]:
    """Every clip of a corpus in manifest order: dicts with `key`, `audio`, `sample_rate`, `meta`."""
    for path in shard_paths(root, split):
        yield from iter_shard(path)


def iter_shard(path: Path | str) -> Iterator[dict]:
    with shard_errors(path):
        for sample in wds.tarfile_to_samples()([{"url": str(path)}]):
            yield decode_sample(sample)


@contextmanager
def shard_errors(url: Path | str | None = None):
    """Reading shard `url` (None: whichever shard of a pipeline failed, as WebDataset names it): a corrupt or
    truncated tar, or a `pipe:` command that failed, → one line naming the shard."""
    try:
        yield
    except (OSError, EOFError, ValueError, tarfile.TarError) as err:
        reason = err.args[0] if err.args and isinstance(err.args[0], str) else type(err).__name__
        if url is None:  # WebDataset puts the URL last in a stream's error, or after " @ " in a tar's
            named = [a for a in err.args[1:] if isinstance(a, str)]
            url = named[-1] if named else reason.split(" @ ")[-1] if " @ " in reason else "a shard"
        if isinstance(url, str) and is_url(url):
            raise MelodyError(f"{url}: the shard could not be read ({reason.split(' @ ')[0][-160:]}); check the URL or "
                              "command in the corpus manifest") from None
        raise MelodyError(f"{url}: corrupt or truncated shard ({reason.split(' @ ')[0]}); rebuild the corpus") from None


def read_tar_members(path: Path) -> list[str]:
    """Member names of a shard, for checks and tests."""
    with tarfile.open(path) as tar:
        return tar.getnames()


__all__ = [
    "FORMAT", "FORMAT_VERSION", "MANIFEST", "SPLITS", "ShardWriter", "decode_sample", "iter_samples",
    "expand_shards", "is_url", "iter_shard", "read_manifest", "relocate_manifest", "read_tar_members", "safe_key", "shard_name", "shard_paths", "split_of",
    "write_manifest", "write_shard",
]
