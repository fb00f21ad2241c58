"""Steps against quality and time (MeLoDy Table 2's sweep on our data): `melody eval music` once per DPD step
count, on the same held-out clips, captions and seeds, so only the number of sampling steps changes. Per count:
FAD on musicnn's and on MuLan's embedding (their real-vs-real floors beside), MuLan cycle consistency, tag
adherence, and the DPD's and the whole pipeline's seconds per clip. Writes
`benchmarks/results/steps_curve.json` and `steps_curve.png` (FAD and MCC against steps; time against steps).

    .venv/bin/python benchmarks/steps_curve.py --data data/corpus --limit 32 --steps 1,2,5,10,20 --threads 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_device_args, load_average, machine, pyplot  # noqa: E402
from melody.ears.musicnn import MusicnnTagger  # noqa: E402
from melody.eval.music import evaluate_music  # noqa: E402
from melody.io import write_json_atomic  # noqa: E402
from melody.pipeline import MeLoDy  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def row(steps: int, report) -> dict:
    fad = report.fad
    return {
        "steps": steps,
        "fad_musicnn": fad["musicnn"].fad.generated_vs_real, "fad_musicnn_floor": fad["musicnn"].fad.real_vs_real,
        "fad_mulan": fad["mulan"].fad.generated_vs_real, "fad_mulan_floor": fad["mulan"].fad.real_vs_real,
        "mcc": report.mcc.generated, "mcc_real": report.mcc.real, "mcc_other_caption": report.mcc.mismatched,
        "tag_adherence": report.tag_adherence.generated, "tag_adherence_real": report.tag_adherence.real,
        "dpd_forward_passes": report.forward_passes["dpd"],
        "dpd_seconds_per_clip": report.seconds_per_clip["dpd"],
        "seconds_per_clip": sum(report.seconds_per_clip.values()),
    }


def plot(rows: list[dict], clips: int, seconds: float, path: Path) -> None:
    plt = pyplot()
    fig, (quality, time) = plt.subplots(1, 2, figsize=(10, 3.8))
    steps = [r["steps"] for r in rows]
    quality.plot(steps, [r["fad_musicnn"] for r in rows], "o-", label="FAD, musicnn embedding")
    quality.axhline(rows[0]["fad_musicnn_floor"], ls=":", c="C0", label="real vs real (musicnn)")
    quality.set_xscale("log")
    quality.set_xticks(steps, [str(s) for s in steps])
    quality.set_xlabel("DPD sampling steps")
    quality.set_ylabel("FAD ↓")
    mcc = quality.twinx()
    mcc.plot(steps, [r["mcc"] for r in rows], "s--", c="C1", label="MuLan cycle consistency")
    mcc.set_ylabel("MCC ↑", color="C1")
    lines = quality.get_legend_handles_labels()
    more = mcc.get_legend_handles_labels()
    quality.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7)
    quality.set_title(f"quality against steps ({clips} held-out captions, {seconds:g} s)", fontsize=9)
    time.plot(steps, [r["dpd_seconds_per_clip"] for r in rows], "o-", label="DPD")
    time.plot(steps, [r["seconds_per_clip"] for r in rows], "s-", label="whole pipeline")
    time.axhline(seconds, ls=":", c="gray", label="real time")
    time.set_xscale("log")
    time.set_xticks(steps, [str(s) for s in steps])
    time.set_xlabel("DPD sampling steps")
    time.set_ylabel(f"seconds per {seconds:g} s clip")
    time.legend(fontsize=7)
    time.set_title("time against steps", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device_args(parser)
    parser.add_argument("--bundle", type=Path, default=Path(__file__).resolve().parents[1] / "melody" / "bundled")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--steps", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 5, 10, 20])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = load_average()
    model = MeLoDy.from_pretrained(args.bundle)  # CPU: the bundle loads on the CPU
    tagger = MusicnnTagger.load()
    rows = []
    for steps in sorted(args.steps):
        report, _ = evaluate_music(model, args.data, "test", args.seconds, args.limit, steps, tagger=tagger, attribute_clips=0)
        rows.append(row(steps, report))
        print(rows[-1], flush=True)
        RESULTS.mkdir(exist_ok=True)  # after every count: a long sweep that stops keeps what it measured
        write_json_atomic(RESULTS / "steps_curve.json", {"bundle": str(args.bundle), "clips": report.clips,
                                                        "seconds": args.seconds, "rows": rows,
                                                        **machine(args.device, args.threads, load)})
    plot(rows, report.clips, args.seconds, RESULTS / "steps_curve.png")
    print(f"wrote {RESULTS / 'steps_curve.json'}, {RESULTS / 'steps_curve.png'}")


if __name__ == "__main__":
    main()
