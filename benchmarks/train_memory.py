"""Training memory per stage and preset: parameters, the static part (weights, gradients, AdamW, EMA), and
with `--measure` the activations of one example, measured as the peak RSS of a fresh process that runs one
forward + backward on the CPU (fp32; bf16 autocast on a GPU roughly halves activations).

    python benchmarks/train_memory.py                       # parameters and static memory, tiny and paper
    python benchmarks/train_memory.py --measure --threads 2 # plus activations (paper shapes: minutes on 2 cores)

Writes benchmarks/results/train_memory.json and .md (docs/scale.md quotes them).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import torch  # noqa: E402

from melody.config import preset  # noqa: E402
from melody.io import write_json_atomic, write_text_atomic  # noqa: E402

# bytes per trained parameter: fp32 weight + gradient + AdamW's two moments (accelerate's bf16 keeps fp32 masters)
STATIC_BYTES = 16
EMA_BYTES = 4
STAGES = ("vae", "mulan", "tokenizer", "semantic_lm", "dpd")
EMA = {"dpd": True}  # the recipes keep an EMA copy of the DPD only


def build(stage: str, cfg) -> dict[str, torch.nn.Module]:
    """The models a stage trains (frozen conditioners excluded), at `cfg`'s sizes, random weights."""
    if stage == "vae":
        from melody.discriminators import Discriminators
        from melody.vae import VAE

        return {"vae": VAE(cfg.vae), "discriminators": Discriminators(cfg.vae)}
    if stage == "mulan":
        from melody.mulan import MuLan

        mulan = MuLan.from_config(cfg.mulan, cfg.vae.sample_rate)
        return {"mulan": mulan}
    if stage == "tokenizer":
        from melody.semantic.tokenizer import SemanticTokenizer

        return {"tokenizer": SemanticTokenizer.from_config(cfg.tokenizer, cfg.vae.sample_rate)}
    if stage == "semantic_lm":
        from melody.semantic.lm import SemanticLM

        return {"semantic_lm": SemanticLM.from_config(cfg)}
    from melody.dpd import DPD

    return {"dpd": DPD.from_config(cfg)}


def trained_parameters(models: dict[str, torch.nn.Module]) -> int:
    return sum(p.numel() for m in models.values() for p in m.parameters() if p.requires_grad)


def one_example(stage: str, preset_name: str) -> None:
    """One forward + backward of one training example at the stage's crop length (run in a fresh process)."""
    cfg = preset(preset_name)
    models = build(stage, cfg)
    rate = cfg.vae.sample_rate
    torch.manual_seed(0)
    if stage == "vae":
        audio = torch.randn(1, cfg.vae.channels, int(cfg.vae.crop_seconds * rate)) * 0.1
        out = models["vae"](audio)
        loss = out.audio.square().mean() + out.posterior.kl().mean()
        loss = loss + sum(o.logits.sum() for o in models["discriminators"](out.audio))
    elif stage == "mulan":
        audio = torch.randn(2, int(cfg.mulan.crop_seconds * rate)) * 0.1  # a pair: the loss needs a negative
        emb = models["mulan"].embed_audio(audio, torch.tensor([audio.shape[1]] * 2))
        loss = emb.square().sum()
    elif stage == "tokenizer":
        audio = torch.randn(1, int(cfg.tokenizer.crop_seconds * rate)) * 0.1
        out = models["tokenizer"].encoder(audio, torch.tensor([audio.shape[1]]))
        loss = out.logits.float().logsumexp(-1).mean()
    elif stage == "semantic_lm":
        lm = models["semantic_lm"]
        tokens = torch.randint(0, cfg.tokenizer.codebook_size, (1, int(cfg.semantic_lm.window_seconds * 25)))
        mulan = torch.randint(0, cfg.mulan.codebook_size, (1, cfg.mulan.rvq_levels))
        loss = lm(mulan, tokens, torch.zeros(1, dtype=torch.bool)).logits.float().logsumexp(-1).mean()
    else:
        dpd = models["dpd"]
        frames = int(cfg.dpd.crop_seconds * rate / _hop(cfg))
        z = torch.randn(1, frames, cfg.vae.latent_dim)
        tokens = torch.randint(0, cfg.tokenizer.codebook_size, (1, int(cfg.dpd.crop_seconds * 25)))
        loss = dpd(z, torch.rand(1, frames), tokens, torch.zeros(1, dtype=torch.bool)).square().mean()
    loss.backward()


def _hop(cfg) -> int:
    hop = 1
    for s in cfg.vae.strides:
        hop *= s
    return hop


def peak_rss_mb(stage: str, preset_name: str, threads: int, run: bool = True) -> float:
    """Peak RSS of a fresh process that builds the stage's models and, with `run`, trains one example."""
    work = f"t.one_example({stage!r}, {preset_name!r})" if run else f"t.build({stage!r}, preset({preset_name!r}))"
    code = (f"import sys; sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'benchmarks')!r}]; import torch; torch.set_num_threads({threads}); "
            f"import train_memory as t; from melody.config import preset; {work}; "
            "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,paper")
    parser.add_argument("--measure", action="store_true", help="measure one example's activations (fresh process per stage)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    rows = []
    for name in args.presets.split(","):
        cfg = preset(name)
        for stage in STAGES:
            models = build(stage, cfg)
            n = trained_parameters(models)
            static = n * (STATIC_BYTES + (EMA_BYTES if EMA.get(stage) else 0)) / 2**30
            row = {"preset": name, "stage": stage, "parameters_m": round(n / 1e6, 2), "static_gib": round(static, 3)}
            if args.measure:
                act = peak_rss_mb(stage, name, args.threads) - peak_rss_mb(stage, name, args.threads, run=False)
                row["activations_per_example_gib"] = round(max(act, 0.0) / 1024, 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
            del models
    out = ROOT / "benchmarks" / "results"
    write_json_atomic(out / "train_memory.json", {"static_bytes_per_parameter": STATIC_BYTES, "ema_bytes_per_parameter": EMA_BYTES,
                                                  "rows": rows})
    head = "| preset | stage | trained parameters | weights + grads + AdamW (+ EMA) |" + (" activations / example (CPU, fp32) |" if args.measure else "")
    lines = [head, "|" + "---|" * (5 if args.measure else 4)]
    for r in rows:
        line = f"| {r['preset']} | {r['stage']} | {r['parameters_m']} M | {r['static_gib']:.2f} GiB |"
        if args.measure:
            line += f" {r['activations_per_example_gib']:.2f} GiB |"
        lines.append(line)
    write_text_atomic(out / "train_memory.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
