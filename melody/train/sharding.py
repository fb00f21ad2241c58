"""Fully sharded data parallelism for the engine (`train.fsdp`): PyTorch's FSDP2 (`fully_shard`).

Each of W processes keeps 1/W of every weight, gradient and AdamW moment; a block's whole weights exist only
while it runs (all-gathered before, freed after), and gradients are reduce-scattered, averaged over the ranks as
DDP averages them. The units are a model's repeated blocks (the elements of its outermost `nn.ModuleList`s: the
transformer's layers, the DPD's dual-path blocks), then the model itself for what is left (embeddings, heads).

accelerate builds FSDP only on GPUs (`--use_fsdp` gives plain DDP on CPUs), so the engine shards itself, which
runs the same on CPUs (gloo, where CI proves it) and GPUs (NCCL). Checkpoints stay the engine's one format, whole
weights: `full_model_state` / `full_optimizer_state` gather them (every rank calls; rank 0 gets them) and the
optimiser's state is keyed by position, as `torch.optim.Optimizer.state_dict` keys it, so a run saved sharded
resumes unsharded and the other way round.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

GATHERED = StateDictOptions(full_state_dict=True, cpu_offload=True)  # whole tensors, on rank 0's CPU only
EVERYWHERE = StateDictOptions(full_state_dict=True)  # whole tensors on every rank (samples, finalize, export)


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks: elements of the outermost `nn.ModuleList`s, in module order."""
    units: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            if isinstance(child, nn.ModuleList):
                units.extend(child)
            else:
                visit(child)

    visit(model)
    return units


def shard(model: nn.Module, device: torch.device, world_size: int) -> nn.Module:
    """Shard `model` (in place: its parameters become DTensors) over all processes: each block, then the rest."""
    # FSDP2 warns when a model returns a view (an in-place op on it would skip the backward's all-gather); the
    # stages use model outputs out of place, and the DPD's output is a slice of its overlap-add
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    mesh = init_device_mesh(device.type, (world_size,))
    model.to(device)
    for unit in shard_units(model):
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def parameter_names(model: nn.Module) -> dict[int, str]:
    return {id(p): name for name, p in model.named_parameters()}


def rebind_optimizer(optimizer: torch.optim.Optimizer, names: dict[int, str], model: nn.Module) -> torch.optim.Optimizer:
    """Point `optimizer`'s groups (in place) at `model`'s parameters after sharding replaced them; `names`: the
    parameter names by id from before (`parameter_names`). Its state must still be empty."""
    if optimizer.state:
        raise ValueError("rebind_optimizer: the optimiser has state already; shard before the first step")
    now = dict(model.named_parameters())
    for group in optimizer.param_groups:
        group["params"] = [now[names[id(p)]] if id(p) in names else p for p in group["params"]]
    return optimizer


def full_model_state(model: nn.Module, everywhere: bool = False) -> dict[str, torch.Tensor]:
    """The whole weights of a sharded `model` under the plain module's keys (every rank calls; without `everywhere`
    only rank 0 gets them, on the CPU, and the others get {})."""
    return get_model_state_dict(model, options=EVERYWHERE if everywhere else GATHERED)


def load_full_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Whole weights (every rank passes them) into a sharded `model`: each rank keeps its shard."""
    set_model_state_dict(model, state, options=EVERYWHERE)


def optimizer_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The parameter names in the optimiser's order (the order `Optimizer.state_dict` numbers them in)."""
    names = parameter_names(model)
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def by_position(state: dict, names: list[str]) -> dict:
    """An optimiser state keyed by parameter name (`get_optimizer_state_dict`) → keyed by position."""
    index = {name: i for i, name in enumerate(names)}
    return {"state": {index[name]: slots for name, slots in state["state"].items()},
            "param_groups": [{**group, "params": [index[name] for name in group["params"]]} for group in state["param_groups"]]}


def by_name(state: dict, names: list[str]) -> dict:
    """The inverse of `by_position`."""
    return {"state": {names[int(i)]: slots for i, slots in state["state"].items()},
            "param_groups": [{**group, "params": [names[int(i)] for i in group["params"]]} for group in state["param_groups"]]}


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimiser's whole state keyed by position (every rank calls; rank 0 gets it, the others {})."""
    state = get_optimizer_state_dict(model, optimizer, options=GATHERED)
    return by_position(state, optimizer_names(model, optimizer)) if state else {}


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """A whole optimiser state keyed by position (every rank passes it) into the optimiser of a sharded `model`."""
    set_optimizer_state_dict(model, optimizer, by_name(state, optimizer_names(model, optimizer)), options=EVERYWHERE)


def whole(value: torch.Tensor) -> torch.Tensor:
    """A DTensor's whole value (e.g. the gradient norm `clip_grad_norm_` returns for sharded parameters)."""
    return value.full_tensor() if isinstance(value, DTensor) else value
