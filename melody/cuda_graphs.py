"""CUDA graphs for the samplers' repeated network calls: the semantic LM's decode step and the DPD's pass.

Why: on a GPU both samplers were bound by kernel launches, not by arithmetic. The `paper` LM's token step kept
its kernels busy 2.3 of its 13.4 ms, and the DPD's SRU launched 3 kernels per frame of a segment
(benchmarks/results/gpu/gpu_profile.txt; since then one kernel per layer and direction, `melody.modules.fused_sru`).
A CUDA graph records a call's kernels once and replays them with one launch: PyTorch's `torch.cuda.graph`, the
mechanism under `torch.compile(mode="reduce-overhead")` and the static-cache decoders of gpt-fast and vLLM.
Recording by hand keeps the models plain modules and costs no compilation.

The protocol (`GraphedStep`): the inputs are copied into static buffers, the recorded kernels run, and the output is
copied out of its static buffer, so the next replay cannot overwrite what the caller holds. Recording runs the
function twice on a side stream first (cuBLAS and the allocator settle there), then records one call, which runs
nothing; `rewind` undoes the warm-up calls' effect on state they changed. On any other device the same object calls
the function eagerly on the same buffers, so CPU tests exercise everything but the recording itself.

A recorded function must keep its shapes (`GraphedCalls` records one graph per input signature), must not wait on
the host (no `.item()`, no `bool(tensor)`), and keeps any state it changes in tensors (the static KV cache's write
position, `melody.modules.transformer.StaticKVCache`). Autocast around a recording must have its weight cache off
(`torch.autocast(..., cache_enabled=False)`): a cached cast would be recorded as a read of memory freed later.
Forward hooks fire only while recording; count calls outside the graph (the pipeline's `_Counted` does).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch

WARMUP_CALLS = 2


class GraphedStep:
    """`fn(*inputs) → tensor`, recorded once as a CUDA graph for inputs shaped like `example` and replayed.

    `rewind()` (optional) is called after the warm-up calls, to undo what they changed in the state `fn` reads.
    Inputs not on a CUDA device, or `record=False`: `fn` runs eagerly on the static buffers (`recorded` is False).
    """

    def __init__(self, fn: Callable[..., torch.Tensor], example: tuple[torch.Tensor, ...],
                 rewind: Callable[[], None] | None = None, record: bool = True) -> None:
        self.fn = fn
        self.inputs = tuple(x.detach().clone() for x in example)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.output: torch.Tensor | None = None
        if record and all(x.device.type == "cuda" for x in self.inputs) and self.inputs:
            self._record(rewind)

    @property
    def recorded(self) -> bool:
        return self.graph is not None

    @torch.no_grad()
    def _record(self, rewind: Callable[[], None] | None) -> None:
        side = torch.cuda.Stream(device=self.inputs[0].device)
        side.wait_stream(torch.cuda.current_stream(self.inputs[0].device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                self.fn(*self.inputs)
        torch.cuda.current_stream(self.inputs[0].device).wait_stream(side)
        if rewind is not None:
            rewind()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = self.fn(*self.inputs)

    @torch.no_grad()
    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        if len(inputs) != len(self.inputs):
            raise ValueError(f"this graph takes {len(self.inputs)} inputs, got {len(inputs)}")
        for buffer, x in zip(self.inputs, inputs, strict=True):
            if x.shape != buffer.shape or x.dtype != buffer.dtype:
                raise ValueError(f"a recorded input is {tuple(buffer.shape)} {buffer.dtype}, got {tuple(x.shape)} {x.dtype}")
            buffer.copy_(x)
        if self.graph is None:
            return self.fn(*self.inputs)
        self.graph.replay()
        return self.output.clone()


def signature(*args: torch.Tensor | None) -> tuple:
    """What a recorded graph is specific to: each input's shape, dtype and device (or its absence), and the autocast
    state on the inputs' device (a recording under bf16 autocast replays bf16 kernels)."""
    device = next((a.device.type for a in args if a is not None), "cpu")
    autocast = torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device)
    return tuple(None if a is None else (tuple(a.shape), a.dtype, a.device) for a in args) + (autocast,)


class GraphedCalls:
    """`model(*args, **kwargs)` (tensors or None) through one `GraphedStep` per `signature`, recorded at the
    signature's first call and kept, at most `keep` of them: each holds its own memory pool (at `paper` shapes a DPD
    pass's activations, gigabytes), so the least recently used is dropped when another shape comes. Inputs on a
    device type not in `devices` go to `model` directly (the default: only CUDA records; tests pass "cpu" to run the
    same bookkeeping over eager `GraphedStep`s)."""

    def __init__(self, model: Callable[..., torch.Tensor], keep: int = 4, devices: tuple[str, ...] = ("cuda",)) -> None:
        if keep < 1:
            raise ValueError(f"keep at least 1 graph, got {keep}")
        self.model, self.keep, self.devices = model, keep, devices
        self.steps: OrderedDict[tuple, GraphedStep] = OrderedDict()

    def __call__(self, *args: torch.Tensor | None, **kwargs: torch.Tensor | None) -> torch.Tensor:
        names = tuple(sorted(kwargs))
        flat = args + tuple(kwargs[n] for n in names)
        if not any(a is not None and a.device.type in self.devices for a in flat):
            return self.model(*args, **kwargs)
        present = [i for i, a in enumerate(flat) if a is not None]

        def call(*tensors: torch.Tensor) -> torch.Tensor:  # the model with the absent arguments put back
            full: list[torch.Tensor | None] = [None] * len(flat)
            for i, t in zip(present, tensors, strict=True):
                full[i] = t
            return self.model(*full[:len(args)], **dict(zip(names, full[len(args):], strict=True)))

        key = (len(args), names, *signature(*flat))
        if key in self.steps:
            self.steps.move_to_end(key)
        else:
            while len(self.steps) >= self.keep:
                self.steps.popitem(last=False)  # its graph and memory pool go with it
            self.steps[key] = GraphedStep(call, tuple(flat[i] for i in present))
        return self.steps[key](*(flat[i] for i in present))
