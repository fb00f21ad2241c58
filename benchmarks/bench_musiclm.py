"""Forward passes and wall time of the MusicLM-style baseline beside melody, for 10 s of music, in one process.

Two parts, both batch 1, on the device and threads given:

- **tiny, measured end to end**: `MusicLMStyle.generate` (melody's bundled MuLan and semantic LM, then the
  coarse and fine LMs and the codec decoder) and `MeLoDy.generate` (the same MuLan and semantic LM, then
  the DPD and the VAE decoder) for one prompt, 10 s, seed 0: every stage's forward passes and seconds as
  the two pipelines count them. The acoustic LMs are the trained ones of `--model RUN` (a finished
  `melody train musiclm` run) or, without it, random weights of the `tiny` shapes (speed and passes do not
  depend on training). One untimed warm-up run of each first.
- **paper shapes, random weights, extrapolated**: generating 10 s at 310 M parameters per acoustic LM
  would take hours on a few CPU cores, so each stage is timed on a few network calls and extrapolated
  over the exact list of calls the sampler makes for 10 s (`call_plan`, which mirrors `sample_acoustic`'s
  windows): the window-encoding passes (prefill of condition + BOS + kept tokens) are timed at 3 lengths
  and interpolated linearly, the one-token steps are timed (median of `--steps` calls) at 3 cache depths
  and interpolated linearly in depth. The same is done for melody's semantic LM at `paper` shapes
  (guidance 3: both branches in one batch of 2) and one guided DPD pass at `paper` shapes is timed and
  multiplied by the step count. Every number in the JSON says whether it was `measured` or `extrapolated`;
  the method is also run on the `tiny` shapes, where the measured stage time sits beside it as a check.

Writes `benchmarks/results/musiclm_baseline.json`.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_musiclm.py --threads 2 [--model RUN] [--skip-paper]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_device_args, load_average, machine, sync  # noqa: E402

from melody.baselines.musiclm import MusicLMStyle, preset, window_frames  # noqa: E402
from melody.bundled import BUNDLE  # noqa: E402
from melody.config import preset as melody_preset  # noqa: E402
from melody.diffusion import guided_in_one_call  # noqa: E402
from melody.dpd import DPD  # noqa: E402
from melody.io import write_json_atomic  # noqa: E402
from melody.pipeline import MeLoDy  # noqa: E402
from melody.semantic.lm import SemanticLM  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "musiclm_baseline.json"
SECONDS = 10.0
PROMPT = "a calm piano piece with soft strings"


def call_plan(frames: int, window: int, stride: int, levels: int,
              condition: Callable[[int], int]) -> tuple[list[int], list[int]]:
    """The network calls `sample_acoustic` makes for `frames` frames: (prefill lengths, one per window;
    cache depth before each one-token step). `condition(n)`: condition positions for a window of n frames."""
    prefills, depths, first = [condition(min(window, frames)) + 1], [], 0
    length = prefills[0]
    for i in range(frames * levels - 1):
        if i + 1 == (first + window) * levels:
            first += stride
            length = condition(min(window, frames - first)) + 1 + (i + 1 - first * levels)
            prefills.append(length)
        else:
            depths.append(length)
            length += 1
    assert len(prefills) + len(depths) == frames * levels
    return prefills, depths


def interpolate(points: dict[int, float], x: int) -> float:
    """Linear interpolation (and extrapolation at the ends) through `points` {x: y}."""
    xs = sorted(points)
    lo, hi = (xs[0], xs[1]) if x <= xs[1] else (xs[-2], xs[-1])
    return points[lo] + (points[hi] - points[lo]) * (x - lo) / (hi - lo)


def clocked(fn, device: str) -> tuple[object, float]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


@torch.inference_mode()
def extrapolate(prefill, step, prefills: list[int], depths: list[int], steps: int, device: str) -> dict:
    """Time `prefill(length)` → cache and `step(cache)` at 3 lengths and extrapolate over the call plan."""
    lengths = sorted({min(prefills + depths), (min(prefills + depths) + max(prefills + depths)) // 2, max(prefills + depths)})
    prefill_s, step_s = {}, {}
    prefill(min(lengths))  # warm-up
    for length in lengths:
        cache, prefill_s[length] = clocked(lambda n=length: prefill(n), device)
        step(cache)  # warm-up at this depth
        times = [clocked(lambda c=cache: step(c), device)[1] for _ in range(steps)]
        step_s[length] = statistics.median(times)
    total_prefill = sum(interpolate(prefill_s, n) for n in prefills)
    total_steps = sum(interpolate(step_s, d) for d in depths)
    return {"forward_passes": len(prefills) + len(depths), "window_passes": len(prefills), "step_passes": len(depths),
            "measured_prefill_s": {str(k): round(v, 4) for k, v in prefill_s.items()},
            "measured_step_s": {str(k): round(v, 5) for k, v in step_s.items()},
            "extrapolated_prefill_s": round(total_prefill, 2), "extrapolated_steps_s": round(total_steps, 2),
            "extrapolated_s": round(total_prefill + total_steps, 2)}


def acoustic_rows(model: MusicLMStyle, steps: int, device: str) -> dict:
    """Per acoustic stage: the call plan for 10 s and its extrapolated time."""
    cfg, rate = model.config, model.frame_rate
    frames = math.ceil(SECONDS * rate)
    semantic_per_frame = model.melody.token_rate / rate
    mulan_levels, vocab = model.coarse.mulan_levels, model.coarse.semantic_vocab
    gen = torch.Generator().manual_seed(0)
    rows = {}
    for name, lm, lm_cfg in (("coarse", model.coarse, cfg.coarse), ("fine", model.fine, cfg.fine)):
        window, stride = window_frames(lm_cfg, rate)
        if name == "coarse":
            def condition_length(n: int) -> int:
                return mulan_levels + math.ceil(n * semantic_per_frame)

            def condition(n: int) -> tuple[torch.Tensor, ...]:
                return (torch.randint(0, model.coarse.mulan_codebook_size, (1, mulan_levels), generator=gen).to(device),
                        torch.randint(0, vocab, (1, math.ceil(n * semantic_per_frame)), generator=gen).to(device))
        else:
            def condition_length(n: int) -> int:
                return n * model.codec.coarse_levels

            def condition(n: int) -> tuple[torch.Tensor, ...]:
                return (torch.randint(0, model.codec.codebook_size, (1, n, model.codec.coarse_levels), generator=gen).to(device),)

        full = condition_length(min(window, frames))

        def prefill(length: int, lm=lm, full=full, condition=condition, window=window, frames=frames):
            cache = lm.new_cache()
            targets = torch.randint(0, lm.codebook_size, (1, length - full - 1), generator=gen).to(device)
            lm(targets, *condition(min(window, frames)), cache=cache)
            return cache

        def step(cache, lm=lm):
            return lm(torch.randint(0, lm.codebook_size, (1, 1), generator=gen).to(device), cache=cache)

        prefills, depths = call_plan(frames, window, stride, lm.levels, condition_length)
        # prefill lengths below a full window's condition cannot be built from it: time from there
        prefills_timed = [max(n, full + 1) for n in prefills]
        rows[name] = {"window_frames": window, "stride_frames": stride, "levels": lm.levels,
                      "params": lm.num_parameters(), **extrapolate(prefill, step, prefills_timed, depths, steps, device)}
    return rows


@torch.inference_mode()
def semantic_paper_row(steps: int, device: str) -> dict:
    """melody's semantic LM at `paper` shapes, guidance 3 (batch 2 in one pass), 250 tokens, extrapolated."""
    cfg = melody_preset("paper")
    torch.manual_seed(0)
    lm = SemanticLM.from_config(cfg).to(device).eval()
    mulan = torch.randint(0, cfg.mulan.codebook_size, (2, cfg.mulan.rvq_levels)).to(device)
    drop = torch.tensor([False, True], device=device)
    n = math.ceil(SECONDS * cfg.tokenizer.frame_rate)
    head = lm.condition_length + 1

    def prefill(length: int):
        cache = lm.new_cache()
        lm(mulan, torch.randint(0, lm.vocab_size, (2, length - head)).to(device), drop, cache=cache)
        return cache

    def step(cache):
        return lm(None, torch.randint(0, lm.vocab_size, (2, 1)).to(device), cache=cache)

    prefills, depths = [head], list(range(head, head + n - 1))
    return {"params": lm.num_parameters(), "guidance_batch": 2, **extrapolate(prefill, step, prefills, depths, steps, device)}


@torch.inference_mode()
def dpd_paper_row(device: str) -> dict:
    """One guided DPD pass (batch 2) over 10 s of `paper` latents, measured; × the step counts."""
    cfg = melody_preset("paper")
    torch.manual_seed(0)
    dpd = DPD.from_config(cfg).to(device).eval()
    frames = math.ceil(SECONDS * cfg.vae.sample_rate / math.prod(cfg.vae.strides))
    x = torch.randn(1, frames, cfg.dpd.latent_dim, device=device)
    tokens = torch.randint(0, cfg.tokenizer.codebook_size, (1, math.ceil(SECONDS * cfg.tokenizer.frame_rate)), device=device)
    velocity = guided_in_one_call(dpd, cfg.dpd.guidance)
    delta = torch.full((1, frames), 0.7, device=device)
    _, seconds = clocked(lambda: velocity(x, delta, tokens), device)
    return {"params": sum(p.numel() for p in dpd.parameters()), "latent_frames": frames, "measured_pass_s": round(seconds, 2),
            "extrapolated_s": {str(s): round(s * seconds, 1) for s in (cfg.dpd.steps, 20)}}


@torch.inference_mode()
def end_to_end(melody: MeLoDy, model: MusicLMStyle) -> dict:
    rows = {}
    for name, run in (("melody", lambda: melody.generate([PROMPT], SECONDS, seed=0)),
                      ("musiclm_style", lambda: model.generate([PROMPT], SECONDS, seed=0))):
        run()  # warm-up
        out, wall = clocked(run, "cpu")
        lm_passes = sum(v for k, v in out.forward_passes.items() if k not in ("mulan", "vae", "codec"))
        rows[name] = {"forward_passes": out.forward_passes, "seconds": {k: round(v, 3) for k, v in out.seconds.items()},
                      "wall_s": round(wall, 2), "generation_passes": lm_passes, "measured": True}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_args(parser)
    parser.add_argument("--model", type=Path, default=None, help="a finished `melody train musiclm` run (default: random tiny)")
    parser.add_argument("--steps", type=int, default=5, help="one-token steps timed per cache depth")
    parser.add_argument("--skip-paper", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_start = load_average()
    melody = MeLoDy.from_pretrained(BUNDLE)
    trained = args.model is not None
    tiny = MusicLMStyle.from_pretrained(args.model, melody) if trained else MusicLMStyle.random(preset("tiny"), melody)
    result = {
        "music_seconds": SECONDS, "prompt": PROMPT,
        "formula": {"musiclm_passes": "(25 + 200 + 400)·T", "melody_passes": "25·T + DPD steps (one guided pass per step "
                    "and window)", "T": SECONDS, "musiclm": int(625 * SECONDS),
                    "melody_paper_table3": int(25 * SECONDS + 20)},
        "tiny": {"weights": f"trained ({args.model})" if trained else "random", "end_to_end": end_to_end(melody, tiny),
                 "acoustic_extrapolated_check": acoustic_rows(tiny, args.steps, "cpu")},
    }
    if not args.skip_paper:
        paper = MusicLMStyle.random(preset("paper"), melody)
        result["paper"] = {"weights": "random", "acoustic": acoustic_rows(paper, args.steps, "cpu"),
                           "melody_semantic_lm": semantic_paper_row(args.steps, "cpu"), "melody_dpd": dpd_paper_row("cpu")}
    result["machine"] = machine(args.device, args.threads, load_start)
    write_json_atomic(RESULTS, result)
    print(RESULTS)


if __name__ == "__main__":
    main()
