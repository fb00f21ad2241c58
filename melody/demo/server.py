"""The demo's server: one MeLoDy model behind a bounded queue, over HTTP, with the Gradio page on the same port.

One model answers everyone, so it runs on one worker thread (`Studio`): a job waits there for the
jobs before it, and at most `max_queue` API requests may wait; one more is refused at once with 503
and a `Retry-After`, so a crowd is told to come back instead of piling up memory or timing out. The
page queues its own users (Gradio's queue: `max_size = max_queue`, one generation at a time) and runs
its jobs on the same worker, so page and API never run the model at the same time.

Routes (one FastAPI app; the page is mounted at `/` with `gr.mount_gradio_app`, see `app.py`):
- `GET /api/health`: status, the model's sample rate, the limits, the jobs running and waiting.
- `POST /api/generate`, JSON `{"prompt", "duration", "steps", "guidance", "seed"}` (all but the prompt
  optional) → `audio/wav`, 16-bit, exactly round(duration · rate) samples; the `X-Melody-Record` header
  holds the JSON record `melody generate` writes beside its audio (seed, steps, forward passes and wall
  seconds per stage) plus the seconds the request waited for the model.
- Errors are one JSON line `{"error": "..."}`: 422 for a bad request (the pipeline's own checks, this
  server's limits, or a body that does not parse), 503 when the queue is full.

Choices: the limits are the server's (`max_duration` per request, at most `MAX_STEPS` steps, guidance in
0 … `MAX_GUIDANCE`) and are checked before a job is queued; a request whose client hangs up while it
waits is dropped from the queue (a running one finishes); results are written to a temporary folder,
the page's last `KEEP_RESULTS` kept there (Gradio copies what it shows into its own cache), the API's
removed once sent. No `from __future__ import annotations` here: FastAPI reads the route's annotations.
"""

import asyncio
import json
import math
import shutil
import socket
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from melody.errors import MelodyError

MAX_STEPS = 50
MAX_GUIDANCE = 20.0
MAX_SEED = 2**32 - 1
DEFAULT_SECONDS = 10.0  # what the API makes when the request names no duration (at most max_duration)
KEEP_RESULTS = 32  # the page's results kept on disk (continuation reads the last one back)
PROMPT_AUDIO_SECONDS = 30.0  # a music prompt is read up to this long
CONTINUE_FACTOR = 4  # a continued clip grows to at most this many times max_duration
REQUEST_EXAMPLE = 'send JSON like {"prompt": "calm piano with soft strings", "duration": 5}'


class Busy(MelodyError):
    """The queue is full; `retry_after` is an estimate of the seconds until there is room (HTTP 503)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class Result:
    wav: Path  # 16-bit WAV, (channels, round(seconds · rate)) samples at record["sample_rate"]
    record: dict  # the sidecar `melody generate` writes, plus "waited_seconds"
    seconds: float  # of audio in the file


class Studio:
    """One MeLoDy model, the one thread that runs it, and the bound on the jobs waiting for it."""

    def __init__(self, model, max_queue: int = 4, max_duration: float = 30.0, threads: int | None = None,
                 bundle: str | Path | None = None) -> None:
        from melody.pipeline import check_duration

        if not isinstance(max_queue, int) or max_queue < 0:
            raise MelodyError(f"--max-queue must be 0 or more requests, got {max_queue}")
        if threads is not None and threads < 1:
            raise MelodyError(f"--threads must be at least 1, got {threads}")
        self.model, self.max_queue, self.bundle = model, max_queue, bundle
        self.max_duration = check_duration(max_duration)
        self.sample_rate, self.channels = model.vae.cfg.sample_rate, model.vae.cfg.channels
        self.steps, self.guidance = model.cfg.dpd.steps, model.cfg.dpd.guidance  # the bundle's defaults
        # the worker thread sets its own intra-op thread count: torch's setting is not shared by new threads
        self._pool = ThreadPoolExecutor(1, "melody-model", initializer=torch.set_num_threads if threads else None,
                                        initargs=(threads,) if threads else ())
        self._lock = threading.Lock()
        self._pending = self._running = self._made = 0  # jobs queued or running; running; results made
        self._last_job = 1.0  # wall seconds of the last job: the Retry-After estimate
        self.folder = Path(tempfile.mkdtemp(prefix="melody-demo-"))
        self._kept: deque[Path] = deque()

    @classmethod
    def load(cls, bundle: str | Path | None = None, **limits) -> "Studio":
        """A studio around the bundle's model (default: the bundled `tiny` one)."""
        from melody.bundled import BUNDLE
        from melody.pipeline import MeLoDy

        bundle = Path(bundle or BUNDLE)
        return cls(MeLoDy.from_pretrained(bundle), bundle=bundle, **limits)

    # --- requests: checked, then queued; each returns the job's future at once ---------------------

    def check(self, prompt: str | None, duration: float, steps: int | None, guidance: float | None, seed: int) -> float:
        """The request's duration, or its one-line `MelodyError`: the pipeline's own checks, then this server's limits."""
        from melody.pipeline import check_duration, check_prompts

        if prompt is not None:
            check_prompts([prompt])
        duration = check_duration(duration)
        if duration > self.max_duration:
            raise MelodyError(f"duration {duration:g} s is beyond this server's limit of {self.max_duration:g} s; "
                              "ask for less, then continue the clip")
        if steps is not None and not (_whole(steps) and 1 <= steps <= MAX_STEPS):
            raise MelodyError(f"steps must be a whole number from 1 to {MAX_STEPS}, got {steps}")
        if guidance is not None and not (isinstance(guidance, (int, float)) and math.isfinite(guidance)
                                         and 0 <= guidance <= MAX_GUIDANCE):
            raise MelodyError(f"guidance must be a number from 0 to {MAX_GUIDANCE:g}, got {guidance}")
        if not (_whole(seed) and 0 <= seed <= MAX_SEED):
            raise MelodyError(f"seed must be a whole number from 0 to {MAX_SEED}, got {seed}")
        return duration

    def generate(self, prompt: str | None, duration: float, steps: int | None = None, guidance: float | None = None,
                 seed: int = 0, music: str | Path | None = None, bounded: bool = True) -> "Future[Result]":
        """Queue music for a text prompt, or for a music prompt (an audio file, used instead of the text).

        `bounded`: refuse with `Busy` when `max_queue` jobs already wait (the API); the page passes False,
        its own queue bounds it."""
        duration = self.check(None if music is not None else prompt, duration, steps, guidance, seed)
        audio = None
        if music is not None:
            from melody.audio import load_audio

            audio = torch.from_numpy(load_audio(music, self.sample_rate, 1, duration=PROMPT_AUDIO_SECONDS))  # (1, samples)
        return self._submit(self._generate, bounded, prompt, duration, steps, guidance, seed, audio,
                            None if music is None else Path(music).name)

    def continue_(self, clip: str | Path, seconds: float, prompt: str | None = None, steps: int | None = None,
                  guidance: float | None = None, seed: int = 0, bounded: bool = True) -> "Future[Result]":
        """Queue the continuation of an audio file by `seconds`, steered by `prompt` (None: by the clip itself)."""
        from melody.audio import load_audio

        seconds = self.check(prompt, seconds, steps, guidance, seed)
        audio = load_audio(clip, self.sample_rate, self.channels, allow_silent=True)  # (channels, n)
        total, limit = audio.shape[-1] / self.sample_rate + seconds, CONTINUE_FACTOR * self.max_duration
        if total > limit:
            raise MelodyError(f"the continued clip would be {total:.1f} s long, beyond this server's limit of {limit:g} s; "
                              "generate a new one")
        return self._submit(self._continue, bounded, torch.from_numpy(audio)[None], seconds, prompt, steps, guidance, seed)

    def health(self) -> dict:
        with self._lock:
            running, waiting = self._running, self._pending - self._running
        return {"status": "ok", "bundle": str(self.bundle), "sample_rate": self.sample_rate,
                "max_duration": self.max_duration, "max_queue": self.max_queue, "max_steps": MAX_STEPS,
                "running": running, "waiting": waiting}

    def discard(self, result: Result) -> None:
        """Remove a result's files (the API's, once sent)."""
        shutil.rmtree(result.wav.parent, ignore_errors=True)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        shutil.rmtree(self.folder, ignore_errors=True)

    # --- the queue ----------------------------------------------------------------------------------

    def _submit(self, job: Callable, bounded: bool, *args) -> Future:
        with self._lock:
            if bounded and self._pending >= 1 + self.max_queue:  # one running, max_queue waiting
                waiting = self._pending - self._running
                raise Busy(f"the server is busy: {waiting} requests are waiting, the most it queues; "
                           "retry in a few seconds", retry_after=max(1, math.ceil(self._last_job * self._pending)))
            self._pending += 1
        future = self._pool.submit(self._timed, job, time.perf_counter(), *args)
        future.add_done_callback(self._finished)  # also for a job cancelled before it started
        return future

    def _timed(self, job: Callable, submitted: float, *args) -> Result:
        started = time.perf_counter()
        with self._lock:
            self._running += 1
        try:
            return job(started - submitted, *args)
        finally:
            with self._lock:
                self._running -= 1
                self._last_job = time.perf_counter() - started

    def _finished(self, future: Future) -> None:
        with self._lock:
            self._pending -= 1

    # --- the jobs, on the worker thread ---------------------------------------------------------------

    def _generate(self, waited: float, prompt, duration, steps, guidance, seed, audio, music_name) -> Result:
        from melody.results import generation_record

        output = self.model.generate(None if audio is not None else [prompt], duration, steps, guidance, seed=seed,
                                     prompt_audio=audio)
        record = generation_record(self.model, output, prompt=None if output.prompts is None else output.prompts[0],
                         prompt_audio=music_name, seed=seed, duration=duration, steps=steps or self.steps,
                         guidance=self.guidance if guidance is None else guidance)
        return self._save(output, record, waited)

    def _continue(self, waited: float, clip, seconds, prompt, steps, guidance, seed) -> Result:
        from melody.results import generation_record

        output = self.model.continue_(clip, seconds, None if prompt is None else [prompt], steps, guidance, seed=seed)
        record = generation_record(self.model, output, prompt=prompt, seed=seed, seconds_added=seconds,
                         input_seconds=round(clip.shape[-1] / self.sample_rate, 4), steps=steps or self.steps,
                         guidance=self.guidance if guidance is None else guidance)
        return self._save(output, record, waited)

    def _save(self, output, record: dict, waited: float) -> Result:
        """The first (only) clip of `output` as WAV + JSON sidecar in a result folder of its own."""
        from melody.results import write_result

        record["waited_seconds"] = round(waited, 4)
        with self._lock:
            self._made += 1
            folder = self.folder / f"{self._made:06d}"
            self._kept.append(folder)
            old = [self._kept.popleft() for _ in range(len(self._kept) - KEEP_RESULTS)]
        for gone in old:
            shutil.rmtree(gone, ignore_errors=True)
        audio = output.audio[0].numpy()  # (channels, samples)
        wav = write_result(folder / "music.wav", audio, output.sample_rate, record, plot=False)[0]
        return Result(wav, record, audio.shape[-1] / output.sample_rate)


def _whole(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _one_line(errors: list[dict]) -> str:
    """FastAPI's list of validation errors as one line naming the first field and what is wrong with it."""
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON; {REQUEST_EXAMPLE}"
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "the request body"
    message = str(first.get("msg", "invalid")).rstrip(".")
    return f"{where}: {message[:1].lower()}{message[1:]}{more}; {REQUEST_EXAMPLE}"


async def _answer(future: Future, request) -> Result | None:
    """The job's result; None if the client hung up while its job waited (the job is dropped from the queue)."""
    waiting = asyncio.wrap_future(future)
    while True:
        done, _ = await asyncio.wait({waiting}, timeout=0.25)
        if done:
            return waiting.result()
        if not future.running() and await request.is_disconnected() and future.cancel():
            return None


def create_app(studio: Studio, ui: bool = True):
    """The FastAPI app: `/api/health`, `/api/generate`, and (with `ui`) the Gradio page at `/`."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from pydantic import BaseModel, ConfigDict

    class GenerateRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")  # a misspelt key ('durration') is an error, not a default

        prompt: str
        duration: float | None = None  # DEFAULT_SECONDS, at most max_duration
        steps: int | None = None  # the bundle's
        guidance: float | None = None  # the bundle's
        seed: int = 0

    @asynccontextmanager
    async def lifespan(app):
        yield
        studio.close()

    app = FastAPI(title="melody demo", summary="MeLoDy text-to-music over HTTP", lifespan=lifespan)

    @app.exception_handler(Busy)
    async def busy(request: Request, err: Busy):
        return JSONResponse({"error": str(err)}, status_code=503, headers={"Retry-After": str(err.retry_after)})

    @app.exception_handler(MelodyError)
    async def bad_request(request: Request, err: MelodyError):
        return JSONResponse({"error": str(err)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def unreadable(request: Request, err: RequestValidationError):
        return JSONResponse({"error": _one_line(err.errors())}, status_code=422)

    @app.get("/api/health")
    def health() -> dict:
        return studio.health()

    @app.post("/api/generate", response_class=Response,
              responses={200: {"content": {"audio/wav": {}}, "description": "16-bit WAV; X-Melody-Record: the JSON record"},
                         422: {"description": '{"error": "..."}: a bad request'},
                         503: {"description": '{"error": "..."}: the queue is full; retry after Retry-After seconds'}})
    async def generate(body: GenerateRequest, request: Request):
        """Music for a text prompt, as WAV bytes."""
        duration = min(DEFAULT_SECONDS, studio.max_duration) if body.duration is None else body.duration
        future = studio.generate(body.prompt, duration, body.steps, body.guidance, body.seed)
        result = await _answer(future, request)
        if result is None:
            return Response(status_code=499)  # nobody is listening: the client closed the connection
        data = result.wav.read_bytes()
        studio.discard(result)
        return Response(data, media_type="audio/wav",
                        headers={"X-Melody-Record": json.dumps(result.record, separators=(",", ":"))})

    if ui:
        from melody.demo.app import mount_ui

        app = mount_ui(app, studio)
    return app


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free one); a one-line error when it is taken."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as err:
        sock.close()
        raise MelodyError(f"cannot listen on {host}:{port} ({err.strerror}); pick another --port or --host") from None
    return sock


def serve(bundle: str | Path | None = None, host: str = "127.0.0.1", port: int = 7860, max_queue: int = 4,
          max_duration: float = 30.0, threads: int | None = None, on_ready: Callable[[str], None] | None = None) -> None:
    """Load the bundle and serve the page at `/` and the API under `/api` on one port until interrupted.

    The port is bound before the model loads (a taken port fails at once); `on_ready(url)` is told the
    address once the model is loaded, with the real port when `port` is 0."""
    import uvicorn

    if threads is not None:
        if threads < 1:
            raise MelodyError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    sock = listen(host, port)
    try:
        studio = Studio.load(bundle, max_queue=max_queue, max_duration=max_duration, threads=threads)
        app = create_app(studio)
        shown = f"[{host}]" if ":" in host else host
        if on_ready is not None:
            on_ready(f"http://{shown}:{sock.getsockname()[1]}")
        uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)).run(sockets=[sock])
    finally:
        sock.close()
