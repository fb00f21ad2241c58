"""The one training engine every stage uses, built on `accelerate`.

A stage (`melody/train/<stage>.py`) says *what* to optimise: its models, its optimisers, its
dataset and one `train_step`. The engine does the rest, the same way for every stage: devices
and DDP/multi-node (whatever `accelerate launch` sets up), mixed precision where the device has
it (bf16 on GPUs that support it, else fp16; none on CPU), gradient clipping, optional EMA
(`torch.optim.swa_utils`), warm-up + cosine learning-rate schedules, the progress bar, TensorBoard
and a `metrics.jsonl` log, periodic samples, and checkpoints.

Checkpoints (`RUN/checkpoints/step-NNNNNNNN/`, the newest named by `RUN/latest.json`) hold
`models.safetensors`, `ema.safetensors`, `optimizers.safetensors` and `trainer.json` (step,
data position, optimiser/scheduler remainders and every RNG state) and `config.json`. The
folder is written under a temporary name and renamed when complete, and `latest.json` is
replaced atomically after it, so a crash or a full disk never leaves a half checkpoint in use.
`--resume` restores all of it and continues exactly: the same step, the same next batch, the
same random numbers (each step's noise also comes from a generator seeded by (seed, step, rank)).
At the end, and on Ctrl-C or SIGTERM (after finishing the step under way), the engine saves; at the end it also exports the stage's model(s)
(EMA weights when EMA is on) as `RUN/<name>.safetensors` + `RUN/config.json` for later stages.

Batches (audiocraft's convention): `train.batch_size` is the *global* batch, the examples behind one
optimiser step. Each of W processes reads `batch_size / (W · train.grad_accum)` examples per
micro-batch, from its own shards (`melody.data.loader`), and steps after `grad_accum` of them, so a
run means the same optimisation on 1 CPU, 8 GPUs or 4 nodes; the batch must divide evenly. Under
DDP the gradient is the mean over the global batch (DDP averages the ranks' means; micro-batches
are scaled by 1 / grad_accum); stages whose loss couples examples (MuLan's contrastive loss) gather
across ranks themselves. At every save the ranks' weights are compared (a fingerprint each) and a
divergence stops the run. A checkpoint holds one copy of everything (rank 0's RNG state; each
rank's per-step noise comes from (seed, step, rank) anyway), so a run resumes on another number of
processes: the optimisation continues exactly, and since the shards fall to the ranks differently,
the data restarts at the next epoch (said in one line).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from melody.checkpoint import (
    fingerprint,
    fingerprint_state,
    flatten_optimizer,
    load_weights,
    prefixed,
    read_tensors,
    save_model,
    unflatten_optimizer,
    unprefixed,
    write_tensors,
)
from melody.config import MelodyConfig, save_config, to_dict
from melody.data.loader import ShardDataset, make_loader, mix_seeds
from melody.errors import MelodyError, first_line
from melody.io import read_json, write_json_atomic
from melody.mulan import has_caption
from melody.train import sharding
from melody.train.curves import plot_curves

TRAINER_FORMAT_VERSION = 1  # trainer.json may add keys within a version; readers take what they know
KEEP_CHECKPOINTS = 3


def lr_factor(step: int, warmup: int, total: int, floor: float = 0.1) -> float:
    """Linear warm-up to 1 over `warmup` steps, then cosine decay to `floor` at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class Position:
    """Where training is: optimiser steps taken, and the data position inside the epoch."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


class Stage(ABC):
    """What a stage gives the engine. Models and optimisers are created in `__init__`."""

    name: str  # "vae", "mulan", ...
    models: dict[str, nn.Module]  # everything trained and checkpointed, by name
    optimizers: dict[str, torch.optim.Optimizer]  # by name; the engine schedules and steps them
    ema_models: tuple[str, ...] = ()  # which models keep an EMA copy (when train.ema_decay > 0)
    export: tuple[str, ...] = ()  # which models later stages load from RUN/<name>.safetensors
    # Whether `train.fsdp` may shard the models: every training forward goes through `engine.model(name)(...)`
    # (a step that calls a part of a sharded model directly would meet sharded weights).
    shardable: bool = False

    def __init__(self, cfg: MelodyConfig) -> None:
        self.cfg = cfg

    @abstractmethod
    def dataset(self, split: str) -> ShardDataset: ...

    @abstractmethod
    def train_step(self, engine: Engine, batch: dict, generator: torch.Generator) -> dict[str, float]:
        """One optimisation step (calls `engine.optimize` per optimiser); returns scalars to log."""

    def sample(self, engine: Engine, batch: dict, folder: Path) -> None:  # noqa: B027 (optional)
        """Write listening material for `batch` (held-out audio) into `folder`."""

    def check_init(self, model: str, source: nn.Module) -> None:  # noqa: B027 (optional)
        """Refuse `--init` weights for `model` that do not fit what this stage holds frozen (one line)."""

    def new_in_init(self, model: str, source: nn.Module) -> tuple[str, ...]:
        """Prefixes of `model`'s tensors that `--init` from `source` leaves as this stage made them, where `source`
        has none: a part the run adds to a trained model (zero-initialised, so it starts as the source)."""
        return ()

    def finalize(self, engine: Engine) -> None:  # noqa: B027 (optional)
        """Settle what is measured from the trained model (e.g. a latent scale in `self.cfg`) before the export."""


class TrainingStopped(MelodyError):
    """Ctrl-C or SIGTERM stopped a run after its step and a checkpoint; `--resume` continues it."""

    def __init__(self, signal_name: str, step: int) -> None:
        self.signal_name, self.step = signal_name, step
        super().__init__(f"stopped by {signal_name} at step {step}; saved — continue with --resume")


class PerCaption:
    """What a frozen model makes of a caption, computed once per distinct caption and kept (on the CPU).

    `cache(captions, compute)` → the rows of `compute(new captions)` `(n, ...)` for every caption, stacked `(b, ...)`.
    """

    def __init__(self) -> None:
        self.rows: dict[str, torch.Tensor] = {}

    def __call__(self, captions: list[str], compute) -> torch.Tensor:
        new = [c for c in dict.fromkeys(captions) if c not in self.rows]
        if new:
            self.rows.update(zip(new, compute(new).cpu(), strict=True))
        return torch.stack([self.rows[c] for c in captions])


def audio_or_caption(audio: torch.Tensor, batch: dict, share: float, generator: torch.Generator,
                     caption_tokens: Callable[[list[str], torch.device], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(the MuLan tokens `(b, L)` each example is conditioned on, which examples were told their caption `(b,)` bool):
    their audio's `audio`, or for `share` of them (drawn from `generator`; no draw at 0) their caption's, the features'
    `text_mulan` where the batch has them, else `caption_tokens(captions, device)`. What generation gives a MuLan-
    conditioned model is a caption's tokens, and those of one clip's text and audio differ. A clip with no caption
    keeps its audio's tokens whatever the draw (the tokens of "" would say nothing of it: MuLan's audio tower is what
    lets audio without text train the LM, MusicLM §3.1)."""
    use_text = torch.zeros(audio.shape[0], dtype=torch.bool, device=audio.device)
    if share > 0:
        drawn = torch.rand(audio.shape[0], generator=generator, device=generator.device) < share
        use_text = (drawn & has_caption(batch["caption"]).to(drawn.device)).to(audio.device)
        texts = batch["text_mulan"] if "text_mulan" in batch else caption_tokens(batch["caption"], audio.device)
        audio = torch.where(use_text[:, None], texts.to(audio.device), audio)
    return audio, use_text


def check_frozen(run_dir: Path, models: dict[str, nn.Module]) -> None:
    """Record the fingerprints of the frozen models a stage trains against (`RUN/conditioners.json`),
    or, when the run has a record, refuse different ones: the stage's targets would change under it."""
    prints = {name: fingerprint(model) for name, model in models.items()}
    path = run_dir / "conditioners.json"
    if path.is_file():
        recorded = read_json(path, "conditioners record")
        for name, value in prints.items():
            if recorded.get(name) != value:
                raise MelodyError(f"{run_dir}: this run was trained on another {name} model (fingerprint "
                                  f"{recorded.get(name)}, given {value}); pass the same --{name} run, or start a new --out")
    else:
        write_json_atomic(path, prints)


class Engine:
    def __init__(self, stage: Stage, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
                 cpu: bool | None = None) -> None:
        self.stage = stage
        self.cfg = stage.cfg
        self.train_cfg = stage.cfg.train
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.position = Position()
        latest = self.run_dir / "latest.json"
        if latest.exists() and not resume:
            raise MelodyError(f"{self.run_dir}: holds a run already; pass --resume to continue it, or choose another --out")
        if resume and not latest.exists():
            raise MelodyError(f"{self.run_dir}: no checkpoint to resume from (no latest.json); start without --resume")
        # accelerate sets up several CPU processes (gloo) only when told they are on the CPU
        cpu = bool(cpu) or (not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1)
        self.accelerator = Accelerator(
            mixed_precision=self._mixed_precision(cpu),
            cpu=cpu,
            log_with="tensorboard",
            project_dir=str(self.run_dir),
            # Our dataset splits shards across ranks itself; accelerate must not re-dispatch batches.
            dataloader_config=DataLoaderConfiguration(dispatch_batches=False, split_batches=False),
        )
        self.device = self.accelerator.device
        self.micro_batch = micro_batch(self.train_cfg.batch_size, self.accelerator.num_processes, self.train_cfg.grad_accum)
        self._sync = True
        self.sharded = self._check_fsdp()
        unwrapped = dict(stage.models)
        self.emas: dict[str, AveragedModel] = {}
        if self.train_cfg.ema_decay > 0:
            for name in stage.ema_models:
                self.emas[name] = AveragedModel(unwrapped[name], multi_avg_fn=get_ema_multi_avg_fn(self.train_cfg.ema_decay),
                                                use_buffers=True).to(self.device)
        self._shadows: dict[str, nn.Module] = {}
        if self.sharded:
            self._shard(unwrapped)
        self.schedulers = {
            name: torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: lr_factor(s, self.train_cfg.warmup_steps, self.train_cfg.steps))
            for name, opt in stage.optimizers.items()
        }
        names = [] if self.sharded else list(stage.models)  # sharded models are not wrapped again (DDP)
        prepared = self.accelerator.prepare(*[stage.models[n] for n in names], *[stage.optimizers[n] for n in stage.optimizers])
        prepared = prepared if isinstance(prepared, tuple) else (prepared,)
        self.models = dict(stage.models) if self.sharded else dict(zip(names, prepared[: len(names)], strict=True))
        self.optimizers = dict(zip(stage.optimizers, prepared[len(names):], strict=True))
        self._raw = unwrapped
        if resume:
            self._load(self.run_dir / read_json(latest, "latest.json")["path"])
        else:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if self.accelerator.is_main_process:
                save_config(self.cfg, self.run_dir / "config.json")

    # --- what stages call -------------------------------------------------------------------

    def model(self, name: str) -> nn.Module:
        """The model as prepared for training (DDP-wrapped when distributed)."""
        return self.models[name]

    def unwrapped(self, name: str) -> nn.Module:
        return self._raw[name]

    def ema_or_model(self, name: str) -> nn.Module:
        """The weights to sample and export: the EMA's when kept. Sharded, a whole copy (`_gather_shadows`)."""
        if self.sharded:
            return self._shadows[name]
        return self.emas[name].module if name in self.emas else self._raw[name]

    def autocast(self):
        return self.accelerator.autocast()

    def optimize(self, name: str, loss: torch.Tensor) -> float:
        """Backward `loss` into optimiser `name`'s gradients; on the last micro-batch of a step also clip,
        step, schedule and zero it and update the EMAs of what it trains. Returns the grad norm (NaN
        on a micro-batch that only accumulates)."""
        opt = self.optimizers[name]
        # Another optimiser's loss may reach these parameters (the generator's adversarial loss reaches
        # the discriminators), and this loss may reach another optimiser's: each optimiser's gradients
        # must hold its own losses only, summed over micro-batches. So the others' gradients are set
        # aside during this backward and put back after it, dropping what this loss added to them.
        others = [p for other, o in self.optimizers.items() if other != name for g in o.param_groups for p in g["params"]]
        kept = [p.grad for p in others]
        for p in others:
            p.grad = None
        self.accelerator.backward(loss / self.train_cfg.grad_accum)
        for p, grad in zip(others, kept, strict=True):
            p.grad = grad
        if not self._sync:
            return float("nan")
        params = [p for g in opt.param_groups for p in g["params"]]
        norm = None
        if self.train_cfg.grad_clip > 0:
            norm = (sharding.whole(torch.nn.utils.clip_grad_norm_(params, self.train_cfg.grad_clip)) if self.sharded
                    else self.accelerator.clip_grad_norm_(params, self.train_cfg.grad_clip))
        opt.step()
        self.schedulers[name].step()
        opt.zero_grad(set_to_none=True)
        if name in self.emas:
            self.emas[name].update_parameters(self._raw[name])
        return float(norm) if norm is not None else float("nan")

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """`(b, ...)` on each rank → `(W·b, ...)` in rank order on every rank, differentiable: the backward sends each
        rank the gradient of its own rows summed over all ranks' losses (so a loss every rank computes alike on the
        gathered batch, averaged by DDP, has the single-process gradient)."""
        if self.world_size == 1:
            return x
        import torch.distributed.nn.functional as dist_fn

        return torch.cat(dist_fn.all_gather(x.contiguous()))

    def gather_objects(self, items: list) -> list:
        """Every rank's list, concatenated in rank order (captions, keys)."""
        if self.world_size == 1:
            return list(items)
        lists: list = [None] * self.world_size
        torch.distributed.all_gather_object(lists, list(items))
        return [item for part in lists for item in part]

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes

    @property
    def step(self) -> int:
        return self.position.step

    # --- the loop ----------------------------------------------------------------------------

    def fit(self, stop_at: int | None = None) -> Position:
        """Train until `train.steps` (or `stop_at`, for tests and time-boxed runs), checkpointing on the way."""
        tc = self.train_cfg
        target = min(tc.steps, stop_at) if stop_at is not None else tc.steps
        acc = self.accelerator
        dataset = self.stage.dataset("train")
        dataset.shuffle = tc.shuffle_buffer
        if len(dataset.urls) < acc.num_processes:
            # a rank without shards would wait forever for the others' gradients
            raise MelodyError(f"the training split has {len(dataset.urls)} shard(s) for {acc.num_processes} processes; "
                              "each process reads its own shards: write smaller shards (data.clips_per_shard) or use fewer processes")
        loader = make_loader(dataset, self.micro_batch, tc.num_workers)
        acc.init_trackers(self.stage.name, config=_flat_config(to_dict(self.cfg)))
        sample_batch = self._sample_batch()
        bar = self._bar(target)
        rate_clock, rate_steps = time.perf_counter(), self.position.step
        self._stop_signal = None
        previous = self._catch_stop_signals()
        try:
            micro, step_logs = 0, []
            while self.position.step < target:
                dataset.set_position(self.position.epoch, self.position.batch_in_epoch, self.micro_batch)
                served = False
                for batch in loader:
                    served = True
                    batch = _to_device(batch, self.device)
                    generator = torch.Generator(device=self.device).manual_seed(
                        mix_seeds(tc.seed, self.position.step, acc.process_index * tc.grad_accum + micro))
                    for model in self.models.values():
                        model.train()
                    self._sync = micro == tc.grad_accum - 1
                    with contextlib.ExitStack() as no_sync:
                        if not self._sync:  # DDP all-reduces only on the step's last micro-batch
                            for model in self.models.values():
                                no_sync.enter_context(acc.no_sync(model))
                        step_logs.append(self.stage.train_step(self, batch, generator))
                    self.position.batch_in_epoch += 1
                    if not self._sync:
                        micro += 1
                        continue
                    logs = _mean_logs(step_logs)
                    micro, step_logs = 0, []
                    self.position.step += 1
                    step = self.position.step
                    if step % tc.log_every == 0 or step == target:
                        now = time.perf_counter()
                        logs["train/steps_per_s"] = (step - rate_steps) / max(now - rate_clock, 1e-9)
                        logs["train/lr"] = self.schedulers[next(iter(self.schedulers))].get_last_lr()[0]
                        rate_clock, rate_steps = now, step
                        self.log(logs, step)
                        bar.set_postfix({k.split("/")[-1] if k.endswith("total") else k: f"{v:.3g}"
                                         for k, v in logs.items() if k.endswith("total")} | {"steps/s": f"{logs['train/steps_per_s']:.2f}"})
                    bar.update(1)
                    if sample_batch is not None and tc.sample_every > 0 and step % tc.sample_every == 0:
                        self._sample(sample_batch, step)
                    if step % tc.checkpoint_every == 0 and step < target:
                        self.save()
                    if step >= target or self._stop_signal is not None:
                        break
                else:
                    if not served and self.position.batch_in_epoch == 0:
                        raise MelodyError("the training split yielded no batch; the corpus has fewer clips than one batch "
                                          f"({self.micro_batch} per process); build a bigger corpus or lower train.batch_size")
                    self.position.epoch += 1
                    self.position.batch_in_epoch = 0
                if self._stop_signal is not None and micro == 0:
                    bar.close()
                    self.save()
                    raise TrainingStopped(signal.Signals(self._stop_signal).name, self.position.step)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        bar.close()
        self.save()
        if sample_batch is not None and tc.sample_every > 0 and self.position.step % tc.sample_every != 0:
            self._sample(sample_batch, self.position.step)
        if self.position.step >= tc.steps:
            self._gather_shadows()
            for model in self.models.values():
                model.eval()
            with torch.no_grad():
                self.stage.finalize(self)
            self.export()
        # rank 0 exports alone, so without this the other ranks tear the process group down first; once (a 2-process
        # FSDP test in the full suite) a rank aborted at exit after a finished run ("terminate called without an
        # active exception"), likely that race: all ranks now leave together
        acc.wait_for_everyone()
        acc.end_training()
        return self.position

    def _catch_stop_signals(self) -> dict:
        """Ctrl-C or SIGTERM (a scheduler's pre-emption) finishes the current step, saves and stops; a second one stops at once."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def request_stop(signum, frame):
            if self._stop_signal is not None:
                raise KeyboardInterrupt
            self._stop_signal = signum

        previous = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(signum) is signal.SIG_IGN:
                continue  # e.g. a background job of a script: the user asked for this signal to be ignored
            previous[signum] = signal.signal(signum, request_stop)
        # A blocked signal is never delivered, and a mask is inherited across exec: a parent that spawned us while it
        # blocked SIGINT (multiprocessing does so around spawning its helpers) would make Ctrl-C do nothing here
        signal.pthread_sigmask(signal.SIG_UNBLOCK, set(previous))
        return previous

    # --- checkpoints -------------------------------------------------------------------------

    def check_replicas(self) -> list[str]:
        """Every rank's fingerprint of its weights; a run whose ranks disagree stops (DDP keeps them equal)."""
        prints = self.gather_objects([fingerprint_all(self._raw)])
        if len(set(prints)) > 1:
            raise MelodyError(f"the {len(prints)} processes hold different weights at step {self.position.step} "
                              f"({', '.join(prints)}); a model changed outside the optimiser on one rank — resume from the last checkpoint")
        return prints

    def save(self) -> Path:
        """Write a complete checkpoint folder atomically and point latest.json at it."""
        acc = self.accelerator
        acc.wait_for_everyone()
        models, emas, optimizers = self._whole_states()
        # sharded, no rank holds a replica: the fingerprints are of the gathered weights, one copy
        replicas = [fingerprint_states(models)] if self.sharded else self.check_replicas()
        folder = self.run_dir / "checkpoints" / f"step-{self.position.step:08d}"
        if acc.is_main_process:
            tmp = folder.with_name(folder.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            write_tensors(tmp / "models.safetensors", {k: v for name, state in models.items() for k, v in prefixed(state, name).items()},
                          {"stage": self.stage.name})
            if self.emas:
                write_tensors(tmp / "ema.safetensors", {k: v for name, state in emas.items() for k, v in prefixed(state, name).items()},
                              {"stage": self.stage.name})
            opt_tensors, opt_rest = {}, {}
            for name, state in optimizers.items():
                tensors, rest = flatten_optimizer(state)
                opt_tensors |= prefixed(tensors, name)
                opt_rest[name] = rest
            opt_tensors["rng.torch"] = torch.get_rng_state()
            if torch.cuda.is_available():
                for i, state in enumerate(torch.cuda.get_rng_state_all()):
                    opt_tensors[f"rng.cuda.{i}"] = state
            write_tensors(tmp / "optimizers.safetensors", opt_tensors, {"stage": self.stage.name})
            write_json_atomic(tmp / "trainer.json", {
                "format_version": TRAINER_FORMAT_VERSION,
                "stage": self.stage.name,
                "step": self.position.step,
                "epoch": self.position.epoch,
                "batch_in_epoch": self.position.batch_in_epoch,
                "processes": acc.num_processes,
                "micro_batch": self.micro_batch,
                "sharded": self.sharded,
                "replica_fingerprints": replicas,
                "optimizers": opt_rest,
                "schedulers": {n: s.state_dict() for n, s in self.schedulers.items()},
                "rng": {"python": _python_state(), "numpy": _numpy_state()},
            })
            save_config(self.cfg, tmp / "config.json")
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
            write_json_atomic(self.run_dir / "latest.json", {"step": self.position.step,
                                                             "path": str(folder.relative_to(self.run_dir))})
            self._prune(folder)
            if (self.run_dir / "metrics.jsonl").is_file():
                plot_curves(self.run_dir / "metrics.jsonl", self.run_dir / "curves.png", f"{self.stage.name}: {self.run_dir.name}")
        acc.wait_for_everyone()
        return folder

    def export(self) -> list[Path]:
        """Write the stage's model(s) (EMA weights when kept) as `RUN/<name>.safetensors` + `RUN/config.json`."""
        paths = []
        if self.accelerator.is_main_process:
            for name in self.stage.export:
                paths.append(save_model(self.run_dir, name, self.ema_or_model(name), self.cfg, self.stage.name))
        return paths

    def _load(self, folder: Path) -> None:
        trainer = read_json(folder / "trainer.json", "trainer state")
        if not isinstance(trainer, dict) or trainer.get("format_version") != TRAINER_FORMAT_VERSION:
            raise MelodyError(f"{folder}: trainer state has an unsupported format; start a new run")
        if trainer.get("stage") != self.stage.name:
            raise MelodyError(f"{folder}: is a '{trainer.get('stage')}' run, not '{self.stage.name}'; pass the right --out")
        models, _ = read_tensors(folder / "models.safetensors", "checkpoint")
        for name, model in self._raw.items():
            self._load_model(model, name, unprefixed(models, name), f"{folder}/models.safetensors [{name}]")
        if self.emas:
            emas, _ = read_tensors(folder / "ema.safetensors", "EMA checkpoint")
            for name, ema in self.emas.items():
                state = unprefixed(emas, name)
                if self.sharded:  # the averaged weights and the count, which stays whole
                    ema.n_averaged.copy_(state.pop("n_averaged"))
                    self._load_model(ema.module, name, unprefixed(state, "module"), f"{folder}/ema.safetensors [{name}]")
                else:
                    load_weights(ema, state, f"{folder}/ema.safetensors [{name}]")
        opt_tensors, _ = read_tensors(folder / "optimizers.safetensors", "optimizer checkpoint")
        for name, opt in self.optimizers.items():
            try:
                state = unflatten_optimizer(unprefixed(opt_tensors, name), trainer["optimizers"][name])
                if self.sharded:
                    sharding.load_full_optimizer_state(self._raw[name], opt.optimizer, state)
                else:
                    opt.load_state_dict(state)
            except (KeyError, ValueError, IndexError, RuntimeError) as err:
                raise MelodyError(f"{folder}: optimizer '{name}' does not fit this model ({first_line(err)}); start a new run") from None
        for name, sched in self.schedulers.items():
            sched.load_state_dict(trainer["schedulers"][name])
        torch.set_rng_state(opt_tensors["rng.torch"])
        if torch.cuda.is_available():
            states = [opt_tensors[k] for k in sorted(k for k in opt_tensors if k.startswith("rng.cuda."))]
            if len(states) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(states)
        random.setstate(_python_tuple(trainer["rng"]["python"]))
        np.random.set_state(_numpy_tuple(trainer["rng"]["numpy"]))
        self.position = Position(trainer["step"], trainer["epoch"], trainer["batch_in_epoch"])
        layout = (trainer.get("processes", 1), trainer.get("micro_batch", self.train_cfg.batch_size))
        if layout != (self.accelerator.num_processes, self.micro_batch) and self.position.batch_in_epoch:
            # the shards fall to the ranks differently now: where each rank stood cannot be found again
            self.position = Position(self.position.step, self.position.epoch + 1, 0)
            if self.accelerator.is_main_process:
                print(f"resume: the run was on {layout[0]} process(es) × {layout[1]} examples, now "
                      f"{self.accelerator.num_processes} × {self.micro_batch}; the data restarts at epoch {self.position.epoch}",
                      file=sys.stderr)

    def _load_model(self, model: nn.Module, name: str, state: dict[str, torch.Tensor], where: str) -> None:
        """Whole weights into `model`; sharded, checked against the whole copy first (the same one-line errors)."""
        if not self.sharded:
            load_weights(model, state, where)
            return
        load_weights(self._shadows[name], state, where)
        sharding.load_full_model_state(model, self._shadows[name].state_dict())

    def _whole_states(self) -> tuple[dict, dict, dict]:
        """The checkpoint's content as whole tensors, by model name: weights, EMA state dicts, optimiser states keyed
        by position. Sharded, every rank takes part in gathering them and rank 0 gets them; else rank 0 reads them."""
        if not self.sharded:
            if not self.accelerator.is_main_process:
                return {}, {}, {}
            return ({n: m.state_dict() for n, m in self._raw.items()}, {n: e.state_dict() for n, e in self.emas.items()},
                    {n: o.state_dict() for n, o in self.optimizers.items()})
        models = {n: sharding.full_model_state(m) for n, m in self._raw.items()}
        emas = {n: {**prefixed(sharding.full_model_state(e.module), "module"), "n_averaged": e.n_averaged.detach().cpu()}
                for n, e in self.emas.items()}
        optimizers = {n: sharding.full_optimizer_state(self._raw[n], o.optimizer) for n, o in self.optimizers.items()}
        return models, emas, optimizers

    def _check_fsdp(self) -> bool:
        """Whether the models are sharded: `train.fsdp` on more than one process (one has nothing to shard)."""
        if not self.train_cfg.fsdp:
            return False
        if not self.stage.shardable:
            raise MelodyError(f"train.fsdp: the {self.stage.name} stage calls parts of its models directly, which sharded "
                              "weights do not allow; train it with DDP (train.fsdp=false); FSDP is for the dpd and semantic_lm stages")
        if self.accelerator.mixed_precision == "fp16":
            raise MelodyError("train.fsdp needs bf16 or no mixed precision (this GPU has no bf16, and fp16's loss scaling "
                              "is not wired for sharded weights); set train.mixed_precision=no or train.fsdp=false")
        return self.accelerator.num_processes > 1

    def _shard(self, models: dict[str, nn.Module]) -> None:
        """FSDP: shard the models and their EMA copies, keep a whole copy of each for samples and the export, and
        point the optimisers at the sharded parameters."""
        for name, model in models.items():
            self._shadows[name] = copy.deepcopy(model).cpu()
            names = sharding.parameter_names(model)
            sharding.shard(model, self.device, self.accelerator.num_processes)
            if name in self.emas:
                sharding.shard(self.emas[name].module, self.device, self.accelerator.num_processes)
            for key, opt in self.stage.optimizers.items():
                if any(id(p) in names for group in opt.param_groups for p in group["params"]):
                    self.stage.optimizers[key] = sharding.rebind_optimizer(opt, names, model)

    def _gather_shadows(self) -> None:
        """Sharded: refresh the whole copies from the sharded weights (the EMA's when kept), on every rank (each
        takes part in the gathering, and a stage's `finalize` runs on every rank)."""
        for name, shadow in self._shadows.items():
            source = self.emas[name].module if name in self.emas else self._raw[name]
            shadow.load_state_dict(sharding.full_model_state(source, everywhere=True))
            shadow.to(self.device)

    def _prune(self, keep: Path) -> None:
        folders = sorted(p for p in (self.run_dir / "checkpoints").glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
        for old in folders[:-KEEP_CHECKPOINTS]:
            if old != keep:
                shutil.rmtree(old, ignore_errors=True)

    # --- logging and samples ------------------------------------------------------------------

    def log(self, logs: dict[str, float], step: int) -> None:
        """Scalars to TensorBoard and `metrics.jsonl` (stages log held-out figures from `sample` with it)."""
        self.accelerator.log(logs, step=step)
        if self.accelerator.is_main_process:
            with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, **{k: float(v) for k, v in logs.items()}}) + "\n")

    def tensorboard(self):
        """The TensorBoard SummaryWriter (for audio and images), or None off the main process."""
        if not self.accelerator.is_main_process:
            return None
        return self.accelerator.get_tracker("tensorboard", unwrap=True)

    def _sample_batch(self) -> dict | None:
        try:
            dataset = self.stage.dataset("valid")
        except MelodyError:
            return None
        dataset.shuffle, dataset.random_offset, dataset.by_rank = 0, False, False
        batch = next(iter(make_loader(dataset, min(4, self.train_cfg.batch_size), 0, drop_last=False)), None)
        return None if batch is None else _to_device(batch, self.device)

    def _sample(self, batch: dict, step: int) -> None:
        self._gather_shadows()
        if not self.accelerator.is_main_process:
            return
        for model in self.models.values():
            model.eval()
        with torch.no_grad():
            self.stage.sample(self, batch, self.run_dir / "samples" / f"step-{step:08d}")

    def _bar(self, total: int):
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=self.position.step, desc=f"train {self.stage.name}", unit="step",
                    disable=not (self.progress and self.accelerator.is_main_process), dynamic_ncols=True)

    def _mixed_precision(self, cpu: bool | None) -> str:
        wanted = self.train_cfg.mixed_precision
        if wanted == "no" or cpu or not torch.cuda.is_available():
            return "no"
        if wanted == "bf16" and not torch.cuda.is_bf16_supported():
            return "fp16"
        return wanted


def micro_batch(batch_size: int, processes: int, grad_accum: int) -> int:
    """Examples per process per micro-batch: the global `batch_size` over processes × accumulation steps."""
    if grad_accum < 1:
        raise MelodyError(f"train.grad_accum must be at least 1, got {grad_accum}")
    share, rest = divmod(batch_size, processes * grad_accum)
    if rest or share == 0:
        raise MelodyError(f"train.batch_size={batch_size} (the global batch) does not split into {processes} process(es) × "
                          f"{grad_accum} micro-batch(es); set it to a multiple of {processes * grad_accum}")
    return share


def fingerprint_all(models: dict[str, nn.Module]) -> str:
    return fingerprint_states({name: model.state_dict() for name, model in models.items()})


def fingerprint_states(states: dict[str, dict[str, torch.Tensor]]) -> str:
    return "-".join(fingerprint_state(states[name]) for name in sorted(states))



def _mean_logs(logs: list[dict[str, float]]) -> dict[str, float]:
    """One step's logs: each value averaged over its micro-batches (NaN grad norms of accumulating ones left out)."""
    out = {}
    for key in logs[-1]:
        values = [entry[key] for entry in logs if key in entry and not math.isnan(entry[key])]
        out[key] = sum(values) / len(values) if values else math.nan
    return out


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _flat_config(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= _flat_config(v, key + ".")
        else:
            out[key] = str(v) if isinstance(v, (list, tuple)) else v
    return out


def _python_state() -> list:
    version, state, gauss = random.getstate()
    return [version, list(state), gauss]


def _python_tuple(data: list) -> tuple:
    return (data[0], tuple(data[1]), data[2])


def _numpy_state() -> list:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)]


def _numpy_tuple(data: list) -> tuple:
    return (data[0], np.array(data[1], dtype=np.uint32), data[2], data[3], data[4])
