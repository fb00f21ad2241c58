"""Recipes: how the bundled model was trained, stage by stage, and `melody train all`, which replays it.

MeLoDy (Fig. 1) is five separately trained models. The audio VAE-GAN, MuLan and the semantic
tokenizer learn from the corpus alone; the semantic LM learns against frozen MuLan and tokenizer
models, the DPD against a frozen VAE and tokenizer. `STAGES` is that order and those needs. A model may be made by
several plans in turn, each run starting from the previous one's model (`StagePlan.init`, `--init`): the bundled DPD
was trained, then fine-tuned on more data, then fine-tuned to hear MuLan tokens too; the last plan's is bundled.

`OVERRIDES[preset][stage]` is what each bundled run set on top of its preset, in `--set` syntax.
For `tiny` they are the commands in docs/vae.md, docs/semantic.md and docs/dpd.md, completed with
what those commands leave out but the runs' own `config.json` records (`melody/bundled/<model>/config.json`;
the DPD's runs are recorded in `training/dpd-tiny/`, `training/dpd-tiny-ft/`, `training/dpd-tiny-mulan/`): the MuLan,
tokenizer and LM runs
also set `train.num_workers=1` and their own `train.checkpoint_every` / `train.sample_every`.
`tests/test_train_all.py` checks each recipe against those files, so neither can drift alone.
The paper's sizes were never trained here, so `paper` has no recipe: each stage runs on the preset.

`train_all` trains the stages in order into `RUNS/<stage>`, exports each finished one into the
bundle at once (the VAE and the LM in float16, as bundled), caches the features a stage's recipe reads
(`train.cached_features`: `melody data encode` with the bundle's conditioners, once), and has later
stages train against the bundle's copies: the bundled DPD learned the latents of the float16 VAE that
the pipeline decodes with. A stage whose run has exported its model is skipped, an unfinished one
resumed (`--resume`), so re-running after Ctrl-C continues where it stopped.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from melody.config import MelodyConfig, apply_overrides, load_config
from melody.config import preset as make_preset
from melody.errors import MelodyError


@dataclass(frozen=True)
class StagePlan:
    """One step of `melody train all`."""

    name: str  # its run folder RUNS/<name> and its recipe; `melody train <name>` unless `stage` says otherwise
    model: str  # what it exports: RUN/<model>.safetensors, and BUNDLE/<model>/ (a later plan of one model replaces it)
    needs: tuple[str, ...] = ()  # frozen models it trains against, by model name (from the bundle)
    half: bool = False  # bundled in float16 (half the size; loads as float32)
    stage: str = ""  # `melody train <stage>`, where the run continues an earlier one's model (default: the name)
    init: str = ""  # an earlier plan whose exported model this run starts from (`--init RUNS/<init>`)

    @property
    def command(self) -> str:
        return self.stage or self.name


STAGES: tuple[StagePlan, ...] = (
    StagePlan("vae", "vae", half=True),
    StagePlan("mulan", "mulan"),
    StagePlan("tokenizer", "tokenizer"),
    StagePlan("semantic", "semantic_lm", needs=("mulan", "tokenizer"), half=True),
    StagePlan("dpd", "dpd", needs=("vae", "tokenizer")),
    # the bundled DPD: the one above, fine-tuned on the 10 h corpus, then fine-tuned to hear MuLan tokens too
    StagePlan("dpd-ft", "dpd", needs=("vae", "tokenizer"), stage="dpd", init="dpd"),
    StagePlan("dpd-mulan", "dpd", needs=("vae", "tokenizer", "mulan"), stage="dpd", init="dpd-ft"),
)

# What each bundled run set on top of its preset (see the module docstring for where each comes from).
OVERRIDES: dict[str, dict[str, tuple[str, ...]]] = {
    "paper": {},
    "tiny": {
        # docs/vae.md: 11 000 steps (10 000 reconstruction-only, 1 000 with the discriminators)
        "vae": ("train.steps=11000", "train.lr=1e-3", "train.num_workers=1"),
        # docs/semantic.md: 5 s crops and weight decay stop MuLan memorising the corpus
        "mulan": ("train.steps=1500", "train.batch_size=32", "train.weight_decay=0.1", "mulan.crop_seconds=5",
                  "train.checkpoint_every=250", "train.sample_every=250", "train.num_workers=1"),
        "tokenizer": ("train.steps=2000", "train.batch_size=16", "train.lr=5e-4",
                      "train.checkpoint_every=250", "train.sample_every=250", "train.num_workers=1"),
        # docs/semantic.md ("A beat clock beside each token"): MuLan tokens embedded through MuLan's codebooks, the tempo
        # token, the tempo stretch and the beat clock, the preset's width (128), from cached features of the 10 h corpus
        # (`melody data synth --hours 12 --seed 0`); 3 000 steps of batch 32 on one CPU thread (51 min), sampled at LM
        # guidance 1.5 (at 3 the clock crowded out the caption). Logs in training/semantic-lm-corpus12/clock/.
        "semantic": ("semantic_lm.condition_embedding=codebook", "semantic_lm.tempo_buckets=24",
                     "semantic_lm.tempo_stretch=0.25", "semantic_lm.tempo_clock=true", "semantic_lm.guidance=1.5",
                     "train.steps=3000", "train.batch_size=32", "train.lr=1e-3",
                     "train.cached_features=true", "train.log_every=50", "train.checkpoint_every=500",
                     "train.sample_every=250", "train.num_workers=1"),
        # docs/dpd.md and training/dpd-tiny/config.json: lr 5e-4 with EMA; the bundled run began on a 30 000-step
        # schedule, was re-scheduled at step 5 398 to end at 12 000 (cosine decay from there) and stopped at 11 330
        "dpd": ("train.lr=5e-4", "train.ema_decay=0.999", "train.steps=12000", "train.checkpoint_every=500",
                "train.log_every=25", "train.sample_every=1000", "train.num_workers=1"),
        # training/dpd-tiny-ft/README.md: that DPD fine-tuned on the 10 h corpus (lr 2e-4 on a 6 000-step cosine)
        "dpd-ft": ("train.lr=2e-4", "train.ema_decay=0.999", "train.steps=6000", "train.warmup_steps=200",
                   "train.checkpoint_every=500", "train.log_every=25", "train.sample_every=1000", "train.num_workers=1"),
        # docs/dpd.md ("The MuLan condition"): then fine-tuned to hear the prompt's MuLan tokens (the projection starts at
        # zero), 7 000 steps from cached features of the 10 h corpus; logs in training/dpd-tiny-mulan/
        "dpd-mulan": ("dpd.mulan_condition=true", "train.lr=3e-4", "train.ema_decay=0.999", "train.steps=7000",
                      "train.warmup_steps=200", "train.cached_features=true", "train.checkpoint_every=500",
                      "train.log_every=25", "train.sample_every=1000", "train.num_workers=1"),
    },
}


def stage_overrides(preset_name: str, stage: str, user: typing.Sequence[str] = ()) -> list[str]:
    """A stage's overrides: its recipe for the preset, then the user's (which win)."""
    if preset_name not in OVERRIDES:
        raise MelodyError(f"no training recipe for preset '{preset_name}'; choose one of: {', '.join(OVERRIDES)}")
    return [*OVERRIDES[preset_name].get(stage, ()), *user]


def run_config(run_dir: Path, preset_name: str, overrides: typing.Sequence[str], resume: bool) -> MelodyConfig:
    """A new run starts from the preset; a resumed one from its own config.json (overrides on top)."""
    if resume and (run_dir / "config.json").is_file():
        return apply_overrides(load_config(run_dir / "config.json"), overrides)
    return make_preset(preset_name, overrides)


def build_stage(name: str, cfg: MelodyConfig, data: Path, run_dir: Path, frozen: dict[str, tuple] | None = None,
                teacher=None):
    """The engine's `Stage` for `melody train <name>`; `frozen` maps a needed model's name to its (model, config)."""
    frozen = frozen or {}
    if name == "vae":
        from melody.train.vae import VAEStage

        return VAEStage(cfg, data)
    if name == "mulan":
        from melody.train.mulan import MuLanStage

        return MuLanStage(cfg, data)
    if name == "tokenizer":
        from melody.train.tokenizer import TokenizerStage

        return TokenizerStage(cfg, data, run_dir, teacher, frozen["encoder"][0] if "encoder" in frozen else None)
    if name == "semantic":
        from melody.train.semantic import SemanticLMStage

        return SemanticLMStage(cfg, data, run_dir, frozen["mulan"], frozen["tokenizer"])
    if name == "dpd":
        from melody.train.dpd import DPDStage

        return DPDStage(cfg, data, run_dir, frozen["vae"], frozen["tokenizer"], frozen.get("mulan"))
    raise MelodyError(f"unknown stage '{name}'; choose one of: {', '.join(p.name for p in STAGES)}")


@dataclass
class Trained:
    """What one `melody train <stage>` run reached."""

    stage: str  # the engine's stage name, e.g. "semantic_lm"
    step: int
    models: list[Path]  # the exported model files

    def summary(self) -> str:
        return f"trained {self.stage} to step {self.step}; model: {', '.join(str(p) for p in self.models)}"


def train_stage(name: str, data: Path, run_dir: Path, preset_name: str, overrides: typing.Sequence[str], resume: bool,
                progress: bool, frozen: dict[str, tuple] | None = None, teacher=None, init: Path | None = None) -> Trained:
    """Build stage `name` from the run's config and train it to `train.steps` (or until stopped). `init`: a trained
    model (run or model folder) whose weights the stage's model starts from (fine-tuning: a fresh optimizer and
    schedule; the run's config must build the same shapes), recorded in the run's `init.json`."""
    from melody.checkpoint import fingerprint, load_weights
    from melody.data.shards import read_manifest
    from melody.io import write_json_atomic
    from melody.train.engine import Engine

    if init is not None and resume:
        raise MelodyError("--init starts a new run from a model's weights and --resume continues a run; give one of them")
    read_manifest(data)
    cfg = run_config(run_dir, preset_name, overrides, resume)
    stage = build_stage(name, cfg, data, run_dir, frozen, teacher)
    started_from = {}
    for model in stage.export if init is not None else ():
        source, _ = load_stage(init, model)
        stage.check_init(model, source)
        state, added = source.state_dict(), stage.new_in_init(model, source)
        state |= {k: v for k, v in stage.models[model].state_dict().items() if k.startswith(added) and k not in state}
        load_weights(stage.models[model], state, f"--init {init}")
        started_from[model] = fingerprint(source)
    engine = Engine(stage, run_dir, resume=resume, progress=progress)
    if started_from:
        write_json_atomic(run_dir / "init.json", {"init": str(init), "fingerprints": started_from})
    position = engine.fit()
    return Trained(stage.name, position.step, [run_dir / f"{model}.safetensors" for model in stage.export])


def load_stage(run: Path, model: str, step: int | None = None):
    """(model, config) of a trained model from a run or model folder (`step`: that kept checkpoint of the run)."""
    from melody.checkpoint import load_model_and_config
    from melody.pipeline import STAGE_BUILDERS

    if model not in STAGE_BUILDERS:
        raise MelodyError(f"unknown stage '{model}'; choose one of: {', '.join(STAGE_BUILDERS)}")
    return load_model_and_config(run, model, model, STAGE_BUILDERS[model], step)


def export_model(run: Path, out: Path, model: str, half: bool = False, step: int | None = None) -> Path:
    """Copy a trained model (its export, the run's newest checkpoint, or its kept checkpoint of `step`) into a
    self-contained folder."""
    import torch

    from melody.checkpoint import save_model

    module, cfg = load_stage(run, model, step)
    return save_model(out, model, module, cfg, model, torch.float16 if half else None)


def cache_features(data: Path, plan: StagePlan, frozen: dict[str, tuple], progress: bool, say: Callable[[str], None]) -> Path:
    """The cached features stage `plan` reads, made by its frozen models unless the corpus has them: tokens and MuLan
    tokens alone for the semantic LM (`latents="none"`), the VAE posteriors too for the DPD."""
    from melody.data.features import encode_corpus, find_features

    models = {name: model for name, (model, _) in frozen.items()}
    try:
        return find_features(data, models)
    except MelodyError:
        say(f"{plan.name}: caching the features of {', '.join(sorted(models))} (melody data encode)")
        return encode_corpus(data, models.get("vae"), models["tokenizer"], models.get("mulan"), progress=progress,
                             latents="float16" if "vae" in models else "none")


def is_finished(run_dir: Path, plan: StagePlan) -> bool:
    """The engine writes `RUN/<model>.safetensors` only when the run reaches `train.steps`."""
    return (run_dir / f"{plan.model}.safetensors").is_file()


def train_all(data: Path, runs: Path, preset_name: str = "tiny", user: typing.Sequence[str] = (), bundle: Path | None = None,
              progress: bool = True, say: Callable[[str], None] = print) -> Path:
    """Every stage in order into `runs/<stage>`, each exported into `bundle` (default `runs/bundle`) once
    finished; finished runs are skipped, unfinished ones resumed. Writes `runs/curves.png`; returns the bundle."""
    from melody.data.shards import read_manifest
    from melody.train.curves import plot_stages
    from melody.train.engine import TrainingStopped

    read_manifest(data)
    for plan in STAGES:  # a bad preset or key: one line now, not after hours of training
        make_preset(preset_name, stage_overrides(preset_name, plan.name, user))
    runs = Path(runs)
    bundle = Path(bundle) if bundle is not None else runs / "bundle"
    for plan in STAGES:
        run_dir = runs / plan.name
        if is_finished(run_dir, plan):
            say(f"{plan.name}: finished ({run_dir / plan.model}.safetensors), skipped")
        else:
            resume = (run_dir / "latest.json").is_file()
            say(f"{plan.name}: {'resuming' if resume else 'training'} in {run_dir}")
            frozen = {need: load_stage(bundle / need, need) for need in plan.needs}
            overrides = stage_overrides(preset_name, plan.name, user)
            if run_config(run_dir, preset_name, overrides, resume).train.cached_features:
                cache_features(data, plan, frozen, progress, say)
            init = runs / plan.init if plan.init and not resume else None
            try:
                trained = train_stage(plan.command, data, run_dir, preset_name, overrides, resume, progress, frozen,
                                      init=init)
            except TrainingStopped as stop:
                raise MelodyError(f"{plan.name}: stopped by {stop.signal_name} at step {stop.step}; saved — run the same "
                                  "`melody train all` again to continue") from None
            say(trained.summary())
        export_model(run_dir, bundle / plan.model, plan.model, plan.half)
    # a model's last plan is the run whose curves it shows
    curves = plot_stages({plan.model: runs / plan.name / "metrics.jsonl" for plan in STAGES}, runs / "curves.png",
                         f"melody train all: {runs}")
    say(f"wrote the bundle {bundle} ({', '.join(dict.fromkeys(plan.model for plan in STAGES))}) and the loss curves {curves}")
    return bundle
