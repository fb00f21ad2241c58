"""Checkpoints: safetensors for every tensor, JSON for everything else, a format version on both.

Nothing here unpickles: a file a user hands us is parsed by safetensors (a JSON header and raw
buffers) or `json`. Optimizer states are flattened into tensors (`state.<param>.<name>`) plus
their JSON-able remainder (`param_groups`, integer steps), and put back the same way.

A model file is `<name>.safetensors` with a header naming the format, its version and the stage;
beside it a `config.json` holds the `MelodyConfig` it was built from. Loading checks the
version, the stage and every tensor name and shape, and says in one line what does not fit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from melody.config import MelodyConfig, load_config, save_config
from melody.errors import MelodyError, first_line
from melody.io import atomic_path

FORMAT = "melody-weights"
FORMAT_VERSION = 1


def write_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Write tensors atomically (temp file, then rename) with the format header."""
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION), **(metadata or {})}
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(plain, str(tmp), metadata=meta)
    return Path(path)


def read_tensors(path: str | Path, what: str = "checkpoint") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file written by `write_tensors`; a corrupt, truncated or foreign file is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise MelodyError(f"{path}: {what} not found; check the path")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise MelodyError(f"{path}: {what} is corrupt or truncated ({first_line(err)}); restore it or retrain") from None
    if meta.get("format") != FORMAT:
        raise MelodyError(f"{path}: not a melody {what} (no '{FORMAT}' header); use a file written by melody")
    if meta.get("format_version") != str(FORMAT_VERSION):
        raise MelodyError(f"{path}: {what} format version {meta.get('format_version')} is not supported "
                          f"(expected {FORMAT_VERSION}); re-export it with this version of melody")
    return tensors, meta


def load_weights(module: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load `state` into `module` strictly; any missing, unexpected or mis-shaped tensor is one clear line."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} tensors of other shapes (e.g. {k}: {tuple(state[k].shape)} in the file, "
                         f"{tuple(own[k].shape)} in the model)")
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise MelodyError(f"{where}: the weights do not fit this model's config: {'; '.join(parts)}; "
                          "load it with the config.json saved beside it")
    module.load_state_dict(state)


def prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in state.items()}


def unprefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    head = prefix + "."
    return {k[len(head):]: v for k, v in state.items() if k.startswith(head)}


def flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """`optimizer.state_dict()` → (tensors, JSON-able rest)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, slots in state["state"].items():
        for name, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    """The inverse of `flatten_optimizer`."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for index, slots in rest.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(slots)
    return {"state": state, "param_groups": rest["param_groups"]}


def save_model(directory: str | Path, name: str, module: nn.Module, config: MelodyConfig, stage: str,
               dtype: torch.dtype | None = None) -> Path:
    """Export `module` as `<directory>/<name>.safetensors` + `<directory>/config.json` (the model others load).

    `dtype` (e.g. float16, to halve a bundled file) casts floating-point tensors; loading casts back
    to the model's own dtype.
    """
    directory = Path(directory)
    state = module.state_dict()
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    path = write_tensors(directory / f"{name}.safetensors", state, {"stage": stage})
    save_config(config, directory / "config.json")
    return path


def load_model(directory: str | Path, name: str, stage: str, build) -> nn.Module:
    """Build a model from `<directory>/config.json` with `build(MelodyConfig)` and load `<name>.safetensors` into it."""
    return load_model_and_config(directory, name, stage, build)[0]


def load_model_and_config(directory: str | Path, name: str, stage: str, build, step: int | None = None):
    """`load_model`, also returning the `MelodyConfig` the model was built from. `step`: the run's kept checkpoint of
    that step (its raw weights) instead of the export or the newest checkpoint."""
    directory = Path(directory)
    if not directory.is_dir():
        raise MelodyError(f"{directory}: no such model folder; give the run folder that `melody train {stage}` wrote")
    path = directory / f"{name}.safetensors"
    if step is None and path.is_file():
        cfg = load_config(directory / "config.json")
        tensors, meta = read_tensors(path, f"{stage} weights")
    else:
        # a checkpoint's raw weights (not EMA): the chosen step's, or a run in progress's newest
        folder = kept_checkpoint(directory, step) if step is not None else newest_checkpoint(directory, name, stage)
        path = folder / "models.safetensors"
        cfg = load_config(folder / "config.json")
        tensors, meta = read_tensors(path, f"{stage} checkpoint")
        tensors = unprefixed(tensors, name)
    if meta.get("stage") != stage:
        raise MelodyError(f"{path}: holds '{meta.get('stage')}' weights, not '{stage}'; pass the {stage} run")
    module = build(cfg)
    load_weights(module, tensors, str(path))
    return module.eval(), cfg


def newest_checkpoint(run: Path, name: str, stage: str) -> Path:
    """The checkpoint folder a run's `latest.json` names; one line where the folder holds neither model nor run."""
    from melody.io import read_json

    if not (run / "latest.json").is_file():
        raise MelodyError(f"{run}: holds no {name}.safetensors and no checkpoint; train it with `melody train {stage}`")
    return run / read_json(run / "latest.json", "latest.json")["path"]


def kept_checkpoint(run: Path, step: int) -> Path:
    """The run's checkpoint folder of `step`; one line listing the steps it keeps where it has none of that step."""
    folder = run / "checkpoints" / f"step-{step:08d}"
    if not (folder / "models.safetensors").is_file():
        kept = sorted(int(p.name[5:]) for p in (run / "checkpoints").glob("step-*")
                      if p.name[5:].isdigit() and (p / "models.safetensors").is_file())
        raise MelodyError(f"{run}: no checkpoint of step {step}; it keeps " + (", ".join(map(str, kept)) if kept else "none"))
    return folder


def check_same_model(folder, module: nn.Module, recorded: str, other: str, refit: str) -> None:
    """Refuse a user's model folder that now holds another model than the `recorded` fingerprint (none recorded: a new
    run, nothing to compare): `other` names what it is not, `refit` the way out, in one line."""
    if recorded and (found := fingerprint(module)) != recorded:
        raise MelodyError(f"{folder}: holds another {other} (fingerprint {found}, recorded {recorded}); "
                          f"put that model back, or {refit}")


def fingerprint(module: nn.Module) -> str:
    """A short hash of a model's weights and buffers (names, shapes, dtypes, values), e.g. to tell
    whether the frozen model a run trains against is still the one it started with."""
    return fingerprint_state(module.state_dict())


def fingerprint_state(state: dict[str, torch.Tensor]) -> str:
    """`fingerprint` of a state dict (e.g. weights gathered from shards)."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


