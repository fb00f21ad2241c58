"""Forward passes: counting them on real modules, and what the paper's Table 3 says they should be.

`ForwardCounter` counts (and times) the calls of any `nn.Module`s with forward hooks while it is active,
so a count is measured on the network itself, independent of whatever the caller reports (the pipeline
counts its own calls: `MeLoDy.generate` → `GenerateOutput.forward_passes`). A hook fires on every
`module(...)` call (`nn.Module.__call__`), not on a direct `module.forward(...)`: that is what one network
pass is. Nested modules are counted each on its own; a module given under two names counts under both.

The formulas:
- MeLoDy paper, Table 3, forward passes (NFE) for T seconds of music: MusicLM (25 + 200 + 400) · T
  (semantic, coarse and fine acoustic stages), Noise2Music 1000 + 800 + 800, MeLoDy 25 · T + 20 (the
  semantic LM at 25 tokens per second, 20 DPD steps). For 10 s that is 6 250 vs 270, −95.7 %; for 30 s
  18 750 vs 770, −95.9 % (derived); the abstract says −99.6 %, which that formula does not give
  (`shared/reference/melody-paper.md`), so both are printed (`table3`).
- Our pipeline (`melody_passes`): the MuLan text tower once, the LM once per semantic token (⌈25 · T⌉,
  the sliding windows' re-encoding included: `melody.semantic.sampling`), the DPD once per sampler step
  in each window (guidance batched into the same call; `dpd_windows` windows of `window_seconds` advancing
  by half of one, as `MeLoDy.latents` samples them), the VAE decoder once.
- MusicGen (Copet et al. 2023, §2.2, the delay pattern): K codebooks at frame rate f, each codebook one
  step behind the one before, so T seconds take f · T + K − 1 decoder steps, one pass each
  (`musicgen_passes`); classifier-free guidance runs both branches in one batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

TOKEN_RATE = 25  # semantic tokens per second (MeLoDy §3.1)
MUSICLM_RATES = (25, 200, 400)  # Table 3: MusicLM's passes per second (semantic, coarse, fine)
NOISE2MUSIC_PASSES = 1000 + 800 + 800  # Table 3: Noise2Music, any length
PAPER_DPD_STEPS = 20  # Table 3: MeLoDy's 25 · T + 20
ABSTRACT_REDUCTION = 0.996  # the abstract's "99.6 % fewer forward passes than MusicLM"


def signature(value: Any) -> Any:
    """A hashable summary of a call's inputs: tensors by shape and dtype, containers element by element,
    anything else by its type name; two calls with one signature do the same work in a shape-static network."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), str(value.dtype))
    if isinstance(value, (list, tuple)):
        return tuple(signature(v) for v in value)
    if isinstance(value, Mapping):
        return tuple((k, signature(v)) for k, v in sorted(value.items()))
    return type(value).__name__


class ForwardCounter:
    """Counts each named module's forward calls while the `with` block runs; hooks are removed on exit.

    `calls[name]`: calls made; `seconds[name]`: wall time inside those calls (`synchronize`, e.g.
    `torch.cuda.synchronize`, runs before each clock reading when given). For the modules named in
    `keep_inputs`, `inputs[name]` maps each distinct input `signature` to `(args, kwargs, calls)`: the first
    call's inputs and how many calls had that signature, so that one real pass of each kind can be re-run
    later (e.g. under a FLOP counter) and weighted by its calls. Counting starts from 0 at each `with`.
    """

    def __init__(self, modules: Mapping[str, nn.Module], keep_inputs: tuple[str, ...] = (),
                 synchronize: Callable[[], None] | None = None) -> None:
        unknown = set(keep_inputs) - set(modules)
        if unknown:
            raise ValueError(f"keep_inputs names modules that are not counted: {sorted(unknown)}")
        self.modules, self.keep_inputs, self.synchronize = dict(modules), tuple(keep_inputs), synchronize
        self.calls: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self.inputs: dict[str, dict[Any, list]] = {}
        self._handles: list = []
        self._started: dict[str, list[float]] = {}

    def __enter__(self) -> ForwardCounter:
        self.calls = {name: 0 for name in self.modules}
        self.seconds = {name: 0.0 for name in self.modules}
        self.inputs = {name: {} for name in self.keep_inputs}
        self._started = {name: [] for name in self.modules}
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_pre_hook(self._before(name), with_kwargs=True))
            self._handles.append(module.register_forward_hook(self._after(name), always_call=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _clock(self) -> float:
        if self.synchronize is not None:
            self.synchronize()
        return time.perf_counter()

    def _before(self, name: str):
        def hook(module, args, kwargs):
            self.calls[name] += 1
            if name in self.inputs:
                kept = self.inputs[name].setdefault(signature((args, kwargs)), [args, dict(kwargs), 0])
                kept[2] += 1
            self._started[name].append(self._clock())
        return hook

    def _after(self, name: str):
        def hook(module, args, output):
            self.seconds[name] += self._clock() - self._started[name].pop()
        return hook


def dpd_windows(seconds: float, window_seconds: float, latent_rate: float, frames_per_token: int) -> int:
    """How many DPD windows make `seconds` of latents: the first of `window_seconds` (whole tokens, at least one),
    then one per half window (the other half is the clean context each continuation keeps)."""
    total = math.ceil(seconds * latent_rate)
    window = max(frames_per_token, round(window_seconds * latent_rate))
    window -= window % frames_per_token
    context = window // 2 - (window // 2) % frames_per_token
    return 1 + max(0, math.ceil((total - window) / (window - context)))


def melody_passes(seconds: float, steps: int, windows: int) -> dict[str, int]:
    """Our pipeline's passes per stage for `seconds` of music (module docstring): MuLan text 1, LM ⌈25 · T⌉,
    DPD steps × windows, VAE decoder 1."""
    return {"mulan": 1, "semantic_lm": math.ceil(seconds * TOKEN_RATE), "dpd": steps * windows, "vae": 1}


def musicgen_passes(seconds: float, frame_rate: float, codebooks: int) -> dict[str, int]:
    """MusicGen's passes per stage: the text encoder once, the decoder f · T + K − 1 steps (delay pattern),
    the audio codec's decoder once."""
    return {"text_encoder": 1, "decoder": round(seconds * frame_rate) + codebooks - 1, "audio_decoder": 1}


def table3(seconds: float) -> dict[str, Any]:
    """The paper's Table 3 numbers for `seconds` of music and the reduction they imply, beside the abstract's claim."""
    musiclm = sum(MUSICLM_RATES) * seconds
    melody = TOKEN_RATE * seconds + PAPER_DPD_STEPS
    return {"seconds": seconds, "musiclm": musiclm, "noise2music": NOISE2MUSIC_PASSES, "melody": melody,
            "musiclm_formula": "(25 + 200 + 400) · T", "melody_formula": "25 · T + 20",
            "reduction_vs_musiclm": melody / musiclm - 1.0, "abstract_reduction": -ABSTRACT_REDUCTION}
