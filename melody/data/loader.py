"""One loader for every training stage: random fixed-length crops streamed from corpus shards.

Built on WebDataset's pipeline pieces: shards are split across distributed ranks and then
across DataLoader workers, so with many shards and many processes no clip is read twice in an
epoch. Shard order and the sample shuffle buffer are seeded by `(seed, epoch)` (and the reader),
every crop position by `(seed, epoch, clip key)`, so a run is reproducible. With fewer shards
than ranks × workers some readers get none: write more, smaller shards (`clips_per_shard`).

Resuming mid-epoch (`set_position(epoch, batches_done, batch_size)`) skips what was already
served without decoding it. A DataLoader serves the batches of its W workers round-robin, so
after `n` batches the next one comes from reader `n mod W`: on resume worker `w` plays reader
`(w + n) mod W` and drops the batches that reader had served, and the stream continues exactly
(until the first reader runs dry near the end of an epoch, where a resume restarts the order).

A clip shorter than the crop is zero-padded on the right; `length` says how many samples are real.
"""

from __future__ import annotations

import hashlib
import math
import random
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from melody.audio import resample, to_channels
from melody.data.shards import decode_sample, shard_errors, shard_paths
from melody.errors import MelodyError


MAX_CLIP_SECONDS = 60.0  # the longest "whole clip" read from a corpus whose manifest names no clip length


@dataclass(frozen=True)
class Crop:
    """Where a crop of `crop` samples starts in a clip of `total` samples (pure, seeded)."""

    start: int
    length: int


def choose_crop(total: int, crop: int, rng: np.random.Generator, random_offset: bool = True) -> Crop:
    if total <= crop:
        return Crop(0, total)
    start = int(rng.integers(0, total - crop + 1)) if random_offset else 0
    return Crop(start, crop)


def crop_audio(audio: np.ndarray, crop: int, where: Crop) -> np.ndarray:
    """`(channels, samples)` → `(channels, crop)`, zero-padded on the right when the clip is short."""
    out = np.zeros((audio.shape[0], crop), dtype=np.float32)
    out[:, : where.length] = audio[:, where.start : where.start + where.length]
    return out


class ShardDataset(IterableDataset):
    """Streams `{"audio": (channels, crop) float32, "length", "caption", "key", "meta"}` from shards."""

    def __init__(
        self,
        shards: Sequence[str | Path],
        crop_seconds: float,
        sample_rate: int = 24_000,
        channels: int = 1,
        *,
        shuffle: int = 256,
        seed: int = 0,
        random_offset: bool = True,
    ) -> None:
        super().__init__()
        if not shards:
            raise MelodyError("no shards to read; build a corpus with `melody data synth` or `melody data ingest`")
        if crop_seconds <= 0:
            raise MelodyError(f"crop length must be positive, got {crop_seconds} s")
        self.urls = [str(s) for s in shards]
        self.crop = int(round(crop_seconds * sample_rate))
        self.sample_rate = sample_rate
        self.channels = channels
        self.shuffle = shuffle
        self.seed = seed
        self.random_offset = random_offset
        self.by_rank = True  # each distributed rank reads its own shards; off: every rank reads them all
        self.collate = collate  # how `make_loader` batches this dataset's samples
        self.epoch = 0
        self.batches_done = 0
        self.batch_size = 1

    @classmethod
    def from_corpus(cls, root: str | Path, split: str = "train", **kwargs) -> ShardDataset:
        return cls(shard_paths(root, split), **kwargs)

    @classmethod
    def whole_clips(cls, root: str | Path, split: str, sample_rate: int = 24_000, channels: int = 1) -> ShardDataset:
        """Every clip of `split` whole, in corpus order (no shuffle, crops from 0 as long as the manifest's
        `clip_seconds`, or `MAX_CLIP_SECONDS`), all of it on every distributed rank: what evaluations and k-means fits read."""
        from melody.data.shards import read_manifest

        longest = float(read_manifest(root).get("clip_seconds") or MAX_CLIP_SECONDS)
        dataset = cls.from_corpus(root, split, crop_seconds=longest, sample_rate=sample_rate, channels=channels,
                                  shuffle=0, random_offset=False)
        dataset.by_rank = False  # an evaluation or a k-means fit wants the whole split on whichever rank runs it
        return dataset

    def set_epoch(self, epoch: int) -> None:
        self.set_position(epoch, 0, self.batch_size)

    def set_position(self, epoch: int, batches_done: int, batch_size: int) -> None:
        """Start the next iteration in `epoch` after `batches_done` batches of `batch_size` (resume)."""
        self.epoch, self.batches_done, self.batch_size = epoch, batches_done, batch_size

    def __iter__(self) -> Iterator[dict]:
        worker = get_worker_info()
        workers = worker.num_workers if worker else 1
        reader = ((worker.id if worker else 0) + self.batches_done) % workers
        skip = max(0, -(-(self.batches_done - reader) // workers)) * self.batch_size
        dist = self.by_rank and torch.distributed.is_available() and torch.distributed.is_initialized()
        rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if dist else (0, 1)
        urls = list(self.urls)
        if self.shuffle:
            random.Random(mix_seeds(self.seed, self.epoch)).shuffle(urls)
        urls = urls[rank::world][reader::workers]
        stages = [wds.SimpleShardList(urls), wds.tarfile_to_samples()]
        if self.shuffle:
            stages.append(wds.shuffle(self.shuffle, initial=min(self.shuffle, 64), seed=mix_seeds(self.seed, self.epoch, rank, reader)))
        with shard_errors():
            for i, raw in enumerate(wds.DataPipeline(*stages)):
                if i >= skip:
                    yield self._prepare(self.decode(raw))

    def decode(self, raw: dict) -> dict:
        """A raw WebDataset sample → what `_prepare` crops (audio here; cached features in `FeatureDataset`)."""
        return decode_sample(raw)

    def _prepare(self, sample: dict) -> dict:
        audio = resample(to_channels(sample["audio"], self.channels), sample["sample_rate"], self.sample_rate)
        rng = np.random.default_rng([self.seed, self.epoch, key_seed(sample["key"])])
        where = choose_crop(audio.shape[-1], self.crop, rng, self.random_offset)
        return {
            "audio": torch.from_numpy(crop_audio(audio, self.crop, where)),
            "length": where.length,
            "start": where.start / self.sample_rate,  # seconds into the clip (`clip_beat_phase`)
            "caption": sample["meta"].get("caption", ""),
            "key": sample["key"],
            "meta": sample["meta"],
        }


def collate(batch: list[dict]) -> dict:
    """Stack audio `(b, channels, crop)`, lengths and crop starts; keep captions, keys and metadata as lists."""
    return {
        "audio": torch.stack([b["audio"] for b in batch]),
        "length": torch.tensor([b["length"] for b in batch]),
        "start": torch.tensor([b["start"] for b in batch], dtype=torch.float64),
        "caption": [b["caption"] for b in batch],
        "key": [b["key"] for b in batch],
        "meta": [b["meta"] for b in batch],
    }


def make_loader(dataset: ShardDataset, batch_size: int, num_workers: int = 0, drop_last: bool = True) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=dataset.collate,
        drop_last=drop_last,
        persistent_workers=False,
        # Its own generator: a DataLoader otherwise draws its base seed from the global RNG, which
        # would make the global random stream depend on how often loaders were created (resume).
        generator=torch.Generator().manual_seed(dataset.seed),
        worker_init_fn=_ignore_interrupts,
    )


def _ignore_interrupts(worker_id: int) -> None:
    # Ctrl-C reaches every process of the terminal's group, and a scheduler's SIGTERM (or `pkill -f`)
    # may too: the trainer stops cleanly after its step and shuts its workers down, and a worker
    # that died of the signal first would turn that into a crash.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def key_seed(key: str) -> int:
    """A clip's own seed (its crop offsets): from its key, not from where the clip sits in a shard."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")


def mix_seeds(*parts: int) -> int:
    """One 32-bit seed from several integers (numpy's SeedSequence hashing): `(seed, epoch, ...)`."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def clip_bpm(meta: dict) -> float:
    """The tempo a clip's metadata states (`attributes.tempo_bpm`), NaN where it states none."""
    bpm = (meta.get("attributes") or {}).get("tempo_bpm")
    return float(bpm) if isinstance(bpm, (int, float)) and not isinstance(bpm, bool) else math.nan


def clip_beat_phase(meta: dict, start: float = 0.0) -> float:
    """The beat at a crop's first frame, `start` seconds into the clip, counted from its piece's first beat: (the
    clip's `offset` in its piece + start) · bpm / 60, NaN where the clip states no tempo. A synthesised piece starts
    on a downbeat at a steady tempo, so this is where its beats fall; a recording's offset is no beat, so its phase
    is arbitrary, but the pace is right."""
    offset = meta.get("offset", 0.0)
    offset = float(offset) if isinstance(offset, (int, float)) and not isinstance(offset, bool) else 0.0
    return (offset + start) * clip_bpm(meta) / 60.0
