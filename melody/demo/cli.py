"""`melody demo`: the page at / and the HTTP API under /api, on one port (registered in `melody.cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

BundleOpt = Annotated[Optional[Path], typer.Option("--bundle", help="Model bundle folder (default: the bundled tiny model).")]
HostOpt = Annotated[str, typer.Option("--host", help="Address to listen on; 0.0.0.0 serves other machines too.")]
PortOpt = Annotated[int, typer.Option("--port", help="Port (0: any free one, printed).")]
QueueOpt = Annotated[int, typer.Option("--max-queue", help="Requests that may wait for the model; more are refused (503).")]
DurationOpt = Annotated[float, typer.Option("--max-duration", help="The most seconds of music one request may ask for.")]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", help="Intra-op threads of the model (default: torch's).")]


def demo_command(bundle: BundleOpt = None, host: HostOpt = "127.0.0.1", port: PortOpt = 7860, max_queue: QueueOpt = 4,
                 max_duration: DurationOpt = 30.0, threads: ThreadsOpt = None) -> None:
    """Serve MeLoDy in a web page and over HTTP (POST /api/generate → WAV), with a bounded queue."""
    from melody.demo.server import serve

    def ready(url: str) -> None:
        typer.echo(f"melody demo: {url}/ (page), {url}/api/generate and {url}/api/health (API); "
                   f"queue {max_queue}, up to {max_duration:g} s per request; Ctrl-C stops")

    serve(bundle, host, port, max_queue, max_duration, threads, on_ready=ready)
