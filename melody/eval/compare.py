"""Two `melody eval music` reports on the same clips, told apart clip by clip: `melody eval compare FIRST SECOND`.

Two reports' accuracies differ by a few clips more often than not, and two draws of one model do that too. Paired
on the clip, the question becomes which clips changed. For right/wrong outcomes (each attribute classifier, and
whether the tempo was heard at the asked octave) the comparison counts the clips right under only one model and
gives McNemar's exact p. For per-clip values (MCC, tag adherence, the tempo error at the nearest octave) it gives
the mean difference and its bootstrap interval (`melody.eval.stats`). FAD has no per-clip value; the table shows
both reports' FAD beside their real-vs-real floor, unpaired.

Both reports must judge the same split of the same corpus at the same length, with classifiers of the same classes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from melody.errors import MelodyError
from melody.eval.quality import TempoError, tempo_error_of
from melody.eval.stats import mcnemar_p, paired_mean_interval
from melody.io import read_json, write_json_atomic, write_text_atomic

REPORT = "music_eval.json"


@dataclass(frozen=True)
class PairedOutcome:
    """A right/wrong outcome per clip under both models."""

    name: str
    clips: int  # clips with an outcome under both
    first: float | None  # share right under the first model
    second: float | None
    only_first: int  # clips right under the first model only
    only_second: int
    p: float  # McNemar's exact two-sided p


@dataclass(frozen=True)
class PairedValue:
    """A value per clip under both models."""

    name: str
    clips: int
    first: float  # mean under the first model
    second: float
    difference: float  # mean of second − first
    interval: tuple[float, float] | None  # its 95 % bootstrap interval
    better: str  # "higher" or "lower"


@dataclass(frozen=True)
class Comparison:
    first: str  # what each report judged (its bundle)
    second: str
    split: str
    clips: int  # clips in both reports
    outcomes: list[PairedOutcome]
    values: list[PairedValue]
    fad: dict[str, dict[str, float]]  # embedding → first, second, floor (real vs real): unpaired


def read_report(path: str | Path) -> dict:
    """A `music_eval.json`, or a report folder holding one."""
    path = Path(path)
    if path.is_dir():
        path = path / REPORT
    report = read_json(path, "music eval report")
    if not isinstance(report, dict) or not isinstance(report.get("per_clip"), list):
        raise MelodyError(f"{path}: not a `melody eval music` report; give its music_eval.json or the folder holding it")
    return report


def compare_reports(first: dict, second: dict) -> Comparison:
    """Pair two reports on the clips both judged (by key)."""
    for field in ("split", "seconds", "corpus_digest"):
        if first.get(field) != second.get(field):
            raise MelodyError(f"the reports judged different {field.replace('_', ' ')}s ({first.get(field)} vs "
                              f"{second.get(field)}); compare reports made with the same --data, --split and --seconds")
    index = {clip["key"]: i for i, clip in enumerate(second["per_clip"])}
    pairs = [(i, index[clip["key"]]) for i, clip in enumerate(first["per_clip"]) if clip["key"] in index]
    if not pairs:
        raise MelodyError("the reports share no clip; compare reports of the same --data and --split")
    outcomes = [*attribute_outcomes(first, second, pairs), tempo_octave_outcome(first, second, pairs)]
    return Comparison(str(first.get("bundle")), str(second.get("bundle")), str(first.get("split")), len(pairs), outcomes,
                      per_clip_values(first, second, pairs), fad_rows(first, second))


def attribute_outcomes(first: dict, second: dict, pairs: list[tuple[int, int]]) -> list[PairedOutcome]:
    """Per attribute classifier: generated clip i is right when its prediction is the label its caption asked for."""
    a, b = (r.get("attributes", {}).get("scores", {}) for r in (first, second))
    rows = []
    for name in [n for n in a if n in b]:
        if a[name].get("classes") != b[name].get("classes"):
            raise MelodyError(f"the reports' {name} classifiers know different classes; compare reports made with "
                              "the same corpus and --attribute-clips")
        if not a[name].get("classes"):
            continue  # not measured in either
        if not (a[name].get("per_clip") and b[name].get("per_clip")):
            raise MelodyError("a report from before per-clip predictions were kept; re-run `melody eval music` for it")
        classes, x, y = set(a[name]["classes"]), a[name]["per_clip"], b[name]["per_clip"]  # (asked, real, generated)
        right = [(x[i][2] == x[i][0], y[j][2] == y[j][0]) for i, j in pairs if x[i][0] in classes]
        rows.append(paired_outcome(f"{name} accuracy", right))
    return rows


def tempo_octave_outcome(first: dict, second: dict, pairs: list[tuple[int, int]]) -> PairedOutcome:
    """Per clip whose caption states a tempo and whose tempo was heard in both: heard at the asked octave."""
    both = [(tempo_of(first["per_clip"][i]), tempo_of(second["per_clip"][j])) for i, j in pairs]
    right = [(not x.is_octave_error, not y.is_octave_error) for x, y in both if x is not None and y is not None]
    return paired_outcome("tempo at the asked octave", right)


def tempo_of(clip: dict) -> TempoError | None:
    """The generated clip's tempo against its caption's, where the caption states one and a tempo was heard."""
    asked, heard = clip.get("asked_bpm"), clip.get("bpm_generated")
    if asked is None or heard is None or not (math.isfinite(asked) and math.isfinite(heard) and asked > 0 and heard > 0):
        return None
    return tempo_error_of(heard, asked)


def paired_outcome(name: str, right: list[tuple[bool, bool]]) -> PairedOutcome:
    only_first = sum(x and not y for x, y in right)
    only_second = sum(y and not x for x, y in right)
    n = len(right)
    return PairedOutcome(name, n, sum(x for x, _ in right) / n if n else None, sum(y for _, y in right) / n if n else None,
                         only_first, only_second, mcnemar_p(only_first, only_second))


def per_clip_values(first: dict, second: dict, pairs: list[tuple[int, int]]) -> list[PairedValue]:
    def octave_error(clip: dict) -> float | None:
        tempo = tempo_of(clip)
        return None if tempo is None else abs(tempo.octave_error_bpm)

    measures = [("MCC", lambda c: c.get("mcc_generated"), "higher"),
                ("tag adherence", lambda c: c.get("tag_adherence_generated"), "higher"),
                ("tempo error at the nearest octave (BPM)", octave_error, "lower")]
    rows = []
    for name, value, better in measures:
        both = [(value(first["per_clip"][i]), value(second["per_clip"][j])) for i, j in pairs]
        both = [(x, y) for x, y in both if x is not None and y is not None]
        xs, ys = [x for x, _ in both], [y for _, y in both]
        difference, interval = paired_mean_interval(xs, ys)
        rows.append(PairedValue(name, len(both), sum(xs) / len(xs) if xs else float("nan"),
                                sum(ys) / len(ys) if ys else float("nan"), difference, interval, better))
    return rows


def fad_rows(first: dict, second: dict) -> dict[str, dict[str, float]]:
    rows = {}
    for name, a in first.get("fad", {}).items():
        b = second.get("fad", {}).get(name)
        if b:
            rows[name] = {"first": a["fad"]["generated_vs_real"], "second": b["fad"]["generated_vs_real"],
                          "floor": a["fad"]["real_vs_real"]}
    return rows


def markdown(c: Comparison) -> str:
    head = (f"# `{c.first}` (first) vs `{c.second}` (second): {c.clips} '{c.split}' clips in both\n\n"
            "Paired clip by clip. Right/wrong outcomes: McNemar's exact p over the clips right under one model only. "
            "Per-clip values: the mean difference (second − first) and its 95 % bootstrap interval. FAD: unpaired.\n\n"
            "| measure | first | second | second − first | clips | evidence |\n|---|---|---|---|---|---|\n")
    rows = []
    for o in c.outcomes:
        diff = None if o.first is None else o.second - o.first
        rows.append((o.name, _f(o.first), _f(o.second), _signed(diff), str(o.clips),
                     f"right only under first {o.only_first}, only under second {o.only_second}: p = {o.p:.2f}"))
    for v in c.values:
        span = f"[{v.interval[0]:+.3f}, {v.interval[1]:+.3f}]" if v.interval else "no interval"
        excludes = v.interval is not None and (v.interval[0] > 0 or v.interval[1] < 0)
        rows.append((f"{v.name} ({v.better} is better)", _f(v.first), _f(v.second), _signed(v.difference), str(v.clips),
                     f"95 % interval {span}" + ("; excludes 0" if excludes else "")))
    for name, f in c.fad.items():
        rows.append((f"FAD {name} (lower is better)", _f(f["first"]), _f(f["second"]), _signed(f["second"] - f["first"]),
                     "—", f"unpaired; real-vs-real floor {_f(f['floor'])}"))
    return head + "".join(f"| {' | '.join(row)} |\n" for row in rows)


def write_comparison(c: Comparison, out: str | Path) -> tuple[Path, Path]:
    """`out/compare.json` and `out/compare.md`."""
    out = Path(out)
    return write_json_atomic(out / "compare.json", asdict(c)), write_text_atomic(out / "compare.md", markdown(c))


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _signed(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.3f}"
