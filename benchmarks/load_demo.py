"""Load test of `melody demo` on loopback: bursts of concurrent API requests against the bundled model.

Starts `melody demo` (as `python -m melody.cli demo`, the bundled `tiny` model, `--max-queue`,
`--threads`) on a free loopback port, warms it up with two requests, then sends `--rounds` bursts of
`--concurrent` simultaneous `POST /api/generate` requests of `--seconds` of music each (seeds differ),
waiting for the server to be idle between bursts. Every request has a client timeout (`--timeout`); a
request that hits it counts as hung. The server process's resident memory (RSS, psutil) is sampled
every 20 ms throughout.

Reported (a row of `runs` in `benchmarks/results/load_demo.json`, replacing an earlier row of the same
bundle, concurrency, queue bound, seconds and threads): completed / refused (503) / other / hung counts; latency
percentiles of the completed requests (from send to the last byte) and of the refused ones; the
generation and queue-wait seconds the server reports in each record (`X-Melody-Record`); seconds of
music per wall second over the bursts; RSS before the bursts, its peak during them and after each
burst (flat: memory does not grow with the requests served).

    .venv/bin/python benchmarks/load_demo.py --concurrent 8 --max-queue 2 --seconds 5 --rounds 3 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import load_average, machine, merge_results  # noqa: E402

from melody.bundled import BUNDLE  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "load_demo.json"
PROMPTS = ("an upbeat funk groove with slap bass and drums", "a calm ambient piece with soft pads and piano")
MB = 2**20


def start(args) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "melody.cli", "demo", "--bundle", str(args.bundle), "--port", "0",
                             "--max-queue", str(args.max_queue), "--max-duration", str(args.seconds),
                             "--threads", str(args.threads)], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    match = re.match(r"melody demo: (http://\S+?)/ \(page\)", line)
    if match is None:
        proc.kill()
        sys.exit(f"the demo did not start: {line!r}")
    return proc, match.group(1)


def percentiles(values: list[float]) -> dict | None:
    if not values:
        return None
    q = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else values * 99
    return {"p50": round(q[49], 3), "p90": round(q[89], 3), "p99": round(q[98], 3), "max": round(max(values), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=BUNDLE)
    parser.add_argument("--concurrent", type=int, default=8, help="simultaneous requests per burst")
    parser.add_argument("--max-queue", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds of music per request")
    parser.add_argument("--rounds", type=int, default=3, help="bursts")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--timeout", type=float, default=300.0, help="client timeout per request (s)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    load_start = load_average()
    proc, url = start(args)
    server = psutil.Process(proc.pid)
    peak, stop_sampling = [0], threading.Event()

    def sample_rss() -> None:
        while not stop_sampling.wait(0.02):
            peak[0] = max(peak[0], server.memory_info().rss)

    def idle() -> None:
        while (h := httpx.get(f"{url}/api/health", timeout=30).json())["running"] or h["waiting"]:
            time.sleep(0.1)

    def one(i: int, barrier: threading.Barrier) -> dict:
        body = {"prompt": PROMPTS[i % len(PROMPTS)], "duration": args.seconds, "seed": i}
        barrier.wait()
        clock = time.perf_counter()
        try:
            r = httpx.post(f"{url}/api/generate", json=body, timeout=args.timeout)
        except httpx.TimeoutException:
            return {"status": "hung", "wall": time.perf_counter() - clock}
        out = {"status": r.status_code, "wall": time.perf_counter() - clock}
        if r.status_code == 200:
            record = json.loads(r.headers["x-melody-record"])
            out.update(generate=sum(record["seconds"].values()), waited=record["waited_seconds"], bytes=len(r.content))
        return out

    try:
        for i in range(2):  # warm-up: the first calls allocate what the later ones reuse
            httpx.post(f"{url}/api/generate", json={"prompt": PROMPTS[0], "duration": args.seconds, "seed": 10_000 + i},
                       timeout=args.timeout).raise_for_status()
        rss_before = server.memory_info().rss
        sampler = threading.Thread(target=sample_rss, daemon=True)
        sampler.start()
        answers, rss_after, clock = [], [], time.perf_counter()
        for k in range(args.rounds):
            barrier = threading.Barrier(args.concurrent)
            with ThreadPoolExecutor(args.concurrent) as pool:
                answers += list(pool.map(one, range(k * args.concurrent, (k + 1) * args.concurrent), [barrier] * args.concurrent))
            idle()
            rss_after.append(round(server.memory_info().rss / MB, 1))
        wall = time.perf_counter() - clock
        stop_sampling.set()
        sampler.join()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()

    done = [a for a in answers if a["status"] == 200]
    refused = [a for a in answers if a["status"] == 503]
    result = {
        "command": "python benchmarks/load_demo.py " + " ".join(sys.argv[1:]),
        "bundle": str(args.bundle), "concurrent": args.concurrent, "max_queue": args.max_queue, "seconds": args.seconds,
        "rounds": args.rounds, "requests": len(answers), "completed": len(done), "refused_503": len(refused),
        "other_status": sorted({a["status"] for a in answers} - {200, 503, "hung"}),
        "hung": sum(a["status"] == "hung" for a in answers), "client_timeout_s": args.timeout,
        "latency_completed_s": percentiles([a["wall"] for a in done]),
        "latency_refused_s": percentiles([a["wall"] for a in refused]),
        "server_generate_s": percentiles([a["generate"] for a in done]),
        "server_queue_wait_s": percentiles([a["waited"] for a in done]),
        "music_seconds_per_wall_second": round(len(done) * args.seconds / wall, 2),
        "rss_before_mb": round(rss_before / MB, 1), "rss_peak_mb": round(peak[0] / MB, 1),
        "rss_after_each_round_mb": rss_after,
    }
    merge_results(args.out, {"runs": [result]}, machine("cpu", args.threads, load_start),
                  {k: result[k] for k in ("bundle", "concurrent", "max_queue", "seconds")} | {"threads": args.threads})
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
