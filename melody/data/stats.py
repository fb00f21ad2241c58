"""`melody data stats ROOT`: what a corpus holds, counted from its metadata alone (issue 8; not in the MeLoDy paper).

Per split and over the splits read: clips, hours, the clip-length distribution, caption lengths in words, the
tempo in 10-BPM bins, histograms of the attributes the metadata states (source, style, key, mode, key + mode,
instrument, instrument family) and, per attribute, how many clips state none. One picture (`plot_stats`) shows
them in small panels; `Stats.to_dict()` is the JSON.

No audio is decoded. `iter_metadata` reads each shard's tar headers and only the `.json` members: a clip's length
is the `seconds` that `ShardWriter` stores in every sample's metadata; only where that is missing or invalid (a
shard written by other means) is the FLAC member read and its header parsed (`soundfile.info`, frames / rate), which
still decodes nothing.

Choices where the brief is silent:
- the caption is `meta["caption"]`, the one the training loader reads (the synth corpus' alternative `captions`
  are not counted); caption lengths count words split on white space, over the clips whose caption is not empty;
- the tempo is `loader.clip_bpm`, the tempo the training stages read (a tempo written as text, e.g. from an
  ingest CSV, is not one, so it counts as missing here too);
- instrument families are those of `eval.attributes.FAMILY_OF_PROGRAM` (General MIDI, program // 8, with its
  changes) over *all* of a clip's `gm_programs`, each family counted once per clip; the attribute classifiers
  use only the lead's;
- histograms list values commonest first (ties by name); numeric histograms have half-open bins
  `[edges[i], edges[i + 1])` of a fixed width (1 s, 1 word, 10 BPM), widened (x2, x2.5, x2 ...) until at most
  `MAX_BINS` bins are left.
"""

from __future__ import annotations

import io
import json
import math
import statistics
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import webdataset as wds

from melody.data.loader import clip_bpm
from melody.data.shards import SPLITS, read_manifest, shard_errors, shard_paths
from melody.errors import MelodyError
from melody.eval.attributes import FAMILY_OF_PROGRAM
from melody.io import write_json_atomic

MAX_BINS = 40
ATTRIBUTES = ("caption", "source", "style", "tempo_bpm", "key", "mode", "instruments", "instrument_family")  # counted missing
HISTOGRAMS = ("source", "style", "key", "mode", "key_mode", "instrument", "instrument_family")
NONE = "(none)"  # the source of clips that state none, in `seconds_by_source`


# --- reading --------------------------------------------------------------------------------------


def iter_metadata(root: str | Path, split: str | None = None) -> Iterator[dict]:
    """Every clip's metadata in manifest order (as `shards.iter_samples`, without audio); `seconds` always set."""
    for path in shard_paths(root, split):
        yield from iter_shard_metadata(path)


def iter_shard_metadata(path: Path | str) -> Iterator[dict]:
    """The metadata of one shard's samples, reading only tar headers and `.json` members (FLAC headers where needed).
    A URL shard (`pipe:…`, `http…`) is a stream, read through; its audio is still not decoded."""
    if isinstance(path, str):
        with shard_errors(path):
            for sample in wds.tarfile_to_samples()([{"url": path}]):
                yield _metadata(sample["__key__"], sample.get("json"), lambda s=sample: s.get("flac"))
        return
    try:
        with tarfile.open(path, "r:") as tar:  # seekable: the FLAC payloads are skipped, not read
            key, members = None, {}
            for member in tar:
                if not member.isfile():
                    continue
                name = member.name.rsplit("/", 1)[-1]
                stem, _, ext = name.partition(".")  # WebDataset's key: up to the first dot
                if stem != key:
                    if key is not None:
                        yield _tar_metadata(tar, key, members)
                    key, members = stem, {}
                members[ext] = member
            tar.fileobj.seek(tar.offset)  # tarfile ends quietly at a cut header: insist on the zero end-of-archive block
            end = tar.fileobj.read(512)
            if not end or end.strip(b"\0"):
                raise EOFError("no end-of-archive block")
            if key is not None:
                yield _tar_metadata(tar, key, members)
    except (OSError, EOFError, tarfile.TarError) as err:
        reason = err.args[0] if err.args and isinstance(err.args[0], str) else type(err).__name__
        raise MelodyError(f"{path}: corrupt or truncated shard ({reason}); rebuild the corpus") from None


def _tar_metadata(tar: tarfile.TarFile, key: str, members: dict[str, tarfile.TarInfo]) -> dict:
    return _metadata(key, tar.extractfile(members["json"]).read() if "json" in members else None,
                     lambda: tar.extractfile(members["flac"]).read() if "flac" in members else None)


def _metadata(key: str, json_bytes: bytes | None, flac_bytes) -> dict:
    """A sample's metadata from its `.json` bytes; `seconds` from the FLAC header (`flac_bytes()`) where it states none."""
    if json_bytes is None:
        raise MelodyError(f"shard sample {key!r} lacks its json member; rebuild the shard")
    try:
        meta = json.loads(json_bytes)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise MelodyError(f"shard sample {key!r} has corrupt metadata; rebuild the shard") from None
    if not isinstance(meta, dict):
        raise MelodyError(f"shard sample {key!r} has corrupt metadata; rebuild the shard")
    if not _positive(meta.get("seconds")):
        flac = flac_bytes()
        if flac is None:
            raise MelodyError(f"shard sample {key!r} lacks its flac member; rebuild the shard")
        try:
            info = sf.info(io.BytesIO(flac))  # the header only
        except (sf.LibsndfileError, RuntimeError):
            raise MelodyError(f"shard sample {key!r} has a corrupt flac member; rebuild the shard") from None
        meta = {**meta, "seconds": info.frames / info.samplerate}
    return {**meta, "key": key}


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


# --- statistics -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Distribution:
    """Some numbers: how many, min / median / mean / max (None when there are none) and a histogram."""

    count: int
    min: float | None
    median: float | None
    mean: float | None
    max: float | None
    edges: tuple[float, ...]  # len(counts) + 1; bin i is [edges[i], edges[i + 1])
    counts: tuple[int, ...]


def describe(values: Iterable[float], width: float, max_bins: int = MAX_BINS) -> Distribution:
    """Summarise `values` with a histogram of bins `width` wide (widened until at most `max_bins`), aligned to 0."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        return Distribution(0, None, None, None, None, (), ())
    factors = (2.0, 2.5, 2.0)  # 1 → 2 → 5 → 10 → 20 ...
    i = 0
    while np.floor(v.max() / width) - np.floor(v.min() / width) + 1 > max_bins:
        width *= factors[i % 3]
        i += 1
    first, last = int(np.floor(v.min() / width)), int(np.floor(v.max() / width))
    counts = np.bincount((np.floor(v / width) - first).astype(np.int64), minlength=last - first + 1)
    edges = tuple(round(k * width, 6) for k in range(first, last + 2))
    return Distribution(int(v.size), _r(v.min()), _r(statistics.median(v.tolist())), _r(math.fsum(v.tolist()) / v.size),
                        _r(v.max()), edges, tuple(int(c) for c in counts))


def _r(x: float) -> float:
    return round(float(x), 6)


@dataclass(frozen=True)
class SplitStats:
    """The statistics of a set of clips (a split, or all splits read)."""

    clips: int
    seconds: float
    clip_seconds: Distribution  # every clip, 1-s bins
    caption_words: Distribution  # the clips with a caption, 1-word bins
    tempo_bpm: Distribution  # the clips that state a tempo, 10-BPM bins
    histograms: dict[str, dict[str, int]]  # `HISTOGRAMS` name → value → clips, commonest first
    missing: dict[str, int]  # `ATTRIBUTES` name → clips that state none
    seconds_by_source: dict[str, float]  # source (or `NONE`) → seconds, most first

    @property
    def hours(self) -> float:
        return self.seconds / 3600


@dataclass
class _Tally:
    """Running counts of clips; `finish` turns them into `SplitStats`."""

    seconds: list[float] = field(default_factory=list)
    words: list[int] = field(default_factory=list)
    bpm: list[float] = field(default_factory=list)
    counts: dict[str, Counter] = field(default_factory=lambda: {name: Counter() for name in HISTOGRAMS})
    missing: Counter = field(default_factory=Counter)
    by_source: Counter = field(default_factory=Counter)

    def add(self, meta: Mapping) -> None:
        attributes = meta.get("attributes")
        attributes = attributes if isinstance(attributes, Mapping) else {}
        seconds = float(meta["seconds"])
        self.seconds.append(seconds)
        caption = meta.get("caption")
        if isinstance(caption, str) and caption.strip():
            self.words.append(len(caption.split()))
        else:
            self.missing["caption"] += 1
        bpm = clip_bpm({"attributes": attributes})
        if bpm > 0:
            self.bpm.append(bpm)
        else:
            self.missing["tempo_bpm"] += 1
        source = _text(meta.get("source"))
        self.by_source[source or NONE] += seconds
        labels = {"source": source, "style": _text(attributes.get("style")), "key": _text(attributes.get("key")),
                  "mode": _text(attributes.get("mode"))}
        for name, value in labels.items():
            if value is None:
                self.missing[name] += 1
            else:
                self.counts[name][value] += 1
        if labels["key"] and labels["mode"]:
            self.counts["key_mode"][f"{labels['key']} {labels['mode']}"] += 1
        instruments = attributes.get("instruments")
        names = {n for n in instruments if _text(n)} if isinstance(instruments, list) else set()
        self.counts["instrument"].update(names)
        self.missing["instruments"] += int(not names)
        programs = attributes.get("gm_programs")
        programs = programs if isinstance(programs, list) else []
        families = {FAMILY_OF_PROGRAM.get(p) for p in programs if isinstance(p, int) and not isinstance(p, bool)} - {None}
        self.counts["instrument_family"].update(families)
        self.missing["instrument_family"] += int(not families)

    def finish(self) -> SplitStats:
        return SplitStats(
            clips=len(self.seconds),
            seconds=round(math.fsum(self.seconds), 6),
            clip_seconds=describe(self.seconds, 1.0),
            caption_words=describe(self.words, 1.0),
            tempo_bpm=describe(self.bpm, 10.0),
            histograms={name: _ranked(self.counts[name]) for name in HISTOGRAMS},
            missing={name: self.missing[name] for name in ATTRIBUTES},
            seconds_by_source={k: round(v, 6) for k, v in _ranked(self.by_source).items()},
        )


def _text(x) -> str | None:
    return x.strip() if isinstance(x, str) and x.strip() else None


def _ranked(counter: Mapping) -> dict:
    return dict(sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))


def split_stats(metas: Iterable[Mapping]) -> SplitStats:
    """The statistics of some clips' metadata (each with `seconds`, as `iter_metadata` yields)."""
    tally = _Tally()
    for meta in metas:
        tally.add(meta)
    return tally.finish()


@dataclass(frozen=True)
class Stats:
    """A corpus' statistics: per split read, and over them all (`total`)."""

    root: str
    splits: dict[str, SplitStats]
    total: SplitStats
    notes: tuple[str, ...] = ()  # disagreements with the manifest

    def to_dict(self) -> dict:
        def one(s: SplitStats) -> dict:
            return {"clips": s.clips, "seconds": s.seconds, "hours": round(s.hours, 6), **asdict(s)}

        return {"root": self.root, "splits": {k: one(v) for k, v in self.splits.items()}, "total": one(self.total),
                "notes": list(self.notes)}


def corpus_stats(root: str | Path, split: str | None = None) -> Stats:
    """Read a corpus' metadata (no audio) and count it, per split (or only `split`) and over the splits read."""
    manifest = read_manifest(root)
    names = [split] if split else [s for s in SPLITS if s in manifest["splits"]]
    shard_paths(root, split)  # an unknown split or a missing shard: one line, before reading anything
    tallies, total = {name: _Tally() for name in names}, _Tally()
    for name in names:
        for meta in iter_metadata(root, name):
            tallies[name].add(meta)
            total.add(meta)
    splits = {name: t.finish() for name, t in tallies.items()}
    notes = tuple(
        f"{name}: the manifest lists {manifest['splits'][name].get('clips')} clips, its shards hold {s.clips}"
        for name, s in splits.items() if manifest["splits"][name].get("clips") not in (None, s.clips)
    )
    return Stats(str(root), splits, total.finish(), notes)


# --- report ---------------------------------------------------------------------------------------


def summary(stats: Stats, top: int = 8) -> str:
    """A compact plain-text table: one row per split (and all), then the commonest values and the missing counts."""

    def span(d: Distribution, fmt: str, mean: bool = False) -> str:
        if not d.count:
            return "-"
        values = (d.min, d.median, d.mean, d.max) if mean else (d.min, d.median, d.max)
        return "/".join(format(x, fmt) for x in values)

    rows = [("split", "clips", "hours", "clip s min/med/max", "caption words min/med/mean/max", "BPM min/med/max")]
    for name, s in [*stats.splits.items(), *([("all", stats.total)] if len(stats.splits) > 1 else [])]:
        rows.append((name, str(s.clips), f"{s.hours:.2f}", span(s.clip_seconds, ".1f"), span(s.caption_words, ".4g", mean=True),
                     span(s.tempo_bpm, ".0f")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    t = stats.total
    for name in ("source", "style", "instrument_family", "mode"):
        counts = t.histograms[name]
        shown = ", ".join(f"{k} {v}" for k, v in list(counts.items())[:top]) + (", ..." if len(counts) > top else "")
        lines.append(f"{name.replace('_', ' ')} ({len(counts)}): {shown or '-'}")
    missing = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in t.missing.items() if v)
    lines.append(f"missing: {missing or 'none'}")
    lines += [f"note: {n}" for n in stats.notes]
    return "\n".join(lines)


def write_stats(stats: Stats, out_dir: str | Path) -> list[Path]:
    """Write `stats.json` and `stats.png` to `out_dir` (atomically); returns their paths."""
    out_dir = Path(out_dir)
    return [write_json_atomic(out_dir / "stats.json", stats.to_dict()), plot_stats(stats, out_dir / "stats.png")]


_PITCH = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


def _key_order(key: str) -> tuple[int, str]:
    """Keys in pitch-class order from C (C, C#, Db, D, ...); a key that is not a note name goes last."""
    if not key or key[0].upper() not in _PITCH or any(c not in "#b" for c in key[1:]):
        return (99, key)
    return ((_PITCH[key[0].upper()] + key.count("#") - key.count("b")) % 12, key)


def plot_stats(stats: Stats, path: str | Path, top: int = 16) -> Path:
    """One PNG of small panels over all splits read: clip and caption lengths, tempo, top styles, instrument families,
    key x mode, hours per split by source, and clips missing each attribute."""
    from matplotlib.figure import Figure

    from melody.data.plots import save_figure

    t = stats.total
    fig = Figure(figsize=(15, 7.2), layout="constrained")
    axes = fig.subplots(2, 4)
    fig.suptitle(f"{stats.root}: {t.clips} clips, {t.hours:.2f} h ({', '.join(stats.splits)})", fontsize=11)

    def histogram(ax, d: Distribution, title: str, unit: str) -> None:
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(unit, fontsize=8)
        if not d.count:
            _empty(ax)
            return
        ax.bar(d.edges[:-1], d.counts, width=np.diff(d.edges), align="edge", color="tab:blue", edgecolor="white", linewidth=0.5)
        ax.set_ylabel("clips", fontsize=8)
        ax.tick_params(labelsize=7)

    d = t.clip_seconds
    histogram(axes[0, 0], d, "clip length" + (f" (all {d.min:g} s)" if d.count and d.min == d.max else ""), "seconds")
    histogram(axes[0, 1], t.caption_words, f"caption length (median {t.caption_words.median or 0:g} words)", "words")
    histogram(axes[0, 2], t.tempo_bpm, f"tempo ({t.tempo_bpm.count} clips state one)", "BPM")
    _bars(axes[0, 3], t.histograms["style"], f"styles ({len(t.histograms['style'])}, top {top})", top)
    _bars(axes[1, 0], t.histograms["instrument_family"], "instrument families (clips with one)", top)
    _key_mode(axes[1, 1], t)
    _split_hours(axes[1, 2], stats)
    _bars(axes[1, 3], {k.replace("_", " "): v for k, v in t.missing.items()}, f"clips missing an attribute (of {t.clips})",
          len(t.missing), keep_order=True)
    return save_figure(fig, path, dpi=80)


def _empty(ax) -> None:
    ax.text(0.5, 0.5, "none stated", ha="center", va="center", transform=ax.transAxes, fontsize=9, color="gray")
    ax.set_xticks([])
    ax.set_yticks([])


def _bars(ax, counts: Mapping[str, int], title: str, top: int, keep_order: bool = False) -> None:
    """Horizontal bars of the `top` commonest values, the commonest at the top; the rest as one 'others' bar."""
    ax.set_title(title, fontsize=9)
    if not counts:
        _empty(ax)
        return
    items = list(counts.items()) if keep_order else list(_ranked(counts).items())
    if len(items) > top:
        items = [*items[: top - 1], (f"{len(items) - top + 1} others", sum(v for _, v in items[top - 1:]))]
    labels, values = zip(*items)
    y = np.arange(len(items))
    ax.barh(y, values, color="tab:blue")
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.tick_params(axis="x", labelsize=7)
    for yi, v in zip(y, values):
        ax.text(v, yi, f" {v}", va="center", fontsize=6.5)
    ax.set_xlim(0, max(values) * 1.18 or 1)


def _key_mode(ax, t: SplitStats) -> None:
    """A key x mode grid of clip counts: modes commonest first, keys in pitch-class order with enharmonic spellings
    in one column (C#/Db; the JSON keeps them apart); a key that is not a note name gets its own column, last."""
    ax.set_title("key x mode (clips)", fontsize=9)
    columns: dict[tuple, list[str]] = {}
    for key in sorted(t.histograms["key"], key=_key_order):
        pitch, _ = _key_order(key)
        columns.setdefault((pitch,) if pitch < 12 else (pitch, key), []).append(key)
    modes = list(t.histograms["mode"])
    if not columns or not modes:
        _empty(ax)
        return
    pairs = t.histograms["key_mode"]
    grid = np.array([[sum(pairs.get(f"{k} {m}", 0) for k in keys) for keys in columns.values()] for m in modes])
    ax.imshow(grid, aspect="auto", cmap="Blues", vmin=0)
    labels = ["/".join(keys) for keys in columns.values()]
    ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=90 if len(labels) > 8 else 0)
    ax.set_yticks(range(len(modes)), modes, fontsize=7)
    if grid.size <= 200:
        for (r, c), n in np.ndenumerate(grid):
            if n:
                ax.text(c, r, str(n), ha="center", va="center", fontsize=6,
                        color="white" if n > 0.6 * grid.max() else "black")


def _split_hours(ax, stats: Stats) -> None:
    """Hours per split, stacked by source."""
    ax.set_title("hours per split, by source", fontsize=9)
    sources = list(stats.total.seconds_by_source)
    names = list(stats.splits)
    left = np.zeros(len(names))
    for i, source in enumerate(sources):
        hours = np.array([stats.splits[n].seconds_by_source.get(source, 0.0) / 3600 for n in names])
        ax.barh(names, hours, left=left, label=source, color=f"C{i % 10}")
        left += hours
    for y, total in enumerate(left):
        ax.text(total, y, f" {total:.2f} h", va="center", fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, max(left.max(), 1e-9) * 1.25)
    ax.set_xlabel("hours", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="lower right", frameon=False)


__all__ = ["ATTRIBUTES", "HISTOGRAMS", "Distribution", "SplitStats", "Stats", "corpus_stats", "describe", "iter_metadata",
           "iter_shard_metadata", "plot_stats", "split_stats", "summary", "write_stats"]
