"""Where the sampling time of the `paper` shapes goes on a GPU: the semantic LM's time per token (fp32 weights, and
the bf16 copy `semantic_lm.precision=bf16` samples from), eagerly and with its decode step replayed as a CUDA graph,
with the operators that take it; and one DPD pass (fp32 and under bf16 autocast; the SRU through its fused kernel,
through its step loop, and the GRU), eagerly and replayed as a CUDA graph. With `--compile`, also the LM's step and
the DPD's pass through `torch.compile` before they are recorded (`semantic_lm.compile`, `dpd.compile`), with the
operators of one compiled token step and pass. Random weights; times are medians after warm-up (the compilation
happens in the warm-up call and is timed on its own as `..._compile_s`).

    python benchmarks/gpu_profile.py --out DIR        # writes DIR/gpu_profile.json and DIR/gpu_profile.txt
    python benchmarks/gpu_profile.py --out DIR --compile --recurrences sru_fused --no-fp32
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import torch  # noqa: E402
from common import sync, timed  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from melody.config import preset  # noqa: E402
from melody.cuda_graphs import GraphedCalls  # noqa: E402
from melody.dpd import DPD  # noqa: E402
from melody.modules import fused_sru  # noqa: E402
from melody.io import write_json_atomic, write_text_atomic  # noqa: E402
from melody.pipeline import at_precision, linears_in  # noqa: E402
from melody.runtime import Compiled, stacked_gates  # noqa: E402
from melody.semantic.lm import SemanticLM  # noqa: E402
from melody.semantic.sampling import generate  # noqa: E402


def operator_table(title: str, device: torch.device, fn) -> str:
    """One call of `fn` under the profiler: the operators that took its time (GPU time on a GPU), as a titled table."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof, torch.no_grad():
        fn()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return f"== {title}\n" + prof.key_averages().table(sort_by=key, row_limit=18)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--compile", action="store_true", help="also the compiled LM step and DPD pass, recorded")
    parser.add_argument("--recurrences", default="sru_fused,sru_loop,gru", help="the DPD variants, comma-separated")
    parser.add_argument("--no-fp32", dest="fp32", action="store_false", help="bf16 only (the samplers' GPU precision)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = preset(args.preset)
    torch.manual_seed(0)
    report, text = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}, []

    lm = SemanticLM.from_config(cfg).to(device).eval()
    mulan = torch.randint(0, cfg.mulan.codebook_size, (1, lm.condition_length), device=device)
    lms = [("fp32", lm)] if args.fp32 else []
    # the bf16 copy as the pipeline samples from it on a GPU (`MeLoDy.lm_at_precision`)
    for name, model in lms + [("bf16", stacked_gates(copy.deepcopy(lm).to(torch.bfloat16).eval()))]:
        for graphs, compiled in ((False, False), (True, False)) + (((True, True),) if args.compile else ()):
            def run(n, model=model, graphs=graphs, compiled=compiled):
                with torch.no_grad():
                    generate(model, mulan, n, guidance=cfg.semantic_lm.guidance, graphs=graphs, compiled=compiled,
                             generator=torch.Generator(device).manual_seed(0))
            label = f"lm_{name}{'_compiled' if compiled else ''}{'_graphed' if graphs else ''}"
            if compiled:
                clock = time.perf_counter()
                run(4)
                report[f"{label}_compile_s"] = time.perf_counter() - clock
            short, long = timed(lambda: run(4), 3, device.type), timed(lambda: run(4 + args.tokens), 3, device.type)
            report[f"{label}_ms_per_token"] = (long - short) / args.tokens * 1e3
        text.append(operator_table(f"semantic LM, {name} weights, 12 tokens, eager", device, lambda model=model: generate(
            model, mulan, 12, guidance=cfg.semantic_lm.guidance, generator=torch.Generator(device).manual_seed(0))))
        if args.compile:  # the compiled step, outside a graph, so that the profiler sees its kernels
            text.append(operator_table(f"semantic LM, {name} weights, 12 tokens, compiled (not recorded)", device,
                                       lambda model=model: generate(model, mulan, 12, guidance=cfg.semantic_lm.guidance,
                                                                    compiled=True,
                                                                    generator=torch.Generator(device).manual_seed(0))))

    dpd_report = {}
    frames = int(cfg.dpd.window_seconds * cfg.vae.sample_rate / torch.tensor(cfg.vae.strides).prod().item())
    tokens = torch.randint(0, cfg.tokenizer.codebook_size, (2, int(cfg.dpd.window_seconds * cfg.tokenizer.frame_rate)),
                           device=device)
    variants = {"sru_fused": ("sru", True), "sru_loop": ("sru", False), "gru": ("gru", False)}
    for label in args.recurrences.split(","):
        recurrence, fused = variants[label]
        cfg.dpd.recurrence = recurrence
        fused_sru.enabled = fused
        dpd = DPD.from_config(cfg).to(device).eval()
        x, delta = torch.randn(2, frames, cfg.dpd.latent_dim, device=device), torch.full((2, frames), 0.7, device=device)
        for precision in ("fp32", "bf16") if args.fp32 else ("bf16",):
            # as the pipeline samples it: at bf16, a copy with bf16 linear weights under autocast (`dpd_at_precision`)
            network = dpd if precision == "fp32" else linears_in(dpd, torch.bfloat16)
            net = at_precision(network, precision, device)
            graphed = GraphedCalls(net)
            with torch.no_grad():
                dpd_report[f"{label}_{precision}_s_per_pass"] = timed(lambda net=net: net(x, delta, tokens), 3, device.type)
                dpd_report[f"{label}_{precision}_graphed_s_per_pass"] = timed(lambda g=graphed: g(x, delta, tokens), 3,
                                                                             device.type)
            if recurrence == "sru" and precision == "bf16":
                text.append(operator_table(f"DPD pass, {label}, bf16 autocast, eager", device,
                                           lambda net=net: net(x, delta, tokens)))
            del graphed
            if args.compile:  # as `dpd.compile` samples it: the network compiled, under the same autocast, recorded
                compiled = at_precision(Compiled(network), precision, device)
                with torch.no_grad():
                    clock = time.perf_counter()
                    compiled(x, delta, tokens)
                    sync(device.type)
                    dpd_report[f"{label}_{precision}_compiled_compile_s"] = time.perf_counter() - clock
                    dpd_report[f"{label}_{precision}_compiled_s_per_pass"] = timed(lambda: compiled(x, delta, tokens), 3,
                                                                                  device.type)
                    graphed = GraphedCalls(compiled)
                    dpd_report[f"{label}_{precision}_compiled_graphed_s_per_pass"] = timed(
                        lambda g=graphed: g(x, delta, tokens), 3, device.type)
                if recurrence == "sru" and precision == "bf16":
                    text.append(operator_table(f"DPD pass, {label}, bf16 autocast, compiled (not recorded)", device,
                                               lambda: compiled(x, delta, tokens)))
                del graphed, compiled
        del dpd
    fused_sru.enabled = True
    report["dpd"] = dpd_report
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "gpu_profile.json", report)
    write_text_atomic(args.out / "gpu_profile.txt", "\n\n".join(text))
    print(report)


if __name__ == "__main__":
    main()
