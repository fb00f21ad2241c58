"""The ladder picture: how much of what a caption asks for each stage keeps, from `melody eval music --source
caption|tokens|vae` reports and `token_probe.py`'s probes of the real clips' tokens and the LM's, and where measured
(`--audio-condition --mulan`) of the clips' MuLan tokens and the LM's tokens from them (`benchmarks/results/ladder/`).

    .venv/bin/python benchmarks/plot_ladder.py   # → docs/img/ladder.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import pyplot  # noqa: E402

LADDER = Path(__file__).resolve().parent / "results" / "ladder"
PICTURE = Path(__file__).resolve().parents[1] / "docs" / "img" / "ladder.png"
ATTRIBUTES = ("style", "instrument family", "tempo class")
SOURCES = (("vae", "VAE"), ("tokens", "DPD from the clip's own tokens"), ("caption", "from the caption"))


def main() -> None:
    reports = {s: json.loads((LADDER / f"music_eval_{s}.json").read_text()) for s, _ in SOURCES}
    # the newest probe run holds the caption's row too: `--audio-condition --mulan` where measured, else the plain one
    told_file = LADDER / "token_probe_audio_condition.json"
    probes = json.loads((told_file if told_file.is_file() else LADDER / "token_probe.json").read_text())["probes"]
    probe, lm_probe = probes["semantic tokens (histogram)"], probes["the semantic LM's tokens from the caption (histogram)"]
    first = reports["caption"]
    plt = pyplot()
    fig, (attributes, closeness) = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    bars = [("real", [first["attributes"]["scores"][a]["real"]["accuracy"] for a in ATTRIBUTES])]
    bars += [(label, [reports[s]["attributes"]["scores"][a]["generated"]["accuracy"] for a in ATTRIBUTES])
             for s, label in SOURCES]
    bars.insert(2, ("the tokens, probed (bag of tokens)", [probe[a]["accuracy"] for a in ATTRIBUTES]))
    bars.insert(4, ("the LM's tokens from the caption, probed", [lm_probe[a]["accuracy"] for a in ATTRIBUTES]))
    if told_file.is_file():
        bars[4:4] = [(label, [probes[key][a]["accuracy"] for a in ATTRIBUTES]) for label, key in (
            ("the clip's MuLan tokens, probed", "MuLan audio tokens (their code vectors summed)"),
            ("the LM's tokens from the clip's MuLan tokens, probed",
             "the semantic LM's tokens from the clip's own MuLan audio tokens (histogram)"))]
    width = 0.8 / len(bars)
    for i, (label, values) in enumerate(bars):
        attributes.bar([k + (i - (len(bars) - 1) / 2) * width for k in range(len(ATTRIBUTES))], values, width,
                       label=label, hatch="//" if "probed" in label else None)
    for k, a in enumerate(ATTRIBUTES):
        chance = first["attributes"]["scores"][a]["chance"]
        attributes.plot([k - 0.45, k + 0.45], [chance, chance], "k:", lw=1, label="chance (1 / classes)" if k == 0 else None)
    attributes.set_xticks(range(len(ATTRIBUTES)), ATTRIBUTES)
    attributes.set_ylabel("accuracy of a classifier trained on real clips")
    attributes.set_ylim(0, 1.4)
    attributes.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    attributes.legend(fontsize=6.5, loc="upper center", ncol=3)
    attributes.set_title(f"what the caption asked for, heard in {first['clips']} held-out clips", fontsize=9)
    names = ["real"] + [label for _, label in SOURCES]
    mcc = [first["mcc"]["real"]] + [reports[s]["mcc"]["generated"] for s, _ in SOURCES]
    labels = [label for label, _ in bars]
    closeness.bar(range(len(names)), mcc, color=[f"C{labels.index(n)}" for n in names])  # the attribute bars' colours
    closeness.axhline(first["mcc"]["mismatched"], ls=":", c="k", lw=1, label="music vs another clip's caption")
    closeness.set_xticks(range(len(names)), [n.replace(" from the", "\nfrom the").replace("DPD from", "DPD\nfrom")
                                             for n in names], fontsize=7)
    closeness.set_ylabel("MuLan cosine with the caption (MCC)")
    closeness.legend(fontsize=7)
    closeness.set_title("closeness to the caption", fontsize=9)
    fig.tight_layout()
    fig.savefig(PICTURE, dpi=120)
    plt.close(fig)
    print(f"wrote {PICTURE}")


if __name__ == "__main__":
    main()
