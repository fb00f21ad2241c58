"""benchmarks/corpus_subset.py: the first clips of each split, byte for byte, in a corpus the loader reads."""

import subprocess
import sys
import tarfile
from pathlib import Path

from test_shards import make_corpus

from melody.data.shards import iter_samples, read_manifest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "corpus_subset.py"


def members(root: Path, split: str) -> dict[str, bytes]:
    out = {}
    for path in sorted((root / split).glob("*.tar")):
        with tarfile.open(path) as tar:
            out |= {m.name: tar.extractfile(m).read() for m in tar}
    return out


def test_a_subset_holds_the_first_clips_unchanged_in_the_shards_asked(tmp_path):
    corpus = make_corpus(tmp_path / "corpus", clips=20, per_shard=3)  # 16 train clips in 6 shards, 4 valid
    out = tmp_path / "subset"
    done = subprocess.run([sys.executable, str(SCRIPT), str(corpus), str(out), "--train", "7", "--valid", "2",
                           "--test", "0", "--shards", "3"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    manifest = read_manifest(out)
    assert [manifest["splits"][s]["clips"] for s in ("train", "valid", "test")] == [7, 2, 0]
    assert len(manifest["splits"]["train"]["shards"]) == 3 and manifest["subset_of"] == str(corpus)
    keys = [s["key"] for s in iter_samples(corpus, "train")][:7]
    assert sorted(s["key"] for s in iter_samples(out, "train")) == sorted(keys)
    original, copied = members(corpus, "train"), members(out, "train")
    assert copied and all(copied[name] == original[name] for name in copied)  # byte for byte
    assert len(list(iter_samples(out, "valid"))) == 2
