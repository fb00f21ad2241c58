"""The process-wide allocator setting (`melody.runtime`): applied on glibc, and the user's own choice wins."""

import os
import platform
import subprocess
import sys

import pytest

from melody.runtime import reuse_freed_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def applied(env: dict[str, str]) -> str:
    """What `reuse_freed_memory` did in a fresh interpreter with `env` (its malloc settings stay out of this one)."""
    code = "from melody.runtime import reuse_freed_memory; print(reuse_freed_memory())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_freed_blocks_are_kept_on_glibc(monkeypatch):
    for key in ("MELODY_MALLOC", "LD_PRELOAD", "GLIBC_TUNABLES"):
        monkeypatch.delenv(key, raising=False)
    env = {k: v for k, v in os.environ.items() if not (k.startswith("MALLOC_") and k.endswith("_"))}
    assert applied(env) == "glibc, freed blocks kept for reuse"


@pytest.mark.parametrize(("setting", "expected"), [
    ({"MELODY_MALLOC": "system"}, "glibc defaults (MELODY_MALLOC=system)"),
    ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}, "the preloaded allocator"),
    ({"MALLOC_ARENA_MAX_": "2"}, "glibc, tuned by the environment"),
])
def test_the_users_own_allocator_settings_win(monkeypatch, setting, expected):
    for key in ("MELODY_MALLOC", "LD_PRELOAD", "GLIBC_TUNABLES"):
        monkeypatch.delenv(key, raising=False)
    for key, value in setting.items():
        monkeypatch.setenv(key, value)
    assert reuse_freed_memory().startswith(expected)
