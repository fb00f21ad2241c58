"""`melody.runtime`: the process-wide allocator setting (applied on glibc, the user's own choice wins) and the few-row
linear layers of a decoding LM's sampling copy."""

import copy
import os
import platform
import subprocess
import sys

import pytest
import torch

from melody.runtime import FEW_ROWS, FewRowLinear, few_row_linears, reuse_freed_memory

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


def test_few_row_linears_keep_the_weights_and_the_numbers():
    """A decoding LM's linear layers made `FewRowLinear`: the same state dict; for bf16 inputs of at most FEW_ROWS rows
    the product (W xᵀ)ᵀ equals torch's x Wᵀ up to the order of the sums (bf16 rounding), bias included; above that,
    or in float32, it is torch's linear itself, bit for bit."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.GELU(), torch.nn.Linear(96, 32, bias=False)).bfloat16()
    plain = copy.deepcopy(model)
    few_row_linears(model)
    assert [type(m) for m in model] == [FewRowLinear, torch.nn.GELU, FewRowLinear]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), plain.state_dict().values(), strict=True))
    with torch.no_grad():
        for shape in ((2, 1, 64), (FEW_ROWS, 64), (1, 64)):
            x = torch.randn(shape).bfloat16()
            out = model(x)
            assert out.shape == (*shape[:-1], 32) and out.dtype == torch.bfloat16
            torch.testing.assert_close(out, plain(x), rtol=2**-6, atol=2**-6)
        many = torch.randn(3, FEW_ROWS, 64).bfloat16()
        assert torch.equal(model(many), plain(many))
        model.float(), plain.float()
        x = torch.randn(2, 1, 64)
        assert torch.equal(model(x), plain(x))
