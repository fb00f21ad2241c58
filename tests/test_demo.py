"""The demo's server on a tiny random bundle: the API's routes and errors, the queue bound, the page's handlers, a load test."""

import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
import soundfile as sf
from test_pipeline import bundle  # noqa: F401 (the fixture)

from melody.audio import save_audio
from melody.demo.server import Studio, create_app, listen

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RATE = 8_000  # the tiny bundle's
MAX_QUEUE, MAX_DURATION = 2, 2.0


@pytest.fixture(scope="module")
def studio(bundle):  # noqa: F811
    studio = Studio.load(bundle, max_queue=MAX_QUEUE, max_duration=MAX_DURATION, threads=1)
    yield studio
    studio.close()


@pytest.fixture(scope="module")
def url(studio):
    """The demo app (page and API) served by uvicorn on a free loopback port, in a thread of this process."""
    import uvicorn

    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(studio), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def post(url: str, body, timeout: float = 60.0) -> httpx.Response:
    if isinstance(body, (dict, list)):
        return httpx.post(f"{url}/api/generate", json=body, timeout=timeout)
    return httpx.post(f"{url}/api/generate", content=body, headers={"content-type": "application/json"}, timeout=timeout)


def wav_of(response: httpx.Response) -> tuple[np.ndarray, sf._SoundFileInfo]:
    data = io.BytesIO(response.content)
    return sf.read(data, dtype="float32", always_2d=True)[0], sf.info(io.BytesIO(response.content))


def idle(url: str, timeout: float = 10.0) -> dict:
    """/api/health once nothing runs or waits (failing after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        health = httpx.get(f"{url}/api/health", timeout=10).json()
        if health["running"] == health["waiting"] == 0 or time.monotonic() > deadline:
            return health
        time.sleep(0.05)


def test_health_names_the_model_and_the_limits(url, bundle):  # noqa: F811
    r = httpx.get(f"{url}/api/health", timeout=10)
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "bundle": str(bundle), "sample_rate": RATE, "max_duration": MAX_DURATION,
                        "max_queue": MAX_QUEUE, "max_steps": 50, "running": 0, "waiting": 0}


def test_the_page_and_the_api_share_one_port(url):
    r = httpx.get(f"{url}/", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "melody: text to music" in r.text  # the page config gradio embeds


@pytest.mark.parametrize("duration", [0.3, 1.7])
def test_generate_returns_a_wav_of_exactly_duration_times_rate_and_its_record(url, studio, duration):
    kept = set(studio.folder.iterdir())
    r = post(url, {"prompt": "calm piano", "duration": duration, "steps": 2, "guidance": 1.5, "seed": 7})
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    audio, info = wav_of(r)
    assert (info.format, info.subtype, info.samplerate, info.channels) == ("WAV", "PCM_16", RATE, 1)
    assert info.frames == round(duration * RATE)
    record = json.loads(r.headers["x-melody-record"])
    windows = 1 + max(0, math.ceil((math.ceil(duration * 50) - 50) / 25))  # 1 s DPD windows advancing by 0.5 s
    assert record["forward_passes"] == {"mulan": 1, "semantic_lm": math.ceil(duration * 25), "dpd": windows * 2, "vae": 1}
    assert {k: record[k] for k in ("prompt", "seed", "duration", "steps", "guidance", "sample_rate")} == {
        "prompt": "calm piano", "seed": 7, "duration": duration, "steps": 2, "guidance": 1.5, "sample_rate": RATE}
    assert set(record["seconds"]) == {"mulan", "semantic_lm", "dpd", "vae"} and record["waited_seconds"] >= 0
    # the same call of the pipeline, only written as 16-bit PCM
    direct = studio.model.generate(["calm piano"], duration, 2, 1.5, seed=7).audio[0]
    assert np.abs(audio.T - direct.numpy()).max() <= 1.5 / 32768
    assert set(studio.folder.iterdir()) == kept, "the API's result files are removed once sent"


def test_the_same_seed_gives_the_same_bytes_and_another_seed_other_music(url):
    one, again, other = (post(url, {"prompt": "funk", "duration": 0.5, "seed": s}) for s in (3, 3, 4))
    assert one.status_code == again.status_code == other.status_code == 200
    assert one.content == again.content and one.content != other.content


@pytest.mark.parametrize("body, message", [
    ({"prompt": "", "duration": 1}, "a prompt is empty; describe the music"),
    ({"prompt": "x" * 1001, "duration": 1}, "a prompt is 1001 characters long; keep it under 1000"),
    ({"prompt": "funk", "duration": 3}, "duration 3 s is beyond this server's limit of 2 s"),
    ({"prompt": "funk", "duration": -1}, "duration must be a positive number of seconds, got -1"),
    ({"prompt": "funk", "duration": "long"}, "duration: input should be a valid number"),
    ({"prompt": "funk", "steps": 0}, "steps must be a whole number from 1 to 50, got 0"),
    ({"prompt": "funk", "steps": 51}, "steps must be a whole number from 1 to 50, got 51"),
    ({"prompt": "funk", "guidance": 21}, "guidance must be a number from 0 to 20, got 21"),
    ({"prompt": "funk", "seed": -1}, "seed must be a whole number from 0 to 4294967295, got -1"),
    ({"prompt": "funk", "seed": 1.5}, "seed: input should be a valid integer"),
    ({"prompt": "funk", "durration": 1}, "durration: extra inputs are not permitted"),
    ({"duration": 1}, "prompt: field required"),
    (b"prompt=funk", "the request body is not valid JSON"),
])
def test_a_bad_request_is_422_with_a_one_line_message_and_queues_nothing(url, body, message):
    r = post(url, body)
    assert r.status_code == 422 and r.headers["content-type"] == "application/json"
    error = r.json()
    assert list(error) == ["error"] and "\n" not in error["error"]
    assert error["error"].startswith(message), error["error"]
    health = idle(url, timeout=0)
    assert (health["running"], health["waiting"]) == (0, 0)


class Gate:
    """Holds every `model.generate` call until opened, counting the calls that got to the model."""

    def __init__(self, generate) -> None:
        self.generate, self.opened, self.calls = generate, threading.Event(), 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        assert self.opened.wait(60), "the gate was never opened"
        return self.generate(*args, **kwargs)


def wait_for(url: str, running: int, waiting: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (h := httpx.get(f"{url}/api/health", timeout=10).json())["running"] != running or h["waiting"] != waiting:
        assert time.monotonic() < deadline, f"expected {running} running and {waiting} waiting, health says {h}"
        time.sleep(0.02)


def test_beyond_max_queue_waiting_requests_a_request_gets_503_and_the_admitted_ones_complete(url, studio, monkeypatch):
    gate = Gate(studio.model.generate)
    monkeypatch.setattr(studio.model, "generate", gate)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(post, url, {"prompt": "funk", "duration": 0.5})
        wait_for(url, running=1, waiting=0)
        queued = [pool.submit(post, url, {"prompt": "funk", "duration": 0.5, "seed": s}) for s in range(MAX_QUEUE)]
        wait_for(url, running=1, waiting=MAX_QUEUE)
        refused = post(url, {"prompt": "funk", "duration": 0.5}, timeout=10)
        assert refused.status_code == 503
        assert refused.json() == {"error": f"the server is busy: {MAX_QUEUE} requests are waiting, the most it queues; "
                                           "retry in a few seconds"}
        assert int(refused.headers["retry-after"]) >= 1
        gate.opened.set()
        done = [f.result(timeout=60) for f in (first, *queued)]
    assert [r.status_code for r in done] == [200] * (1 + MAX_QUEUE)
    assert all(wav_of(r)[1].frames == round(0.5 * RATE) for r in done)
    assert gate.calls == 1 + MAX_QUEUE  # the refused request never reached the model
    health = idle(url)
    assert (health["running"], health["waiting"]) == (0, 0)


def test_a_request_whose_client_leaves_while_it_waits_is_dropped_from_the_queue(url, studio, monkeypatch):
    gate = Gate(studio.model.generate)
    monkeypatch.setattr(studio.model, "generate", gate)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(post, url, {"prompt": "funk", "duration": 0.5})
        wait_for(url, running=1, waiting=0)
        leaving = pool.submit(post, url, {"prompt": "funk", "duration": 0.5}, 2.0)
        wait_for(url, running=1, waiting=1)  # it waits behind the first ...
        with pytest.raises(httpx.ReadTimeout):
            leaving.result(timeout=30)  # ... and gives up after 2 s
        wait_for(url, running=1, waiting=0, timeout=5)  # its job left the queue while the first still runs
        gate.opened.set()
        assert first.result(timeout=60).status_code == 200
    idle(url)
    assert gate.calls == 1


def test_the_page_shows_errors_as_messages_makes_music_from_text_or_audio_and_continues_it(studio, tmp_path):
    import gradio as gr

    from melody.demo.app import on_continue, on_generate

    generate, continue_ = on_generate(studio), on_continue(studio)
    with pytest.raises(gr.Error, match="a prompt is empty"):
        generate("  ", 1.0, 2, 2.5, 0, None)
    with pytest.raises(gr.Error, match="nothing to continue yet"):
        continue_(None, "funk", 1.0, 2, 2.5, 0)
    with pytest.raises(gr.Error, match="no such audio file"):
        generate("", 1.0, 2, 2.5, 0, str(tmp_path / "missing.wav"))

    wav, png, stats, record = generate("calm piano", 1.0, 2, 2.5, 5, None)
    assert sf.info(wav).frames == RATE and Path(png).stat().st_size > 1000 and png.endswith(".png")
    assert stats.startswith("**1 s** of music in ") and "seed 5 · 2 steps" in stats
    assert "forward passes: MuLan 1 · semantic LM 25 · DPD 2 · VAE 1" in stats
    assert record["prompt"] == "calm piano" and record["seed"] == 5

    longer, _, stats, record = continue_(wav, "", 0.5, 2, 2.5, 1)
    before, after = sf.read(wav, dtype="int16")[0], sf.read(longer, dtype="int16")[0]
    assert len(after) == RATE + RATE // 2 and np.array_equal(after[:RATE], before)  # the input kept, sample for sample
    assert record["seconds_added"] == 0.5 and record["input_seconds"] == 1.0 and stats.startswith("**0.5 s** of music")

    tune = tmp_path / "tune.wav"
    save_audio(tune, 0.3 * np.sin(np.arange(RATE) * 2 * np.pi * 440 / RATE)[None], RATE)
    wav, _, _, record = generate("ignored: the music prompt is used", 0.5, 2, 2.5, 0, str(tune))
    assert sf.info(wav).frames == RATE // 2 and record["prompt"] is None and record["prompt_audio"] == "tune.wav"

    long = tmp_path / "long.wav"
    save_audio(long, 0.1 * np.ones((1, int(7.5 * RATE)), np.float32), RATE)
    with pytest.raises(gr.Error, match=r"the continued clip would be 8.5 s long, beyond this server's limit of 8 s"):
        continue_(str(long), "", 1.0, 2, 2.5, 0)


def start_demo(bundle_path: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """`python -m melody.cli demo --port 0 ...` and the URL from its banner."""
    proc = subprocess.Popen([sys.executable, "-m", "melody.cli", "demo", "--bundle", str(bundle_path), "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    line = proc.stdout.readline()  # the banner, once the model is loaded (or nothing, if it failed)
    match = re.match(r"melody demo: (http://127\.0\.0\.1:\d+)/ \(page\)", line)
    if match is None:
        proc.kill()
        pytest.fail(f"the demo did not start: {line!r} {proc.stderr.read()[-2000:]}")
    return proc, match.group(1)


def stop(proc: subprocess.Popen) -> tuple[int, str]:
    """Ctrl-C: uvicorn shuts down, then re-raises the interrupt (exit status 130). (status, stderr)"""
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=30), proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_load_many_concurrent_requests_complete_or_are_refused_fast_and_memory_stays_bounded(bundle):  # noqa: F811
    n, seconds = 8, 1.0
    proc, url = start_demo(bundle, "--max-queue", str(MAX_QUEUE), "--max-duration", "2", "--threads", "1")
    try:
        server = psutil.Process(proc.pid)
        for _ in range(2):  # warm up: the first calls allocate what later ones reuse
            assert post(url, {"prompt": "funk", "duration": seconds}).status_code == 200
        baseline, peak, sampling = server.memory_info().rss, [0], threading.Event()

        def sample_rss() -> None:
            while not sampling.wait(0.02):
                peak[0] = max(peak[0], server.memory_info().rss)

        start = threading.Barrier(n)

        def one(i: int):
            start.wait()
            clock = time.perf_counter()
            return post(url, {"prompt": "funk", "duration": seconds, "seed": i}, timeout=120), time.perf_counter() - clock

        watcher = threading.Thread(target=sample_rss)
        watcher.start()
        with ThreadPoolExecutor(n) as pool:
            answers = list(pool.map(one, range(n)))
        sampling.set()
        watcher.join()
        codes = [r.status_code for r, _ in answers]
        assert set(codes) <= {200, 503}, codes
        # the first 1 + max_queue to arrive are always admitted; the rest are admitted only as room frees up
        assert codes.count(200) >= 1 + MAX_QUEUE, codes
        for r, wall in answers:
            if r.status_code == 200:
                assert wav_of(r)[1].frames == round(seconds * RATE)
            else:
                assert r.json()["error"].startswith("the server is busy") and wall < 5.0  # refused at once
        assert peak[0] - baseline < 150 * 2**20, f"RSS grew {(peak[0] - baseline) / 2**20:.0f} MB under load"
        health = idle(url)
        assert (health["running"], health["waiting"]) == (0, 0)
    finally:
        status, errors = stop(proc)
    assert status in (0, 130) and "Traceback" not in errors, errors


def test_a_taken_port_is_a_one_line_error(bundle):  # noqa: F811
    sock = listen("127.0.0.1", 0)
    try:
        out = subprocess.run([sys.executable, "-m", "melody.cli", "demo", "--bundle", str(bundle), "--port",
                              str(sock.getsockname()[1])], capture_output=True, text=True, timeout=120)
    finally:
        sock.close()
    assert out.returncode == 2 and out.stdout == ""
    assert re.fullmatch(r"error: cannot listen on 127\.0\.0\.1:\d+ \(Address already in use\); pick another --port or --host\n",
                        out.stderr), out.stderr
