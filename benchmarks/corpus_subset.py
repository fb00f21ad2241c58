"""A small copy of a corpus: the first N clips of each split, byte for byte, in `--shards` shards per split (so
that several loader workers have work), with a manifest that says so. For checks that must travel light (the GPU machine takes 64 MiB with the code).

    python benchmarks/corpus_subset.py /tmp/corpus .device/corpus --train 40 --valid 4 --test 0 --shards 4
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
from pathlib import Path

import soundfile

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from melody.data.shards import read_manifest, shard_name, shard_paths, write_manifest, write_shard  # noqa: E402


def first_clips(root: Path, split: str, count: int) -> list[tuple]:
    """(key, member, payload, json) of the split's first `count` clips, read straight from its tars."""
    clips: dict[str, dict[str, bytes]] = {}
    for path in shard_paths(root, split):
        with tarfile.open(path) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                if key not in clips and len(clips) == count:
                    return _samples(clips)
                clips.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return _samples(clips)


def _samples(clips: dict[str, dict[str, bytes]]) -> list[tuple]:
    out = []
    for key, files in clips.items():
        member = next(ext for ext in files if ext != "json")
        out.append((key, member, files[member], files["json"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=48)
    parser.add_argument("--valid", type=int, default=4)
    parser.add_argument("--test", type=int, default=0)
    parser.add_argument("--shards", type=int, default=1, help="shards per split")
    args = parser.parse_args()
    manifest = read_manifest(args.src)
    splits = {}
    for split, count in (("train", args.train), ("valid", args.valid), ("test", args.test)):
        samples = first_clips(args.src, split, count) if count else []
        parts = [samples[i::args.shards] for i in range(args.shards)]
        shards = [shard_name(split, i) for i, part in enumerate(parts) if part]
        for name, part in zip(shards, parts):
            write_shard(args.out / name, part)
        seconds = sum(soundfile.info(io.BytesIO(payload)).duration for _, _, payload, _ in samples)
        splits[split] = {"shards": shards, "clips": len(samples), "seconds": round(seconds, 3)}
    info = {k: v for k, v in manifest.items() if k not in ("format", "version", "splits")}
    write_manifest(args.out, splits, **info, subset_of=str(args.src))
    print(f"{args.out}: " + ", ".join(f"{s} {v['clips']} clips" for s, v in splits.items()))


if __name__ == "__main__":
    main()
