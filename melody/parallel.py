"""Order-preserving parallel map with a bounded look-ahead, for the corpus builders.

`multiprocessing.Pool.imap` drains its input iterator eagerly, which never ends on an endless job
plan (the corpus build stops when it has made enough audio); this map submits at most
`2 × workers` jobs ahead of the consumer, and yields results in input order, so output built from
them does not depend on worker timing.

Workers start from a fork server, not by forking the caller: a caller that already loaded
FluidSynth (or any library with threads and locks) deadlocks its forked children, which inherit a
lock held by a thread that no longer exists there.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle


def ordered_map(fn: Callable, items: Iterable, workers: int) -> Iterator:
    """`map(fn, items)` in order; with `workers > 1` over a process pool with a bounded look-ahead."""
    if workers <= 1:
        yield from map(fn, items)
        return
    items = iter(items)
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver"), initializer=_ignore_sigint)
    window: deque = deque()
    try:
        for item in items:
            window.append(pool.submit(fn, item))
            if len(window) >= 2 * workers:
                break
        while window:
            result = window.popleft().result()
            nxt = next(items, None)
            if nxt is not None:
                window.append(pool.submit(fn, nxt))
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
