"""`melody bench`: forward passes, wall time, real-time factor, peak memory and physical bounds per stage.

Issue 7, items 2 and 3 (MusicGen); the MeLoDy paper's efficiency claims (Table 3: forward passes; Table 2:
speed). For each shape set and duration one configuration runs in a fresh child process (this module run as
`python -m melody.eval.bench SPEC`), so its peak resident memory (VmHWM: the model, Python and torch
included, which is what a user's process holds) is its own. In the child: build the model, one untimed
1 s warm-up generation, then one timed generation of T seconds with every network counted by forward hooks
(`melody.eval.passes.ForwardCounter`), then the FLOPs of one real pass of each kind (`FlopCounterMode` on the
inputs the hooks kept). Shape sets:

- `bundled`: a bundle folder (default: the bundled `tiny` model), `MeLoDy.generate`;
- `paper`: the `paper` preset's shapes with random weights (speed does not depend on training): MuLan with
  the packaged MiniLM text encoder, random RVQ codebooks and tokenizer centroids (as tests/test_pipeline.py
  draws them);
- `bundled@bf16`, `paper@bf16`: the same with the DPD sampled under bf16 autocast (`dpd.precision`; the sampler's
  state stays fp32; its roofline bound from the bf16 matmul throughput) and the semantic LM's weights in bf16
  (`semantic_lm.precision`; its bound from the weights' bytes, which `streamed_bytes` counts at their dtype);
- `musicgen-small`: MusicGen-small's published sizes (`musicgen_small_config`) built from configs with
  random weights through `transformers`, nothing downloaded; `generate` for f · T + K − 1 new tokens;
- `musicgen-small@bf16`: the same with every weight in bf16 (as melody's LM at `@bf16`: half the bytes a token
  streams; the roofline bounds from the bf16 rate and the weights' bytes).

On a CUDA device the counted run is eager (a CUDA graph's replay runs no forward hook), and the same generation
then runs again with the samplers' CUDA graphs (`melody.cuda_graphs`), after one untimed run at the same duration
that records them: its wall time, stage seconds, and whether its tokens equal the eager run's (`graphed`). With
`compile`, once more with both samplers' networks through `torch.compile` before they are recorded (`compiled`; its
untimed first run, which compiles and records, is reported as `record_s`).

Per stage: the passes the pipeline reports, the passes the hooks saw and the formula's (a mismatch is
listed in the report), wall seconds, RTF (seconds ÷ seconds of music), and the roofline bound
(`melody.eval.roofline`) from this machine's matmul throughput and copy bandwidth, measured once per run in a
child of its own (fp32: the models run in fp32): the DPD, MuLan's text tower and the audio decoders by their
counted FLOPs and weights, the autoregressive LMs by their weights streamed once per token. Also the paper's
Table 3 numbers next to the measured counts, and MusicGen ÷ MeLoDy ratios of time and passes at each duration
both ran. Writes `bench.json`, `bench.md` and `bench.png` (passes and seconds per stage, log scales).

Choices where the issue is silent: one prompt (batch 1) and seed 0; the children wait for work passively
(`OMP_WAIT_POLICY=PASSIVE` unless the environment sets a policy: `child_environment` says why); the DPD steps
and guidance are the bundle's own unless `steps` is given (several: each MeLoDy shape set runs at each, as the paper's
Table 2 reports 5, 10 and 20 steps); MusicGen samples as its published generation config
does (guidance 3.0, sampling, top-k 250 as audiocraft), its prompt is 16 random T5 token ids (the T5
SentencePiece tokenizer is a download, so it is left out). MusicGen's stage seconds are the hooks' time inside
each network; the rest of `generate` (sampling, the delay pattern) is reported as `other_s`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from melody.errors import MelodyError
from melody.eval.passes import ForwardCounter, dpd_windows, melody_passes, musicgen_passes, table3
from melody.eval.roofline import MATMUL_SIZE
from melody.io import atomic_path, write_json_atomic, write_text_atomic
from melody.runtime import reuse_freed_memory

SHAPES = ("bundled", "paper", "musicgen-small", "bundled@bf16", "paper@bf16", "musicgen-small@bf16")
PROMPT = "an upbeat funk groove with slap bass and drums"
WARMUP_SECONDS = 1.0
MUSICGEN_PROMPT_TOKENS = 16
PROGRESS = "progress: "  # a child's stderr lines that are progress, not errors
ROLES = {"mulan": "text condition", "semantic_lm": "autoregressive LM", "dpd": "diffusion", "vae": "audio decoder",
         "text_encoder": "text condition", "decoder": "autoregressive LM", "audio_decoder": "audio decoder"}


# --- what runs ---------------------------------------------------------------------------------

def parse_runs(shapes: list[str], seconds: list[float]) -> list[tuple[str, float]]:
    """(shape set, seconds) pairs from `NAME` or `NAME:S1,S2` entries (own durations) and the default `seconds`."""
    from melody.pipeline import check_duration

    runs = []
    for entry in shapes:
        name, _, own = entry.partition(":")
        if name not in SHAPES:
            raise MelodyError(f"unknown shape set '{name}'; choose from {', '.join(SHAPES)} (optionally NAME:SECONDS,...)")
        try:
            durations = [float(s) for s in own.split(",")] if own else seconds
        except ValueError:
            raise MelodyError(f"--shapes {entry}: give durations as NAME:SECONDS,SECONDS (e.g. paper:10)") from None
        runs += [(name, check_duration(s)) for s in durations]
    if not runs:
        raise MelodyError("nothing to run; give --shapes and --seconds")
    return list(dict.fromkeys(runs))


@contextlib.contextmanager
def _transformers_errors_only() -> Iterator[None]:
    """transformers' log at error level inside (MusicGen's pad and BOS id, one past the codes, is warned about), then back."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def musicgen_small_config():
    """MusicGen-small's published sizes (Copet et al. 2023; the `facebook/musicgen-small` conversion): decoder
    24 layers, hidden 1024, 16 heads, FFN 4096, 4 codebooks × 2048 codes; T5-base text encoder (12 layers, d_model
    768, 12 heads, FFN 3072, vocabulary 32 128); EnCodec 32 kHz (strides 8·5·4·4 → 50 Hz, 64 filters, 2.2 kbps =
    4 codebooks of 2048)."""
    from transformers import EncodecConfig, MusicgenConfig, MusicgenDecoderConfig, T5Config

    with _transformers_errors_only():
        text = T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12,
                        relative_attention_num_buckets=32, feed_forward_proj="relu")
        codec = EncodecConfig(sampling_rate=32_000, audio_channels=1, upsampling_ratios=[8, 5, 4, 4], num_filters=64,
                              codebook_size=2048, target_bandwidths=[2.2], use_causal_conv=False, normalize=False,
                              use_conv_shortcut=False)
        decoder = MusicgenDecoderConfig(vocab_size=2048, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                        ffn_dim=4096, num_codebooks=4, max_position_embeddings=2048, pad_token_id=2048,
                                        bos_token_id=2048)
        return MusicgenConfig(text_encoder=text, audio_encoder=codec, decoder=decoder)


# --- the parent: machine, children, report -------------------------------------------------------

def machine_figures(device: str, threads: int) -> dict[str, Any]:
    """This machine with `threads` threads: fp32 and bf16 matmul GFLOP/s, copy GB/s, and what it is (run in a child,
    under the same OpenMP settings as the models)."""
    import torch

    from melody.eval.roofline import copy_bandwidth, matmul_flops

    torch.set_num_threads(threads)
    figures = {"matmul_gflops": {"float32": matmul_flops(torch.float32, device) / 1e9,
                                 "bfloat16": matmul_flops(torch.bfloat16, device) / 1e9},
               "copy_gb_s": copy_bandwidth(device) / 1e9}
    return {"cpu": _cpu_name(), "cpu_count": os.cpu_count(), "threads": threads, "device": device, "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(device) if device.startswith("cuda") else None,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), **figures}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_bench(bundle: str | Path | None, seconds: list[float], shapes: list[str], threads: int,
              steps: int | list[int] | None = None,
              device: str = "cpu", musicgen_config: dict | None = None, progress: Callable[[str], None] | None = None,
              partial: Callable[[dict], Any] | None = None, compile: bool = False) -> dict[str, Any]:
    """The whole benchmark (module docstring) → the report dict. `musicgen_config`: a `MusicgenConfig.to_dict()` to
    run instead of MusicGen-small's (tests use a tiny one); `progress` gets one line per step of every run; `partial`
    gets the report of the runs done so far after each one (so a long run stopped half way leaves those); `compile`:
    on a CUDA device, MeLoDy's runs also time their samplers `torch.compile`d and recorded."""
    from melody.bundled import BUNDLE

    if not isinstance(threads, int) or threads < 1:
        raise MelodyError(f"--threads must be at least 1, got {threads}")
    step_counts = [None] if steps is None or steps == [] else [steps] if isinstance(steps, int) else list(dict.fromkeys(steps))
    for count in step_counts:
        if count is not None and count < 1:
            raise MelodyError(f"--steps must be at least 1, got {count}")
    if not (device == "cpu" or device.startswith("cuda")):
        raise MelodyError(f"--device {device}: give cpu or cuda[:N]")
    if compile and not device.startswith("cuda"):
        raise MelodyError("--compile times the compiled samplers under CUDA graphs: give --device cuda")
    runs = [(name, secs, None if name.startswith("musicgen-small") else count)  # MusicGen has no DPD steps
            for name, secs in parse_runs(shapes, seconds) for count in step_counts]
    runs = list(dict.fromkeys(runs))
    bundle = Path(bundle or BUNDLE)
    if any(name.startswith("bundled") for name, _, _ in runs) and not bundle.is_dir():
        raise MelodyError(f"{bundle}: no such bundle folder; give a folder with mulan, tokenizer, semantic_lm, dpd, vae")
    tell = progress or (lambda line: None)
    load_start = [round(x, 2) for x in os.getloadavg()]
    tell(f"measuring this machine's matmul throughput and memory bandwidth on {threads} threads")
    machine = _run_child({"task": "machine", "device": device, "threads": threads}, "machine", threads, tell)
    given = musicgen_config is not None
    if not given and any(name.startswith("musicgen-small") for name, _, _ in runs):
        musicgen_config = musicgen_small_config().to_dict()
    command = {"bundle": str(bundle), "seconds": seconds, "shapes": shapes, "threads": threads, "steps": steps, "device": device,
               "compile": compile,
               "musicgen_config": "given by the caller" if given else "published musicgen-small sizes"}
    results: list[dict] = []

    def report() -> dict:
        done = {**machine, "load_avg_start": load_start, "load_avg_end": [round(x, 2) for x in os.getloadavg()]}
        return {"machine": done, "runs": list(results), "mismatches": mismatches(results), "comparisons": comparisons(results),
                "table3": paper_table3(results), "command": command, "complete": len(results) == len(runs)}

    for i, (name, secs, count) in enumerate(runs, 1):
        label = f"{name} {secs:g} s" + (f", {_steps(count)}" if len(step_counts) > 1 and count is not None else "")
        tell(f"[{i}/{len(runs)}] {label}")
        musicgen = name.startswith("musicgen-small")  # musicgen-small or musicgen-small@bf16
        spec = {"task": "musicgen" if musicgen else "melody", "shapes": name, "seconds": secs,
                "bundle": str(bundle), "steps": count, "threads": threads, "device": device, "compile": compile,
                "musicgen_config": musicgen_config if musicgen else None}
        results.append(with_bounds({**_run_child(spec, label, threads, tell), "label": label}, machine))
        if partial is not None and i < len(runs):
            partial(report())
    return report()


def _steps(count: int) -> str:
    return f"{count} step" + ("" if count == 1 else "s")


def child_environment(threads: int) -> dict[str, str]:
    """The children's environment: `threads` OpenMP / MKL threads and, unless the caller's environment sets one, the
    passive OpenMP wait policy. On a shared machine the default (spinning) policy is what gets measured otherwise: with
    other jobs on both of this machine's 2 cores (load ≈ 7.7), one MusicGen-small decoder step took 6.8 s on 2 spinning
    threads, 0.31 s on 2 passive ones and 0.32 s on 1 thread; on an idle machine the two policies differ little."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}


def _run_child(spec: dict, label: str, threads: int, tell: Callable[[str], None]) -> dict:
    """One task in a fresh process; its progress lines go to `tell`, its failure becomes a one-line error."""
    with tempfile.TemporaryDirectory(prefix="melody-bench-") as folder:
        spec_path, result_path = Path(folder) / "spec.json", Path(folder) / "result.json"
        spec_path.write_text(json.dumps({**spec, "result": str(result_path)}))
        env = child_environment(threads)
        child = subprocess.Popen([sys.executable, "-m", "melody.eval.bench", str(spec_path)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True, env=env)
        others = []
        for line in child.stderr:
            if line.startswith(PROGRESS):
                tell(f"  {label}: {line[len(PROGRESS):].strip()}")
            elif line.strip():
                others.append(line.strip())
        code = child.wait()
        result = json.loads(result_path.read_text()) if result_path.is_file() else None
    if result is not None and "error" in result:
        raise MelodyError(result["error"])
    if code != 0 or result is None:
        last = others[-1] if others else f"exit status {code}"
        raise MelodyError(f"the {label} run failed: {last}")
    return result


def with_bounds(run: dict, machine: dict) -> dict:
    """`run` with each stage's roofline bound and measured ÷ bound, from the machine's fp32 matmul and copy figures."""
    from melody.eval.roofline import bound_seconds

    bytes_per_s = machine["copy_gb_s"] * 1e9
    for name, stage in run["stages"].items():
        # an @bf16 run multiplies in bf16 in melody's DPD (autocast) and everywhere in MusicGen (bf16 weights)
        bf16 = run["shapes"].endswith("@bf16") and (name == "dpd" or run["model"] == "musicgen")
        flops_per_s = machine["matmul_gflops"]["bfloat16" if bf16 else "float32"] * 1e9
        passes = stage["hooked"]
        counted = stage["bound_by"] == "roofline" and stage["flops"] is not None and passes > 0
        bound = bound_seconds(passes, stage["flops"] / passes if counted else None, stage["weight_bytes"], flops_per_s,
                              bytes_per_s)
        stage.update(bound)
        stage["over_bound"] = stage["seconds"] / bound["bound_s"] if bound["bound_s"] else None
    return run


def mismatches(runs: list[dict]) -> list[str]:
    """One line per stage whose reported, hooked and formula passes are not all equal."""
    lines = []
    for run in runs:
        for name, s in run["stages"].items():
            if len({s["passes"], s["hooked"], s["formula"]}) > 1:
                why = f" ({s['note']})" if s.get("note") else ""
                lines.append(f"{run['label']} {name}: reported {s['passes']}, hooks {s['hooked']}, formula {s['formula']}{why}")
    return lines


def comparisons(runs: list[dict]) -> list[dict]:
    """MusicGen ÷ MeLoDy at each duration both ran, per MeLoDy shape set: wall time and total forward passes."""
    out = []
    for mg in (r for r in runs if r["model"] == "musicgen"):
        for r in (r for r in runs if r["model"] == "melody" and r["seconds"] == mg["seconds"]):
            graphed, compiled = r.get("graphed"), r.get("compiled")
            out.append({"seconds": r["seconds"], "melody": r["shapes"], "melody_steps": r["steps"], "musicgen": mg["shapes"],
                        "time_ratio": mg["wall_s"] / r["wall_s"], "passes_ratio": mg["total_passes"] / r["total_passes"],
                        "time_ratio_graphed": mg["wall_s"] / graphed["wall_s"] if graphed else None,
                        "time_ratio_compiled": mg["wall_s"] / compiled["wall_s"] if compiled and "wall_s" in compiled else None,
                        "musicgen_wall_s": mg["wall_s"], "melody_wall_s": r["wall_s"],
                        "musicgen_passes": mg["total_passes"], "melody_passes": r["total_passes"]})
    return out


def paper_table3(runs: list[dict]) -> list[dict]:
    """Table 3's formula numbers for each duration run, beside the MeLoDy runs' measured counts (LM + DPD, as Table 3
    counts, and all stages)."""
    rows = []
    for secs in sorted({r["seconds"] for r in runs}):
        measured = {f"{r['shapes']} ({_steps(r['steps'])})": {"lm_plus_dpd": r["stages"]["semantic_lm"]["hooked"] + r["stages"]["dpd"]["hooked"],
                                  "all_stages": r["total_passes"], "dpd_steps": r["steps"], "dpd_windows": r["windows"]}
                    for r in runs if r["model"] == "melody" and r["seconds"] == secs}
        rows.append({**table3(secs), "measured": measured})
    return rows


# --- the child: one configuration ----------------------------------------------------------------

def _peak_rss_mb() -> float:
    """This process's peak resident memory in MiB: VmHWM of /proc/self/status. Not `ru_maxrss`: Linux carries the
    parent's high-water mark over `fork` + `exec` into it, so a child of a large parent would report the parent's."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # elsewhere (macOS reports bytes, Linux KiB)


def _parameters(*modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def _stage(role: str, passes: int, hooked: int, formula: int, seconds: float, network_seconds: float, flops: int | None,
           weight_bytes: int, parameters: int, bound_by: str, note: str | None = None) -> dict:
    return {"role": role, "passes": passes, "hooked": hooked, "formula": formula, "seconds": seconds,
            "network_seconds": network_seconds, "flops": flops, "weight_bytes": weight_bytes, "parameters": parameters,
            "bound_by": bound_by, "note": note}


def _kept_flops(module, counter: ForwardCounter, name: str) -> int:
    """Σ over the distinct input signatures the hooks kept: calls × FLOPs of re-running the first such call."""
    from melody.eval.roofline import flops_of_call

    return sum(calls * flops_of_call(module, args, kwargs) for args, kwargs, calls in counter.inputs[name].values())


def random_melody(cfg, seed: int = 0):
    """MeLoDy with every stage at `cfg`'s shapes and random weights: MuLan's RVQ codebooks and the tokenizer's
    centroids drawn from N(0, 1) (tests/test_pipeline.py's way), the text tower's encoder the one `cfg` names."""
    import torch

    from melody.dpd import DPD
    from melody.mulan import MuLan
    from melody.pipeline import MeLoDy
    from melody.semantic.lm import SemanticLM
    from melody.vae import VAE

    torch.manual_seed(seed)
    mulan = MuLan.from_config(cfg.mulan, cfg.vae.sample_rate)
    with torch.no_grad():
        mulan.rvq.codebooks.normal_()
        mulan.rvq.initialized.fill_(True)
    dpd = DPD.from_config(cfg)
    if dpd.mulan_levels:
        dpd.set_mulan_codebooks(mulan.rvq.codebooks)
    return MeLoDy(mulan, random_tokenizer(cfg), SemanticLM.from_config(cfg), dpd, VAE(cfg.vae), cfg)


def random_tokenizer(cfg):
    """The semantic tokenizer at `cfg`'s shapes with random weights, its centroids drawn from N(0, 1)."""
    import torch

    from melody.semantic.tokenizer import SemanticTokenizer

    tokenizer = SemanticTokenizer.from_config(cfg.tokenizer, cfg.vae.sample_rate)
    with torch.no_grad():
        tokenizer.quantizer.centroids.normal_()
    return tokenizer


def bench_melody(spec: dict, tell: Callable[[str], None]) -> dict:
    """One MeLoDy configuration: build, warm up, one counted `generate`, FLOPs of each kind of pass."""
    import torch

    from melody.config import preset
    from melody.eval.roofline import streamed_bytes
    from melody.pipeline import MeLoDy

    device, seconds = torch.device(spec["device"]), spec["seconds"]
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    shapes, _, precision = spec["shapes"].partition("@")
    tell("building the model" + (" (paper preset, random weights)" if shapes == "paper" else ""))
    clock = time.perf_counter()
    model = MeLoDy.from_pretrained(spec["bundle"]) if shapes == "bundled" else random_melody(preset("paper"))
    model.set_precision(precision or "fp32")
    # the counted run is eager: forward hooks see no call that a CUDA graph replays (the graphed run follows)
    model.cfg.dpd.cuda_graphs = model.cfg.semantic_lm.cuda_graphs = False
    model.to(device)
    build_s = time.perf_counter() - clock
    steps = spec["steps"] or model.cfg.dpd.steps
    tell(f"warm-up: {WARMUP_SECONDS:g} s of music")
    clock = time.perf_counter()
    model.generate([PROMPT], WARMUP_SECONDS, steps=steps, seed=1)
    warmup_s = time.perf_counter() - clock
    text_tower = model.mulan.text if hasattr(model.mulan, "text") else model.mulan.clap.model  # MuLan's, or a user's CLAP
    sampled_dpd = model.dpd_at_precision()  # at bf16 a copy with bf16 linear layers, run under autocast
    networks = {"mulan": text_tower, "semantic_lm": model.lm_at_precision(), "dpd": getattr(sampled_dpd, "model", sampled_dpd),
                "vae": model.vae.decoder}
    tell(f"generating {seconds:g} s ({steps} DPD steps)")
    with ForwardCounter(networks, keep_inputs=("mulan", "dpd", "vae"), synchronize=sync) as counter:
        clock = time.perf_counter()
        out = model.generate([PROMPT], seconds, steps=steps, seed=0)
        if sync:
            sync()
        wall = time.perf_counter() - clock
    peak_rss = _peak_rss_mb()
    peak_gpu = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    graphed = _graphed_run(model, seconds, steps, out, sync, tell) if device.type == "cuda" else None
    compiled = None
    if device.type == "cuda" and spec.get("compile"):
        try:
            compiled = _graphed_run(model, seconds, steps, out, sync, tell, compiled=True)
        except Exception as err:  # noqa: BLE001 — a compiler failure is a finding of the run, not the end of it
            compiled = {"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]}
            tell(f"the compiled run failed: {compiled['error']}")
    tell("counting the FLOPs of one pass of each kind (DPD, text tower, VAE decoder)")
    # FLOPs from the fp32 DPD on the same inputs (the bf16 copy runs only under autocast; the FLOPs are the same)
    flops = {name: _kept_flops(model.dpd if name == "dpd" else networks[name], counter, name) for name in counter.inputs}
    windows = dpd_windows(seconds, model.cfg.dpd.window_seconds, model.vae.latent_rate, model.frames_per_token)
    formula = melody_passes(seconds, steps, windows)
    # a frozen text encoder is held outside the text tower's registered children (melody.mulan): count it too
    held = [model.mulan.text.encoder] if hasattr(model.mulan, "text") and model.mulan.text.freeze else []
    weights = {name: streamed_bytes(m) for name, m in networks.items()}
    weights["mulan"] += sum(streamed_bytes(m) for m in held)
    parameters = {name: _parameters(m) for name, m in networks.items()}
    parameters["mulan"] += _parameters(*held)
    stages = {name: _stage(ROLES[name], out.forward_passes[name], counter.calls[name], formula[name], out.seconds[name],
                           counter.seconds[name], flops.get(name), weights[name], parameters[name],
                           "weights" if name == "semantic_lm" else "roofline")
              for name in networks}
    return {"model": "melody", "shapes": spec["shapes"], "dpd_precision": model.cfg.dpd.precision,
            "lm_precision": model.cfg.semantic_lm.precision, "seconds": seconds,
            "steps": steps, "windows": windows,
            "guidance": {"dpd": model.cfg.dpd.guidance, "semantic_lm": model.cfg.semantic_lm.guidance},
            "audio_seconds": out.audio.shape[-1] / out.sample_rate, "build_s": build_s, "warmup_s": warmup_s,
            "wall_s": wall, "rtf": wall / seconds, "other_s": wall - sum(s["seconds"] for s in stages.values()),
            "peak_rss_mb": peak_rss, "peak_gpu_mb": peak_gpu, "stages": stages, "graphed": graphed, "compiled": compiled,
            "total_passes": sum(s["hooked"] for s in stages.values()),
            "parameters": _parameters(model.mulan, *held, model.tokenizer, model.semantic_lm, model.dpd, model.vae),
            "left_out": []}


def _graphed_run(model, seconds: float, steps: int, eager, sync: Callable[[], None], tell: Callable[[str], None],
                 compiled: bool = False) -> dict:
    """The same generation with the LM's token step and the DPD's pass replayed as CUDA graphs (`melody.cuda_graphs`):
    one untimed run at the same duration records them (both are kept with the model, as an application generating
    more than once keeps them), then one timed run; its audio against the eager run's, same seed. `compiled`: both
    networks through `torch.compile` before they are recorded (the untimed run compiles them: `record_s`)."""
    import torch

    model.cfg.dpd.cuda_graphs = model.cfg.semantic_lm.cuda_graphs = True
    model.cfg.dpd.compile = model.cfg.semantic_lm.compile = compiled
    tell(f"CUDA graphs{' of the compiled samplers' if compiled else ''}: recording at {seconds:g} s, then the timed run")
    clock = time.perf_counter()
    model.generate([PROMPT], seconds, steps=steps, seed=0)
    sync()
    record_s = time.perf_counter() - clock
    torch.cuda.reset_peak_memory_stats()
    clock = time.perf_counter()
    out = model.generate([PROMPT], seconds, steps=steps, seed=0)
    sync()
    wall = time.perf_counter() - clock
    return {"wall_s": wall, "rtf": wall / seconds, "record_s": record_s, "stage_seconds": out.seconds,
            "passes": out.forward_passes,
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20,
            "tokens_equal_eager": bool(torch.equal(out.semantic_tokens, eager.semantic_tokens)),
            "audio_max_abs_diff_eager": float((out.audio - eager.audio).abs().max())}


def bench_musicgen(spec: dict, tell: Callable[[str], None]) -> dict:
    """One MusicGen configuration from `spec["musicgen_config"]`, random weights: warm up, one counted `generate`."""
    import torch
    from transformers import MusicgenConfig, MusicgenForConditionalGeneration
    from transformers.utils import logging as hf_logging

    from melody.eval.roofline import streamed_bytes

    hf_logging.set_verbosity_error()  # this process runs only this configuration
    device, seconds = torch.device(spec["device"]), spec["seconds"]
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    tell("building MusicGen from its config (random weights, nothing downloaded)")
    clock = time.perf_counter()
    config = MusicgenConfig.from_dict(spec["musicgen_config"])
    torch.manual_seed(0)
    model = MusicgenForConditionalGeneration(config).to(device).eval()
    if spec["shapes"].endswith("@bf16"):
        model = model.to(torch.bfloat16)
    build_s = time.perf_counter() - clock
    codec, decoder_cfg = config.audio_encoder, config.decoder
    frame_rate = codec.sampling_rate / math.prod(codec.upsampling_ratios)
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, config.text_encoder.vocab_size, (1, MUSICGEN_PROMPT_TOKENS), generator=generator).to(device)
    sampling = {"do_sample": True, "guidance_scale": 3.0, "top_k": 250, "decoder_start_token_id": decoder_cfg.bos_token_id,
                "pad_token_id": decoder_cfg.pad_token_id}

    def generate(secs: float) -> torch.Tensor:
        new = musicgen_passes(secs, frame_rate, decoder_cfg.num_codebooks)["decoder"]
        with torch.no_grad():
            return model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new, **sampling)

    tell(f"warm-up: {WARMUP_SECONDS:g} s of music")
    clock = time.perf_counter()
    generate(WARMUP_SECONDS)
    warmup_s = time.perf_counter() - clock
    networks = {"text_encoder": model.text_encoder, "decoder": model.decoder, "audio_decoder": model.audio_encoder.decoder}
    formula = musicgen_passes(seconds, frame_rate, decoder_cfg.num_codebooks)
    tell(f"generating {seconds:g} s ({formula['decoder']} decoder steps)")
    with ForwardCounter(networks, keep_inputs=("text_encoder", "audio_decoder"), synchronize=sync) as counter:
        clock = time.perf_counter()
        audio = generate(seconds)
        if sync:
            sync()
        wall = time.perf_counter() - clock
    peak_rss = _peak_rss_mb()
    peak_gpu = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    tell("counting the FLOPs of one pass of each kind (text encoder, EnCodec decoder)")
    flops = {name: _kept_flops(networks[name], counter, name) for name in counter.inputs}
    extra = ("transformers' MusicgenForConditionalGeneration.generate runs a prefill pass itself (`prefill_outputs`, "
             "never read) and `_sample` runs its own: one decoder pass more than the steps")
    stages = {name: _stage(ROLES[name], counter.calls[name], counter.calls[name], formula[name], counter.seconds[name],
                           counter.seconds[name], flops.get(name), streamed_bytes(networks[name]),
                           _parameters(networks[name]), "weights" if name == "decoder" else "roofline",
                           extra if name == "decoder" and counter.calls[name] == formula[name] + 1 else None)
              for name in networks}
    return {"model": "musicgen", "shapes": spec["shapes"], "seconds": seconds, "steps": None, "windows": None,
            "guidance": {"decoder": sampling["guidance_scale"]}, "audio_seconds": audio.shape[-1] / codec.sampling_rate,
            "build_s": build_s, "warmup_s": warmup_s, "wall_s": wall, "rtf": wall / seconds,
            "other_s": wall - sum(s["seconds"] for s in stages.values()), "peak_rss_mb": peak_rss, "peak_gpu_mb": peak_gpu,
            "stages": stages, "total_passes": sum(s["hooked"] for s in stages.values()), "parameters": _parameters(model),
            "frame_rate": frame_rate, "codebooks": decoder_cfg.num_codebooks,
            "weights_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "sizes": {"decoder": {k: getattr(decoder_cfg, k) for k in ("num_hidden_layers", "hidden_size", "num_attention_heads",
                                                                        "ffn_dim", "num_codebooks", "vocab_size")},
                      "text_encoder": {k: getattr(config.text_encoder, k)
                                       for k in ("num_layers", "d_model", "num_heads", "d_ff")},
                      "audio_codec": {"sampling_rate": codec.sampling_rate, "upsampling_ratios": list(codec.upsampling_ratios),
                                      "num_filters": codec.num_filters}},
            "left_out": [f"the T5 tokenizer (a download): the prompt is {MUSICGEN_PROMPT_TOKENS} random token ids",
                         "trained weights: every weight is random (speed does not depend on them)"]}


def _child(spec_path: str) -> int:
    """The child process: run the task in SPEC (machine, melody, musicgen), write its result (or its one-line error)
    to spec["result"]."""
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    allocator = reuse_freed_memory()  # as `melody generate` runs; MusicGen's runs get the same

    def tell(line: str) -> None:
        print(PROGRESS + line, file=sys.stderr, flush=True)

    try:
        if spec["task"] == "machine":
            result = {**machine_figures(spec["device"], spec["threads"]), "allocator": allocator}
        else:
            result = (bench_musicgen if spec["task"] == "musicgen" else bench_melody)(spec, tell)
    except MelodyError as err:
        write_json_atomic(spec["result"], {"error": str(err)})
        return 2
    write_json_atomic(spec["result"], result)
    return 0


# --- the report ----------------------------------------------------------------------------------

def write_bench_report(report: dict, out: str | Path) -> tuple[Path, Path, Path]:
    """`out/bench.json`, `out/bench.md` (the tables) and `out/bench.png` (passes and seconds per stage), each atomically."""
    out = Path(out)
    json_path = write_json_atomic(out / "bench.json", report)
    md_path = write_text_atomic(out / "bench.md", markdown(report))
    return json_path, md_path, chart(report, out / "bench.png")


def _f(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:,.0f}"


def _pct(x: float) -> str:
    return f"{100 * x:+.1f} %".replace("-", "−")


def markdown(report: dict) -> str:
    """The report as Markdown: the machine, one table of every run's stages, the comparisons and Table 3."""
    m = report["machine"]
    where = m["gpu"] or f"{m['cpu']} ({m['cpu_count']} cores)"
    lines = [
        "# melody bench", "",
        f"{where}, {m['threads']} threads (OMP_WAIT_POLICY {m.get('omp_wait_policy')}), torch {m['torch']}, "
        f"allocator: {m.get('allocator', 'glibc defaults')}; "
        f"load average (1, 5, 15 min) {m['load_avg_start']} at start, "
        f"{m['load_avg_end']} at end. Measured once: matmul {m['matmul_gflops']['float32']:.1f} GFLOP/s fp32, "
        f"{m['matmul_gflops']['bfloat16']:.1f} GFLOP/s bf16 ({MATMUL_SIZE}² square); copy {m['copy_gb_s']:.1f} GB/s "
        "(256 MiB, read + write). Bounds use the fp32 rate, the bf16 rate for the DPD of an @bf16 run (its LM: its weights' bytes at their dtype).", "",
        *([] if report.get("complete", True) else [f"**Incomplete**: the report of the {len(report['runs'])} runs done when it "
                                                   "was stopped.", ""]),
        "| run | wall s | RTF | peak RSS MB | parameters | build s | passes (total) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        lines.append(f"| {r['label']} | {r['wall_s']:.2f} | {r['rtf']:.3f} | {r['peak_rss_mb']:.0f} "
                     f"| {r['parameters'] / 1e6:.1f} M "
                     f"| {r['build_s']:.1f} | {r['total_passes']} |")
    lines += ["", "Per stage: passes as the pipeline reports them / as forward hooks on the network counted them / by "
              "formula; seconds and RTF (seconds ÷ seconds of music); the bound is the roofline time of those passes "
              "(FLOPs ÷ matmul throughput or weight bytes ÷ bandwidth, the larger; LMs: weights once per token).", "",
              "| run | stage | passes (reported / hooks / formula) | seconds | RTF | GFLOP per pass | weight MB | bound s "
              "| measured ÷ bound |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        for name, s in r["stages"].items():
            per_pass = s["flops"] / s["hooked"] / 1e9 if s["flops"] is not None and s["hooked"] else None
            lines.append(f"| {r['label']} | {name} | {s['passes']} / {s['hooked']} / {s['formula']} | {s['seconds']:.3f} "
                         f"| {s['seconds'] / r['seconds']:.4f} | {_f(per_pass)} | {s['weight_bytes'] / 2**20:.1f} "
                         f"| {_f(s['bound_s'])} | {_f(s['over_bound'])} |")
        lines.append(f"| {r['label']} | other | — | {r['other_s']:.3f} | {r['other_s'] / r['seconds']:.4f} | | | | |")
    lines += ["", "## Mismatches", ""] + ([f"- {x}" for x in report["mismatches"]] or ["none"])
    graphed = [r for r in report["runs"] if r.get("graphed")]
    if graphed:
        lines += ["", "## With CUDA graphs (`melody.cuda_graphs`: the LM's token step and the DPD's pass replayed)", "",
                  "The runs above are eager, so that forward hooks count every pass; the same generation then ran with "
                  "graphs, after one untimed run at the same duration recorded them (its time: 'record s'). A "
                  "'compiled' row: the same with both networks through `torch.compile` before they were recorded.", "",
                  "| run | wall s eager | wall s graphed | speed-up | record s | LM s | DPD s | peak GPU MB | tokens = eager "
                  "| audio max abs diff |", "|---|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['label']}{' compiled' if kind == 'compiled' else ''} | {r['wall_s']:.2f} | {g['wall_s']:.3f} "
                  f"| {r['wall_s'] / g['wall_s']:.1f}× | {g.get('record_s', math.nan):.1f} "
                  f"| {g['stage_seconds']['semantic_lm']:.3f} | {g['stage_seconds']['dpd']:.3f} | {g['peak_gpu_mb']:.0f} "
                  f"| {g['tokens_equal_eager']} | {g['audio_max_abs_diff_eager']:.2g} |"
                  for r in graphed for kind in ("graphed", "compiled") if r.get(kind) and "wall_s" in r[kind] for g in [r[kind]]]
        lines += [f"\nThe compiled run of {r['label']} failed: {r['compiled']['error']}" for r in graphed
                  if r.get("compiled") and "error" in r["compiled"]]
    if report["comparisons"]:
        lines += ["", "## MusicGen ÷ MeLoDy (this run)", "",
                  "| seconds | MusicGen shapes | MeLoDy shapes | DPD steps | time ratio | time ratio, MeLoDy with CUDA graphs "
                  "| time ratio, MeLoDy compiled and graphed | passes ratio |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {c['seconds']:g} | {c['musicgen']} | {c['melody']} | {c.get('melody_steps')} | {c['time_ratio']:.2f} ({c['musicgen_wall_s']:.2f} s ÷ "
                  f"{c['melody_wall_s']:.2f} s) | {_f(c.get('time_ratio_graphed'))} | {_f(c.get('time_ratio_compiled'))} "
                  f"| {c['passes_ratio']:.2f} ({c['musicgen_passes']} ÷ {c['melody_passes']}) |"
                  for c in report["comparisons"]]
    lines += ["", "## The paper's Table 3 (forward passes) beside the measured counts", "",
              "| T s | MusicLM (25 + 200 + 400)·T | Noise2Music | MeLoDy 25·T + 20 | reduction (formula) | abstract "
              "| measured here: LM + DPD (all stages) |", "|---|---|---|---|---|---|---|"]
    for t in report["table3"]:
        measured = "; ".join(f"{k} {v['lm_plus_dpd']} ({v['all_stages']}), {v['dpd_windows']} windows"
                             for k, v in t["measured"].items()) or "—"
        lines.append(f"| {t['seconds']:g} | {t['musiclm']:,.0f} | {t['noise2music']:,} | {t['melody']:,.0f} "
                     f"| {_pct(t['reduction_vs_musiclm'])} | {_pct(t['abstract_reduction'])} | {measured} |")
    lines += ["", "The abstract's −99.6 % is not what Table 3's formula gives (−95.7 % at 10 s, −95.9 % at 30 s); both "
              "are printed. Our DPD samples 10 s windows advancing by 5 s, so it makes steps × windows passes where the "
              "paper counts 20."]
    left = {x for r in report["runs"] for x in r["left_out"]}
    if left:
        lines += ["", "Left out of the MusicGen build: " + "; ".join(sorted(left)) + "."]
    return "\n".join(lines) + "\n"


def chart(report: dict, path: Path) -> Path:
    """Two panels over the runs: forward passes per stage and seconds per stage (bars, log scales; bounds as ticks;
    a run's CUDA-graph rerun as diamonds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    roles = list(dict.fromkeys(s["role"] for r in runs for s in r["stages"].values())) + ["other (sampling, glue)"]
    width = 0.8 / len(roles)
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(8.0, 2.2 * len(runs) + 3), 4.4))
    graphed, compiled = [], []  # (x, seconds) of a stage in a run's CUDA-graph rerun, and in its compiled one
    for j, role in enumerate(roles):
        xs, passes, secs, bounds = [], [], [], []
        for i, r in enumerate(runs):
            other = {"role": roles[-1], "hooked": 0, "seconds": r["other_s"], "bound_s": None}
            shown = [("other", other)] if r["other_s"] >= 0.01 * r["wall_s"] else []  # MusicGen's sampling outside its networks
            for name, s in [*r["stages"].items(), *shown]:
                if s["role"] == role:
                    xs.append(i + (j - (len(roles) - 1) / 2) * width)
                    passes.append(s["hooked"])
                    secs.append(max(s["seconds"], 1e-4))
                    bounds.append(s["bound_s"])
                    again = (r.get("graphed") or {}).get("stage_seconds", {}).get(name)
                    if again is not None:
                        graphed.append((xs[-1], max(again, 1e-4)))
                    again = (r.get("compiled") or {}).get("stage_seconds", {}).get(name)
                    if again is not None:
                        compiled.append((xs[-1], max(again, 1e-4)))
        if role != roles[-1]:
            left.bar(xs, passes, width, label=role, color=f"C{j}")
        right.bar(xs, secs, width, label=role, color=f"C{j}" if role != roles[-1] else "0.6")
        for x, b in zip(xs, bounds):
            if b:
                right.plot([x - width / 2, x + width / 2], [b, b], "k-", lw=1.5)
    right.plot([], [], "k-", lw=1.5, label="roofline bound")
    if graphed:
        right.plot(*zip(*graphed), "D", mfc="white", mec="k", ms=4, ls="none", label="with CUDA graphs")
    if compiled:
        right.plot(*zip(*compiled), "*", mfc="gold", mec="k", ms=6, ls="none", label="compiled, with CUDA graphs")
    labels = [r["label"] for r in runs]
    for ax, title in ((left, "forward passes per stage"), (right, "wall seconds per stage")):
        ax.set_yscale("log")
        ax.set_xticks(range(len(runs)), labels, fontsize=7, rotation=15)
        ax.set_title(title, fontsize=9)
        bottom, top = ax.get_ylim()
        ax.set_ylim(bottom, top * 100)  # two decades of room above the tallest bar for the legend
        ax.legend(fontsize=7, loc="upper left", ncol=2)
    m = report["machine"]
    fig.suptitle(f"melody bench — {m['gpu'] or m['cpu']}, {m['threads']} threads, load {m['load_avg_start'][0]:.1f} at start",
                 fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return Path(path)


def summary(report: dict) -> str:
    """A few lines for the terminal: each run's wall, RTF, memory and passes; mismatches; MusicGen ratios; Table 3."""
    lines = []
    for r in report["runs"]:
        stages = ", ".join(f"{k} {s['hooked']}× {s['seconds']:.2f} s"
                           + (f" ({s['over_bound']:.1f}× bound)" if s["over_bound"] else "") for k, s in r["stages"].items())
        lines.append(f"{r['label']}: {r['wall_s']:.2f} s wall, RTF {r['rtf']:.3f}, peak {r['peak_rss_mb']:.0f} MB; {stages}")
    lines += [f"mismatch: {x}" for x in report["mismatches"]]
    lines += [f"{r['label']} with CUDA graphs: {r['graphed']['wall_s']:.3f} s wall (tokens as eager: "
              f"{r['graphed']['tokens_equal_eager']})" for r in report["runs"] if r.get("graphed")]
    lines += [f"{r['label']} compiled, with CUDA graphs: {r['compiled']['wall_s']:.3f} s wall (compiling and recording "
              f"{r['compiled']['record_s']:.1f} s)" for r in report["runs"] if r.get("compiled") and "wall_s" in r["compiled"]]
    lines += [f"{c['musicgen']} ÷ MeLoDy ({c['melody']}, {c.get('melody_steps')} steps, {c['seconds']:g} s): time {c['time_ratio']:.2f}×"
              + (f" ({c['time_ratio_graphed']:.2f}× with graphs)" if c.get("time_ratio_graphed") else "")
              + (f" ({c['time_ratio_compiled']:.2f}× compiled)" if c.get("time_ratio_compiled") else "")
              + f", passes {c['passes_ratio']:.2f}×"
              for c in report["comparisons"]]
    lines += [f"Table 3 at {t['seconds']:g} s: MusicLM {t['musiclm']:,.0f}, MeLoDy {t['melody']:,.0f} passes → "
              f"{_pct(t['reduction_vs_musiclm'])} (the abstract says {_pct(t['abstract_reduction'])})" for t in report["table3"]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
