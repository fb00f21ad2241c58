"""`melody data ingest`: a folder of the user's own recordings → the corpus shard format.

MeLoDy trains every stage on 10 s clips of 24 kHz music with a text caption (paper notes, "Data":
257 k hours of music, captions expanded from tags). This module turns a user's folder of audio
files plus captions into that form, written as the shards of `melody.data.shards`.

What it does, per source file (processed in sorted order of the path relative to `src`):
- decode + mix down + resample (soxr) with `melody.audio.load_audio`; a file that is unreadable,
  truncated, empty, silent or shorter than `min_clip_seconds` is skipped and its reason reported;
  the run never aborts for one bad file. "Truncated" is what the decoder can tell: a cut FLAC fails
  to decode, a cut MP3 decodes to less than its header promises; a cut WAV or Ogg file looks like a
  shorter file and is ingested as what decodes;
- cut into non-overlapping `clip_seconds` clips from the start; a tail of at least
  `min_clip_seconds` is kept at its own (shorter) length, never padded with invented silence; a
  shorter tail is dropped; a clip whose peak is under -60 dBFS is skipped and counted;
- loudness-normalise each clip to `normalize_lufs` (BS.1770, peak kept under 0.99); per clip rather
  than per file, so every training example sits at the same level (quiet intros are lifted);
- write it as `<safe_key(path without suffix)>-c000`, `-c001`, ... with metadata `caption`,
  `source: "ingest"`, `real_recording: true`, `piece` and `file` (the relative path), `offset`
  (seconds into the file) and `attributes` (the caption file's extra fields). Two files whose keys
  would collide (`a.wav` and `a.flac`, `a b.wav` and `a_b.wav`) get a hash of their path appended.

Captions come from a JSONL file (`{"file": "rel/path.wav", "caption": "...", ...}`, "path" accepted
for "file", other keys become attributes), a CSV/TSV (a header naming `file` or `path` and `caption`;
other columns become attributes) or, for files the captions file does not list (or with no captions
file), a `.txt` beside the audio file with the same stem. A file with no caption at all is still
ingested, with `caption: ""`, and listed as uncaptioned in the report: the text-free stages (VAE,
semantic tokenizer) train on it, MuLan leaves it out of its loss (`has_caption`), and the semantic LM and the
DPD tell it its audio's MuLan tokens only (`audio_or_caption`).
Captions that name files not found in `src` are reported, not fatal. Hidden files and folders
(names starting with ".", e.g. macOS `._x.wav`) are ignored; files with a known audio suffix that
the decoder does not read (m4a, aac, opus, wma, ...) are reported as unsupported.

Splits are per source file, so one recording never feeds two splits: a file's split is a pure
function of a SHA-256 hash of its relative path and the seed (`split_of`), not of file order or of
the other files, so adding files never moves existing ones. With few files the valid or test split
may be empty; the report warns.

Resume design (re-running after Ctrl-C or a kill gives byte-identical shards and the same manifest):
- Everything is a deterministic function of the inputs: files are processed in sorted order, each
  split's clips fill its shards in that order (`clips_per_shard` each, the last one shorter), and
  shards are written by `ShardWriter` atomically with fixed tar mtimes. A shard's content therefore
  depends only on which clips precede it in its split.
- `out/ingest_state.jsonl` is an append-only log. Line 1 is a fingerprint of the inputs (every
  parameter that changes output bytes, each file's relative path, size and mtime, and the resolved
  captions). After each shard is renamed into place, one line is appended (and fsynced) naming the
  shard, its byte size, the split's cursor after it (`end`: [index of the file within its split,
  clips of that file already written]) and the records (clip counts, skip reasons) of the files it
  completed. A last line marks the run complete.
- On a re-run the log is read up to the first torn or invalid line; a shard line counts only if its
  file exists with the recorded size and its index follows the previous one of its split. Each
  split resumes from its last valid cursor: earlier files are not decoded again, the file at the
  cursor is decoded again and its first `end[1]` clips are not re-added. A crash between a shard's
  rename and its log line just rewrites the same bytes. A different fingerprint (inputs or
  parameters changed) restarts from scratch. A completed run re-run with the same inputs decodes
  nothing and rewrites the same manifest.
- The manifest is removed when a run starts over and written only at the end; stale shards of this
  format (`<split>/shard-NNNNNN.tar` beyond the final lists) and leftover temp files are removed.

`workers > 1` decodes, resamples and normalises files in a process pool; results are consumed in
file order (a bounded window of futures), so the output is identical to `workers=1`. FLAC
encoding and tar writing stay in the main process (`ShardWriter`).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import posixpath
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from melody.audio import READ_SUFFIXES, SAMPLE_RATE, audio_info, is_silent, load_audio, loudness_normalize
from melody.data.shards import MANIFEST, SPLITS, ShardWriter, safe_key, shard_name, split_of, write_manifest
from melody.errors import MelodyError
from melody.parallel import ordered_map
from melody.io import read_json, write_json_atomic, write_text_atomic

STATE = "ingest_state.jsonl"
REPORT = "ingest_report.json"
STATE_VERSION = 1
UNSUPPORTED_SUFFIXES = (".m4a", ".aac", ".mp4", ".opus", ".wma", ".webm", ".ape", ".alac", ".amr", ".mka", ".wv", ".mid", ".midi")
CAPTION_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv"}
TRUNCATION_TOLERANCE = (0.01, 0.1)  # (fraction of the header's length, seconds): shortfall allowed before "truncated"
_SHARD_RE = re.compile(r"^shard-\d{6}\.tar$")


# --------------------------------------------------------------------------------------------
# Small pure helpers


def segment(audio: np.ndarray, sample_rate: int, clip_seconds: float, min_clip_seconds: float) -> list[tuple[int, np.ndarray]]:
    """Non-overlapping clips of `(channels, samples)` audio as `(offset in samples, clip)`.

    Full clips are `round(clip_seconds * sample_rate)` samples; a tail of at least
    `min_clip_seconds` is kept at its own length, a shorter one is dropped.
    """
    size = int(round(clip_seconds * sample_rate))
    min_size = int(round(min_clip_seconds * sample_rate))
    total = audio.shape[-1]
    return [(start, audio[:, start:start + size]) for start in range(0, total, size) if min(size, total - start) >= min_size]


def read_captions(path: str | Path, src: str | Path | None = None) -> dict[str, dict]:
    """A captions file (JSONL or CSV/TSV) → `{relative path: {"caption": str, "attributes": dict}}`.

    Paths are relative to `src` (absolute paths under `src` are made relative); a later entry for
    the same file replaces an earlier one. Raises `MelodyError` for a missing or malformed file.
    """
    path = Path(path)
    kind = CAPTION_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise MelodyError(f"{path}: captions must be a .jsonl or .csv file (got '{path.suffix}'); or put a .txt beside each audio file")
    if not path.is_file():
        raise MelodyError(f"{path}: captions file not found; check the path")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise MelodyError(f"{path}: captions file is not UTF-8 text; save it as UTF-8") from None
    except OSError as err:
        raise MelodyError(f"{path}: cannot read the captions file ({err.strerror}); check its permissions") from None
    rows = _jsonl_rows(path, text) if kind == "jsonl" else _csv_rows(path, text, "\t" if kind == "tsv" else ",")
    captions: dict[str, dict] = {}
    for where, file, caption, attributes in rows:
        if not isinstance(file, str) or not file.strip():
            raise MelodyError(f"{path}:{where}: the 'file' entry is missing or empty; name the audio file relative to the source folder")
        if caption is None:
            caption = ""
        if not isinstance(caption, str):
            raise MelodyError(f"{path}:{where}: the caption must be a string; quote it")
        captions[_relative(file, src)] = {"caption": caption.strip(), "attributes": attributes}
    return captions


def _jsonl_rows(path: Path, text: str) -> Iterator[tuple[str, object, object, dict]]:
    if text.lstrip().startswith("["):  # a .json file holding one list of objects
        try:
            items = list(enumerate(json.loads(text), 1))
        except json.JSONDecodeError as err:
            raise MelodyError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}); fix the file") from None
    else:
        items = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    items.append((number, json.loads(line)))
                except json.JSONDecodeError as err:
                    raise MelodyError(f"{path}:{number}: not a JSON object ({err.msg}); write one {{\"file\": ..., \"caption\": ...}} per line") from None
    for number, item in items:
        if not isinstance(item, dict) or "caption" not in item:
            raise MelodyError(f"{path}:{number}: not an object with a 'caption' key; write one {{\"file\": ..., \"caption\": ...}} per line")
        item = dict(item)
        file, alias, caption = item.pop("file", None), item.pop("path", None), item.pop("caption")
        yield str(number), file if file is not None else alias, caption, item


def _csv_rows(path: Path, text: str, delimiter: str) -> Iterator[tuple[str, object, object, dict]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        raise MelodyError(f"{path}: the captions file is empty; give a header row with 'file' and 'caption' columns")
    names = [h.strip() for h in header]
    lowered = [n.lower() for n in names]
    file_col = next((lowered.index(n) for n in ("file", "path") if n in lowered), None)
    if file_col is None or "caption" not in lowered:
        raise MelodyError(f"{path}: the header ({', '.join(names)}) needs a 'file' (or 'path') and a 'caption' column; add them")
    caption_col = lowered.index("caption")
    try:
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            row = row + [""] * (len(names) - len(row))
            attributes = {n: row[i] for i, n in enumerate(names) if i not in (file_col, caption_col) and n and row[i].strip()}
            yield f"{reader.line_num}", row[file_col], row[caption_col], attributes
    except csv.Error as err:
        raise MelodyError(f"{path}:{reader.line_num}: malformed CSV ({err}); fix the quoting") from None


def _relative(name: str, src: str | Path | None) -> str:
    """A caption's file name as a normalised posix path relative to `src`."""
    name = name.strip().replace("\\", "/")
    if src is not None and PurePosixPath(name).is_absolute():
        try:
            name = Path(name).resolve().relative_to(Path(src).resolve()).as_posix()
        except ValueError:
            pass
    return posixpath.normpath(name)


# --------------------------------------------------------------------------------------------
# Planning: which files, which split, which key, which caption


@dataclass(frozen=True)
class SourceFile:
    """One audio file of `src`, planned: where it goes and what it is called."""

    rel: str  # path relative to src, posix
    path: str
    split: str
    index: int  # position among its split's files (sorted order)
    key: str  # clip keys are key-c000, key-c001, ...
    caption: str
    attributes: dict


@dataclass
class _Plan:
    files: list[SourceFile]
    skipped: list[dict]  # known before decoding: unsupported formats, unreadable .txt captions
    unmatched_captions: list[str]
    per_split: dict[str, int]


def _scan(src: Path, out: Path) -> tuple[list[tuple[str, Path]], list[tuple[str, Path]]]:
    """Audio and unsupported files under `src`, sorted by relative path; hidden names and `out` skipped."""
    audio, unsupported = [], []
    out = out.resolve()
    for root, dirs, names in os.walk(src):
        root_path = Path(root)
        dirs[:] = [d for d in dirs if not d.startswith(".") and (root_path / d).resolve() != out]
        for name in names:
            if name.startswith("."):
                continue
            path = root_path / name
            suffix = path.suffix.lower()
            bucket = audio if suffix in READ_SUFFIXES else unsupported if suffix in UNSUPPORTED_SUFFIXES else None
            if bucket is not None and path.is_file():
                bucket.append((path.relative_to(src).as_posix(), path))
    return sorted(audio), sorted(unsupported)


def _plan(src: Path, out: Path, captions: Path | None, seed: int, valid_fraction: float, test_fraction: float) -> _Plan:
    listed = read_captions(captions, src) if captions is not None else {}
    audio, unsupported = _scan(src, out)
    if not audio:
        found = f" (only {len(unsupported)} unsupported: {unsupported[0][0]}, ...)" if unsupported else ""
        raise MelodyError(f"{src}: no audio files found{found}; give a folder of {', '.join(s[1:] for s in READ_SUFFIXES)} files")
    skipped = [{"file": rel, "reason": f"unsupported format '{p.suffix}'; convert it to wav or flac"} for rel, p in unsupported]
    bases = {rel: safe_key(PurePosixPath(rel).with_suffix("").as_posix()) for rel, _ in audio}
    taken = Counter(bases.values())
    files: list[SourceFile] = []
    per_split = dict.fromkeys(SPLITS, 0)
    for rel, path in audio:
        entry = listed.get(rel)
        if entry is None:
            try:
                entry = _sidecar_caption(path)
            except MelodyError as err:
                skipped.append({"file": rel, "reason": str(err)})
                continue
        key = bases[rel] if taken[bases[rel]] == 1 else f"{bases[rel]}-{hashlib.sha256(rel.encode()).hexdigest()[:8]}"
        split = split_of(rel, seed, valid_fraction, test_fraction)
        files.append(SourceFile(rel, str(path), split, per_split[split], key, entry["caption"], entry["attributes"]))
        per_split[split] += 1
    known = {rel for rel, _ in audio} | {rel for rel, _ in unsupported}
    unmatched = sorted(rel for rel in listed if rel not in known)
    return _Plan(files, sorted(skipped, key=lambda s: s["file"]), unmatched, per_split)


def _sidecar_caption(path: Path) -> dict:
    txt = path.with_suffix(".txt")
    if not txt.is_file():
        return {"caption": "", "attributes": {}}
    try:
        return {"caption": txt.read_text(encoding="utf-8-sig").strip(), "attributes": {}}
    except UnicodeDecodeError:
        raise MelodyError(f"caption file {txt.name} is not UTF-8 text; save it as UTF-8") from None
    except OSError as err:
        raise MelodyError(f"cannot read caption file {txt.name} ({err.strerror})") from None


# --------------------------------------------------------------------------------------------
# Per-file work (runs in worker processes when workers > 1)


@dataclass(frozen=True)
class _Job:
    path: str
    sample_rate: int
    channels: int
    clip_seconds: float
    min_clip_seconds: float
    normalize_lufs: float | None


@dataclass
class _Prepared:
    clips: list[tuple[int, np.ndarray]]  # (offset in samples, (channels, samples) float32), silent ones removed
    silent: int = 0  # silent segments skipped
    tail_dropped: bool = False
    reason: str | None = None  # why the file gave no clips


def _prepare(job: _Job) -> _Prepared:
    """Decode, check, cut and normalise one file; problems come back as a reason, never raised."""
    path = Path(job.path)
    try:
        header = audio_info(path)
        wav = load_audio(path, job.sample_rate, job.channels, min_seconds=job.min_clip_seconds)
    except MelodyError as err:
        return _Prepared([], reason=_strip_path(str(err), path))
    except Exception as err:  # a decoder or resampler failure on one user file must not end the run
        return _Prepared([], reason=f"could not process ({type(err).__name__}: {str(err)[:160]})")
    seconds = wav.shape[-1] / job.sample_rate
    fraction, floor = TRUNCATION_TOLERANCE
    if header.seconds - seconds > max(fraction * header.seconds, floor):
        return _Prepared([], reason=f"truncated: the header promises {header.seconds:.2f} s but only {seconds:.2f} s decode; re-export or re-copy it")
    pieces = segment(wav, job.sample_rate, job.clip_seconds, job.min_clip_seconds)
    tail_dropped = sum(clip.shape[-1] for _, clip in pieces) < wav.shape[-1]
    clips, silent = [], 0
    for offset, clip in pieces:
        if is_silent(clip):
            silent += 1
            continue
        if job.normalize_lufs is not None:
            clip = loudness_normalize(clip, job.sample_rate, job.normalize_lufs)
        clips.append((offset, np.ascontiguousarray(clip, dtype=np.float32)))
    reason = None
    if not clips:
        reason = f"no usable clip: every {job.clip_seconds:g} s segment is silent or shorter than {job.min_clip_seconds:g} s"
    return _Prepared(clips, silent, tail_dropped, reason)


def _strip_path(message: str, path: Path) -> str:
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message


# --------------------------------------------------------------------------------------------
# The resume log


@dataclass
class _State:
    shards: dict[str, list[str]]  # per split: completed shards, in order
    cursor: dict[str, tuple[int, int]]  # per split: (file index within the split, clips of that file written)
    records: dict[str, dict]  # rel → record of a completed file (clips, samples, silent, tail_dropped, reason)
    lines: list[str]  # the valid log lines, header first
    complete: bool = False

    @property
    def shard_count(self) -> int:
        return sum(len(v) for v in self.shards.values())


def _load_state(out: Path, fingerprint: str, files: list[SourceFile]) -> _State:
    """The valid prefix of `out/ingest_state.jsonl` for these inputs (an empty state if none)."""
    header = json.dumps({"ingest_state": STATE_VERSION, "fingerprint": fingerprint})
    fresh = _State({s: [] for s in SPLITS}, {s: (0, 0) for s in SPLITS}, {}, [header])
    try:
        lines = (out / STATE).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return fresh
    if not lines or lines[0] != header:
        return fresh  # no log, or another run's inputs or parameters: start over
    state = _State({s: [] for s in SPLITS}, {s: (0, 0) for s in SPLITS}, {}, [header])
    broken: set[str] = set()  # splits whose chain of shards broke: their later lines are ignored
    for line in lines[1:]:
        try:
            entry = json.loads(line)
            if entry.get("complete"):
                if not broken:
                    state.records.update(entry["files"])
                    state.lines.append(line)
                    state.complete = True
                break
            split, name, end, records = entry["split"], entry["shard"], tuple(entry["end"]), entry["files"]
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            break  # a torn last line: the run was killed while appending
        if split not in SPLITS or split in broken:
            broken.add(split)
            continue
        shard = out / name
        if name != shard_name(split, len(state.shards[split])) or not shard.is_file() or shard.stat().st_size != entry.get("bytes"):
            broken.add(split)  # a shard deleted or replaced since: redo this split from its previous shard
            continue
        state.shards[split].append(name)
        state.cursor[split] = end
        state.records.update(records)
        state.lines.append(line)
    # Every file before a split's cursor (every file, once complete) must have its record.
    done = [f for f in files if state.complete or f.index < state.cursor[f.split][0]]
    if any(f.rel not in state.records for f in done):
        return fresh
    return state


def _append(log, entry: dict) -> None:
    log.write(json.dumps(entry, sort_keys=True) + "\n")
    log.flush()
    os.fsync(log.fileno())


def _remove_temp_files(out: Path) -> None:
    """Temp files `atomic_path` left behind when the process was killed (SIGKILL skips its cleanup)."""
    for folder in [out, *(out / s for s in SPLITS)]:
        if folder.is_dir():
            for path in folder.glob(".*.part*"):
                if path.is_file() and (path.name.startswith(".shard-") or path.name.startswith((f".{STATE}.", f".{MANIFEST}.", f".{REPORT}."))):
                    path.unlink(missing_ok=True)


def _remove_stale_shards(out: Path, splits: dict[str, dict]) -> None:
    """Shards of an earlier, different run that the final lists do not name."""
    for split, info in splits.items():
        keep = {Path(rel).name for rel in info["shards"]}
        folder = out / split
        if folder.is_dir():
            for path in folder.iterdir():
                if _SHARD_RE.match(path.name) and path.name not in keep:
                    path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# The report


@dataclass
class IngestReport:
    """What `ingest` did; also written to `out/ingest_report.json`."""

    src: str
    out: str
    files: int  # audio files found (ingested + skipped)
    ingested: int  # files that gave at least one clip
    clips: int
    hours: float
    splits: dict[str, dict]  # split → {"shards", "files", "clips", "seconds"}
    skipped: list[dict]  # [{"file", "reason"}], sorted by file
    uncaptioned: list[str]  # ingested files whose caption is ""
    unmatched_captions: list[str]  # captions naming files not found in src
    silent_segments: int  # silent clips left out
    dropped_tails: int  # files whose last partial clip was shorter than min_clip_seconds
    reused_shards: int  # shards kept from an earlier (interrupted or identical) run
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """A few lines for the terminal; the full lists are in the report file."""
        per_split = ", ".join(f"{s} {self.splits[s]['clips']}" for s in SPLITS)
        lines = [f"ingested {self.ingested} of {self.files} files: {self.clips} clips, {self.hours:.2f} h ({per_split}) in {self.out}"]
        if self.reused_shards:
            lines.append(f"resumed: kept {self.reused_shards} shards written by an earlier run")
        if self.skipped:
            shown = "; ".join(f"{s['file']}: {s['reason']}" for s in self.skipped[:3])
            more = f" (+{len(self.skipped) - 3} more)" if len(self.skipped) > 3 else ""
            lines.append(f"skipped {len(self.skipped)} files: {shown}{more}")
        if self.uncaptioned:
            lines.append(f"{len(self.uncaptioned)} files have no caption: ingested with caption \"\" (MuLan leaves them out; the other stages use them)")
        if self.unmatched_captions:
            lines.append(f"{len(self.unmatched_captions)} captions name files not in {self.src}, e.g. {self.unmatched_captions[0]}")
        if self.silent_segments:
            lines.append(f"{self.silent_segments} silent segments left out")
        lines += [f"warning: {w}" for w in self.warnings]
        lines.append(f"details: {Path(self.out) / REPORT}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The run


def ingest(
    src: Path,
    out: Path,
    captions: Path | None = None,
    *,
    clip_seconds: float = 10.0,
    sample_rate: int = SAMPLE_RATE,
    channels: int = 1,
    min_clip_seconds: float | None = None,
    valid_fraction: float = 0.05,
    test_fraction: float = 0.05,
    seed: int = 0,
    normalize_lufs: float | None = -20.0,
    clips_per_shard: int = 256,
    workers: int = 1,
    progress: bool = True,
) -> IngestReport:
    """Ingest the audio files under `src` (captioned by `captions` or .txt files) into a corpus at `out`.

    Resumable: re-run with the same arguments after an interrupt. `min_clip_seconds` defaults to
    half a clip. Bad files are skipped and reported, never fatal; a missing `src` or an unreadable
    captions file raises `MelodyError`. See the module docstring for the choices and the resume design.
    """
    src, out = Path(src), Path(out)
    captions = Path(captions) if captions is not None else None
    min_clip_seconds = clip_seconds / 2 if min_clip_seconds is None else min_clip_seconds
    _check_arguments(src, out, clip_seconds, sample_rate, channels, min_clip_seconds, valid_fraction, test_fraction, clips_per_shard, workers)
    plan = _plan(src, out, captions, seed, valid_fraction, test_fraction)
    params = {
        "clip_seconds": clip_seconds, "sample_rate": sample_rate, "channels": channels, "min_clip_seconds": min_clip_seconds,
        "normalize_lufs": normalize_lufs, "seed": seed, "valid_fraction": valid_fraction, "test_fraction": test_fraction,
        "clips_per_shard": clips_per_shard,
    }
    state = _load_state(out, _fingerprint(plan, params), plan.files)
    reused = state.shard_count
    if not state.complete:
        out.mkdir(parents=True, exist_ok=True)
        (out / MANIFEST).unlink(missing_ok=True)  # a half-built corpus is never described by a manifest
        _process(plan, out, state, params, workers, progress)
    return _finish(plan, src, out, state, params, reused)


def _check_arguments(src: Path, out: Path, clip_seconds: float, sample_rate: int, channels: int, min_clip_seconds: float,
                     valid_fraction: float, test_fraction: float, clips_per_shard: int, workers: int) -> None:
    if not src.exists():
        raise MelodyError(f"{src}: no such folder; give the folder that holds your audio files")
    if not src.is_dir():
        raise MelodyError(f"{src}: not a folder; give the folder that holds your audio files (it is searched recursively)")
    if out.exists() and not out.is_dir():
        raise MelodyError(f"{out}: exists and is not a folder; choose an output folder")
    if (out / MANIFEST).is_file():
        manifest = read_json(out / MANIFEST, "corpus manifest")
        if not isinstance(manifest, dict) or manifest.get("source") != "ingest":
            raise MelodyError(f"{out}: already holds a corpus not made by ingest; choose another output folder")
    if not clip_seconds > 0:
        raise MelodyError(f"clip_seconds={clip_seconds:g} must be positive; MeLoDy uses 10 s clips")
    if not 0 < min_clip_seconds <= clip_seconds:
        raise MelodyError(f"min_clip_seconds={min_clip_seconds:g} must be in (0, clip_seconds={clip_seconds:g}]")
    if sample_rate <= 0:
        raise MelodyError(f"sample_rate={sample_rate} must be positive; MeLoDy uses 24000")
    if channels not in (1, 2):
        raise MelodyError(f"channels={channels} is not supported; use 1 (mono) or 2 (stereo)")
    if not (0 <= valid_fraction < 1 and 0 <= test_fraction < 1 and valid_fraction + test_fraction < 1):
        raise MelodyError(f"valid_fraction={valid_fraction:g} and test_fraction={test_fraction:g} must be in [0, 1) and sum below 1")
    if clips_per_shard < 1:
        raise MelodyError(f"clips_per_shard={clips_per_shard} must be at least 1")
    if workers < 1:
        raise MelodyError(f"workers={workers} must be at least 1")


def _fingerprint(plan: _Plan, params: dict) -> str:
    """A hash of everything that decides the output bytes: parameters, files (path, size, mtime), captions."""
    digest = hashlib.sha256(json.dumps({"state_version": STATE_VERSION, **params}, sort_keys=True).encode())
    for f in plan.files:
        stat = os.stat(f.path)
        digest.update(json.dumps([f.rel, stat.st_size, stat.st_mtime_ns, f.caption, f.attributes], sort_keys=True).encode())
    return digest.hexdigest()


def _process(plan: _Plan, out: Path, state: _State, params: dict, workers: int, progress: bool) -> None:
    """Decode the files not yet done and write their clips, logging each shard as it lands."""
    from tqdm import tqdm

    write_text_atomic(out / STATE, "".join(line + "\n" for line in state.lines))  # drop a torn or invalid tail
    _remove_temp_files(out)
    rate = params["sample_rate"]
    todo = [f for f in plan.files if f.index >= state.cursor[f.split][0]]
    writers = {s: ShardWriter(out, s, rate, params["clips_per_shard"], start_index=len(state.shards[s])) for s in SPLITS}
    pending: dict[str, dict] = {s: {} for s in SPLITS}  # records of finished files whose split has not flushed since
    job = {k: params[k] for k in ("sample_rate", "channels", "clip_seconds", "min_clip_seconds", "normalize_lufs")}
    results = ordered_map(_prepare, (_Job(f.path, **job) for f in todo), workers)
    bar = tqdm(total=len(plan.files), initial=len(plan.files) - len(todo), unit="file", desc="ingest", disable=not progress, dynamic_ncols=True)
    with open(out / STATE, "a", encoding="utf-8") as log, bar, contextlib.closing(results):

        def log_shard(split: str, end: tuple[int, int]) -> None:
            name = writers[split].shards[-1]
            _append(log, {"split": split, "shard": name, "bytes": (out / name).stat().st_size, "end": list(end), "files": pending[split]})
            state.shards[split].append(name)
            state.records.update(pending[split])
            pending[split] = {}

        for f, prepared in zip(todo, results):
            writer = writers[f.split]
            written = state.cursor[f.split][1] if f.index == state.cursor[f.split][0] else 0
            for j, (offset, clip) in enumerate(prepared.clips):
                if j < written:
                    continue  # already in a shard of the interrupted run
                meta = {"caption": f.caption, "source": "ingest", "real_recording": True, "piece": f.rel, "file": f.rel,
                        "offset": round(offset / rate, 6), "attributes": f.attributes}
                before = len(writer.shards)
                writer.add(f"{f.key}-c{j:03d}", clip, meta)
                if len(writer.shards) > before:
                    log_shard(f.split, (f.index, j + 1))
            pending[f.split][f.rel] = {
                "split": f.split, "index": f.index, "clips": len(prepared.clips),
                "samples": sum(clip.shape[-1] for _, clip in prepared.clips), "silent": prepared.silent,
                "tail_dropped": prepared.tail_dropped, "reason": prepared.reason,
            }
            bar.update(1)
        for split, writer in writers.items():
            before = len(writer.shards)
            writer.flush()
            if len(writer.shards) > before:
                log_shard(split, (plan.per_split[split], 0))
        rest = {rel: r for s in SPLITS for rel, r in pending[s].items()}
        _append(log, {"complete": True, "files": rest})
        state.records.update(rest)
        state.complete = True


def _finish(plan: _Plan, src: Path, out: Path, state: _State, params: dict, reused: int) -> IngestReport:
    """Write the manifest and the report from the file records; remove stale shards."""
    rate = params["sample_rate"]
    records = state.records
    splits = {}
    for s in SPLITS:
        mine = [records[f.rel] for f in plan.files if f.split == s]
        splits[s] = {"shards": list(state.shards[s]), "files": sum(r["clips"] > 0 for r in mine),
                     "clips": sum(r["clips"] for r in mine), "seconds": round(sum(r["samples"] for r in mine) / rate, 3)}
    samples = sum(records[f.rel]["samples"] for f in plan.files)
    info = {**{k: v for k, v in params.items() if k != "clips_per_shard"}, "source": "ingest",
            "files": sum(s["files"] for s in splits.values()), "clips": sum(s["clips"] for s in splits.values()),
            "hours": round(samples / rate / 3600, 4)}
    write_manifest(out, splits, **info)
    _remove_stale_shards(out, splits)
    failed = [{"file": f.rel, "reason": records[f.rel]["reason"]} for f in plan.files if records[f.rel]["reason"]]
    warnings = [f"the {s} split is empty (too few files for a fraction of {params[s + '_fraction']:g}); add files or try another seed"
                for s in ("valid", "test") if params[s + "_fraction"] > 0 and not splits[s]["clips"]]
    report = IngestReport(
        src=str(src), out=str(out), files=len(plan.files) + len(plan.skipped), ingested=info["files"], clips=info["clips"],
        hours=info["hours"], splits=splits, skipped=sorted(plan.skipped + failed, key=lambda s: s["file"]),
        uncaptioned=[f.rel for f in plan.files if not f.caption and records[f.rel]["clips"]],
        unmatched_captions=plan.unmatched_captions,
        silent_segments=sum(records[f.rel]["silent"] for f in plan.files),
        dropped_tails=sum(bool(records[f.rel]["tail_dropped"]) for f in plan.files),
        reused_shards=reused, warnings=warnings,
    )
    write_json_atomic(out / REPORT, report.to_dict())
    return report
