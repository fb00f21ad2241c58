"""`melody data synth`: build the built-in captioned music corpus, offline, deterministically.

MeLoDy trains on 257 k hours of licensed music (paper notes, "Sizes"); nothing like it can ship
with an open project, so melody makes its own corpus on the user's machine from three sources:

- `procedural` (`arrange.py`): arrangements in a dozen styles, rendered with FluidSynth;
  attributes are known exactly, so captions are exact.
- `score` (`scores.py`): real scores from music21's bundled corpus (chorales, folk tunes,
  Renaissance polyphony, classical), given General MIDI instruments and rendered the same way.
- `recording` (`recordings.py`): real recordings shipped in Debian packages (`drascula-music`,
  `asc-music`), cut into clips and captioned only with what is measured from the audio
  (tempo, key, mode, loudness). Marked `real_recording: true`; they give the text-free stages
  (VAE-GAN, semantic tokenizer) real timbres, not only a soundfont's. The two packages hold 34
  distinct tracks, 64 minutes (drascula's language folders are symlinks to one set of files).

The build is a pure function of (hours, seed, shares, clip length, sample rate): jobs are
planned up front, run on a process pool in order (`imap`, so results arrive in plan order
whatever the worker timing), and written to shards in that order. Splits are by source piece
(`split_of`), so no piece straddles train and test. Levels are kept as rendered or recorded,
not loudness-normalised: the captions' dynamics words ("soft", "loud") describe the audio as it
is (velocity-driven render levels; measured LUFS for recordings). Training stages normalise
on the fly if they want a fixed level.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from melody.audio import is_silent
from melody.config import DataConfig
from melody.data.shards import SPLITS, ShardWriter, safe_key, split_of, write_manifest
from melody.errors import MelodyError
from melody.parallel import ordered_map

SOURCES = ("procedural", "score", "recording")


@dataclass
class Clip:
    """One finished clip, ready for a shard."""

    key: str
    audio: np.ndarray  # (1, samples) float32 at the corpus rate
    meta: dict


@dataclass
class BuildReport:
    out: Path
    seconds: dict[str, float] = field(default_factory=dict)  # per source
    clips: dict[str, int] = field(default_factory=dict)  # per split
    skipped: list[dict] = field(default_factory=list)
    wall_seconds: float = 0.0

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())


def cut_clips(audio: np.ndarray, sample_rate: int, clip_seconds: float) -> list[tuple[float, np.ndarray]]:
    """Non-overlapping clips of exactly `clip_seconds` from a mono signal; the short tail is dropped."""
    n = int(round(clip_seconds * sample_rate))
    return [(i * clip_seconds, audio[i * n : (i + 1) * n]) for i in range(len(audio) // n)]


def plan_seconds(cfg: DataConfig) -> dict[str, float]:
    shares = {"procedural": cfg.procedural_share, "score": cfg.score_share, "recording": cfg.recording_share}
    if any(v < 0 for v in shares.values()) or sum(shares.values()) <= 0:
        raise MelodyError("data shares must be non-negative and not all zero (data.procedural_share, data.score_share, data.recording_share)")
    total = sum(shares.values())
    return {k: cfg.hours * 3600.0 * v / total for k, v in shares.items()}


# --- jobs: each runs in a worker process and returns finished clips ---------------------------


def _finish(audio: np.ndarray, key: str, meta: dict, skipped: list[dict]) -> Clip | None:
    if is_silent(audio[None]):
        skipped.append({"key": key, "reason": "silent"})
        return None
    return Clip(key, audio[None].astype(np.float32), meta)


def _caption_rng(cfg: DataConfig, source: str, piece: str, index: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, SOURCES.index(source), int.from_bytes(hashlib.sha256(piece.encode()).digest()[:4], "big"), index])


def _captions(attributes: dict, rng: np.random.Generator, n: int = 3) -> list[str]:
    from melody.data.synth.captions import make_caption

    return [make_caption(attributes, rng) for _ in range(n)]


def _meta(source: str, piece: str, offset: float, attributes: dict, captions: list[str], real: bool) -> dict:
    # The first caption is the training caption; the others are paraphrases for augmentation.
    return {"caption": captions[0], "captions": captions, "source": source, "real_recording": real,
            "piece": piece, "offset": round(offset, 3), "attributes": attributes}


def _render(midi, attributes: dict, cfg: DataConfig) -> np.ndarray:
    """Render at the level the caption's dynamics word promises (soft < medium < loud)."""
    from melody.data.synth.render import DYNAMICS_RMS_DB, render_midi

    level = DYNAMICS_RMS_DB[attributes.get("dynamics") or "medium"]
    return render_midi(midi, sample_rate=cfg.sample_rate, soundfont=cfg.soundfont or None, rms_db=level)


def _procedural_job(job: tuple[DataConfig, int, str]) -> tuple[list[Clip], list[dict]]:
    from melody.data.synth.arrange import arrange

    cfg, index, style = job
    piece = f"proc-{safe_key(style)}-{index:05d}"
    arrangement = arrange(style, np.random.default_rng([cfg.seed, 0, index]), duration=cfg.piece_seconds)
    audio = _render(arrangement.midi, arrangement.attributes, cfg)
    clips, skipped = [], []
    for i, (offset, segment) in enumerate(cut_clips(audio, cfg.sample_rate, cfg.clip_seconds)):
        captions = _captions(arrangement.attributes, _caption_rng(cfg, "procedural", piece, i))
        key = f"{piece}-c{i:02d}"
        clip = _finish(segment, key, _meta("procedural", piece, offset, arrangement.attributes, captions, False), skipped)
        clips += [clip] if clip else []
    return clips, skipped


def _score_job(job: tuple[DataConfig, int, object]) -> tuple[list[Clip], list[dict]]:
    from melody.data.synth.scores import SkipReason, try_score_piece

    cfg, index, work = job
    piece = try_score_piece(work, np.random.default_rng([cfg.seed, 1, index]), max_seconds=cfg.piece_seconds + cfg.clip_seconds)
    if isinstance(piece, SkipReason):
        return [], [{"key": piece.piece_id, "reason": piece.reason}]
    audio = _render(piece.midi, piece.attributes, cfg)
    # Excerpts of one long work share its piece id (so they share a split); keys name the excerpt.
    pid = safe_key(f"score-{piece.piece_id}")
    clips, skipped = [], []
    for i, (offset, segment) in enumerate(cut_clips(audio, cfg.sample_rate, cfg.clip_seconds)):
        captions = _captions(piece.attributes, _caption_rng(cfg, "score", f"{pid}-s{piece.segment}", i))
        key = f"{pid}-s{piece.segment:02d}-c{i:02d}"
        clip = _finish(segment, key, _meta("score", pid, offset, piece.attributes, captions, False), skipped)
        clips += [clip] if clip else []
    return clips, skipped


def _recording_job(job: tuple[DataConfig, int, Path, int]) -> tuple[list[Clip], list[dict]]:
    from melody.data.synth.recordings import recording_clips

    cfg, index, path, max_clips = job
    clips, skipped, windows = [], [], []
    rng = np.random.default_rng([cfg.seed, 2, index])
    made = recording_clips(path, clip_seconds=cfg.clip_seconds, sample_rate=cfg.sample_rate, rng=rng,
                           max_clips=max_clips, skipped=windows)
    skipped += [{"key": w.piece_id, "reason": w.reason} for w in windows]
    for rc in made:
        pid = safe_key(f"rec-{rc.piece_id}")
        key = f"{pid}-t{int(round(rc.offset * 10)):05d}"
        captions = _captions(rc.attributes, _caption_rng(cfg, "recording", pid, int(round(rc.offset * 10))))
        clip = _finish(np.asarray(rc.audio, dtype=np.float32).reshape(-1), key,
                       _meta("recording", pid, rc.offset, rc.attributes, captions, True), skipped)
        clips += [clip] if clip else []
    return clips, skipped


# --- plan and run -----------------------------------------------------------------------------


def _procedural_jobs(cfg: DataConfig) -> Iterator[tuple]:
    from melody.data.synth.arrange import STYLES

    i = 0
    while True:
        yield ("procedural", _procedural_job, (cfg, i, STYLES[i % len(STYLES)]))
        i += 1


def _score_jobs(cfg: DataConfig) -> Iterator[tuple]:
    from melody.data.synth.scores import list_score_works

    for i, work in enumerate(list_score_works(cfg.seed)):
        yield ("score", _score_job, (cfg, i, work))


def allot_clips(capacities: list[int], total: int) -> list[int]:
    """Spread `total` clips over tracks holding `capacities` clips, as evenly as they allow (water-filling).

    Short tracks give all they have; the rest share what is left equally, earlier tracks taking
    the remainder one clip each. More tracks means more timbres than exhausting a few.
    """
    allot = [0] * len(capacities)
    left = min(total, sum(capacities))
    while left > 0:
        open_ = [i for i, c in enumerate(capacities) if allot[i] < c]
        share = max(1, left // len(open_))
        for i in open_:
            take = min(share, capacities[i] - allot[i], left)
            allot[i] += take
            left -= take
            if left == 0:
                break
    return allot


def _recording_jobs(cfg: DataConfig, target_seconds: float) -> Iterator[tuple]:
    from melody.audio import audio_info
    from melody.data.synth.recordings import find_recordings

    tracks = find_recordings()
    capacities = [int(audio_info(p).seconds // cfg.clip_seconds) for p in tracks]
    allot = allot_clips(capacities, int(np.ceil(target_seconds / cfg.clip_seconds)))
    for i, (path, n) in enumerate(zip(tracks, allot)):
        if n > 0:
            yield ("recording", _recording_job, (cfg, i, path, n))


def _run(job: tuple) -> tuple[str, list[Clip], list[dict]]:
    source, fn, args = job
    clips, skipped = fn(args)
    return source, clips, skipped


def iter_source(source: str, cfg: DataConfig, target_seconds: float, workers: int = 1) -> Iterator[Clip | dict]:
    """Clips of one source in plan order until `target_seconds` are made; dicts are skip records."""
    if target_seconds <= 0:
        return
    jobs = {"procedural": lambda: _procedural_jobs(cfg), "score": lambda: _score_jobs(cfg),
            "recording": lambda: _recording_jobs(cfg, target_seconds)}[source]()
    made = 0.0
    for _, clips, skipped in ordered_map(_run, jobs, workers):
        yield from skipped
        for clip in clips:
            yield clip
            made += clip.audio.shape[-1] / cfg.sample_rate
            if made >= target_seconds - 1e-6:
                return


def build_corpus(out: str | Path, cfg: DataConfig, workers: int = 2, progress: bool = True) -> BuildReport:
    """Render, caption, split and shard the built-in corpus into `out`."""
    out = Path(out)
    if cfg.hours <= 0:
        raise MelodyError(f"--hours must be positive, got {cfg.hours}")
    if cfg.clip_seconds <= 0 or cfg.piece_seconds < cfg.clip_seconds:
        raise MelodyError("clip length must be positive and no longer than data.piece_seconds")
    if (out / "manifest.json").exists() or any((out / s).exists() for s in SPLITS):
        raise MelodyError(f"{out}: already holds a corpus; choose a new --out folder (nothing was overwritten)")
    targets = plan_seconds(cfg)
    report = BuildReport(out=out)
    writers = {s: ShardWriter(out, s, cfg.sample_rate, clips_per_shard=cfg.clips_per_shard) for s in SPLITS}
    splits_seen: dict[str, str] = {}
    start = time.perf_counter()
    bar = _progress(cfg.hours * 3600.0, progress)
    try:
        for source in SOURCES:
            made = 0.0
            for item in iter_source(source, cfg, targets[source], workers):
                if isinstance(item, dict):
                    report.skipped.append({"source": source, **item})
                    continue
                piece = item.meta["piece"]
                split = splits_seen.setdefault(piece, split_of(piece, cfg.seed, cfg.valid_fraction, cfg.test_fraction))
                writers[split].add(item.key, item.audio, item.meta)
                seconds = item.audio.shape[-1] / cfg.sample_rate
                made += seconds
                bar(seconds, f"{source}: {made / 60:.1f} min")
            report.seconds[source] = round(made, 3)
    finally:
        bar(None, "")
    for writer in writers.values():
        writer.flush()
    summary = {s: w.summary() for s, w in writers.items()}
    report.clips = {s: v["clips"] for s, v in summary.items()}
    report.wall_seconds = time.perf_counter() - start
    write_manifest(
        out, summary, sample_rate=cfg.sample_rate, channels=1, clip_seconds=cfg.clip_seconds, source="synth",
        seed=cfg.seed, hours=cfg.hours, seconds_by_source=report.seconds, skipped=report.skipped,
        data_config={k: v for k, v in vars(cfg).items()},
    )
    return report


def _progress(total: float, enabled: bool):
    """A tqdm bar in seconds of audio; returns `update(seconds | None, text)` (None closes it)."""
    if not enabled:
        return lambda seconds, text: None
    from tqdm import tqdm

    bar = tqdm(total=round(total), unit="s audio", dynamic_ncols=True, smoothing=0.05)

    def update(seconds: float | None, text: str) -> None:
        if seconds is None:
            bar.close()
            return
        bar.update(seconds)
        bar.set_postfix_str(text, refresh=False)

    return update
