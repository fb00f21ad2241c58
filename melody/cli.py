"""The `melody` command line: parses, calls the library, prints. No math lives here.

A `MelodyError` from anywhere below becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from melody import __version__
from melody.demo.cli import demo_command
from melody.errors import MelodyError
from melody.results import generation_record, write_result
from melody.runtime import reuse_freed_memory

app = typer.Typer(
    help="melody: MeLoDy, LM-guided diffusion for efficient text-to-music generation (Lam et al., 2023).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Build, ingest, inspect and check corpora.", no_args_is_help=True)
config_app = typer.Typer(help="Show configuration presets.", no_args_is_help=True)
train_app = typer.Typer(help="Train a stage on the shared engine (accelerate: CPU here, `accelerate launch` for GPUs).",
                        no_args_is_help=True)
eval_app = typer.Typer(help="Evaluate a trained stage on the held-out split.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(config_app, name="config")
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")

PresetOpt = Annotated[str, typer.Option("--preset", help="Named preset: tiny (CPU) or paper (the paper's sizes).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a config key, e.g. --set dpd.blocks=8 (repeatable).")]
ReportOpt = Annotated[Optional[Path], typer.Option("--out", help="Report folder (default: RUN/eval).")]
SplitOpt = Annotated[str, typer.Option("--split", help="Held-out split.")]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", help="At most this many clips.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"melody {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    pass


# --- config -----------------------------------------------------------------------------------


@config_app.command("show")
def config_show(preset: PresetOpt = "tiny", set_: SetOpt = None) -> None:
    """Print a preset (with overrides) as JSON."""
    from melody.config import preset as make_preset
    from melody.config import to_dict

    typer.echo(json.dumps(to_dict(make_preset(preset, set_ or [])), indent=2))


# --- data -------------------------------------------------------------------------------------


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option("--out", help="New folder for the corpus shards.")],
    hours: Annotated[float, typer.Option("--hours", help="Hours of audio to make.")] = 3.0,
    seed: Annotated[int, typer.Option("--seed", help="Corpus seed: the same seed builds the same corpus.")] = 0,
    workers: Annotated[int, typer.Option("--workers", help="Rendering processes.")] = 2,
    preset: PresetOpt = "tiny",
    set_: SetOpt = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Make the built-in captioned corpus offline: procedural styles, music21 scores, real recordings."""
    from melody.config import preset as make_preset
    from melody.data.synth.build import build_corpus

    cfg = make_preset(preset, [*(set_ or []), f"data.hours={hours}", f"data.seed={seed}"])
    if workers < 1:
        raise MelodyError(f"--workers must be at least 1, got {workers}")
    report = build_corpus(out, cfg.data, workers=workers, progress=progress)
    by_source = ", ".join(f"{k} {v / 60:.1f} min" for k, v in report.seconds.items())
    typer.echo(
        f"wrote {sum(report.clips.values())} clips ({report.total_seconds / 3600:.2f} h: {by_source}) to {out} "
        f"in {report.wall_seconds:.0f} s; splits {report.clips}; skipped {len(report.skipped)}"
    )


@data_app.command("ingest")
def data_ingest(
    src: Annotated[Path, typer.Argument(help="Folder of audio files (searched recursively).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the shards (re-running resumes).")],
    captions: Annotated[Optional[Path], typer.Option("--captions", help="JSONL or CSV captions; else a .txt beside each file.")] = None,
    clip_seconds: Annotated[float, typer.Option("--clip-seconds", help="Clip length.")] = 10.0,
    sample_rate: Annotated[int, typer.Option("--sample-rate")] = 24_000,
    channels: Annotated[int, typer.Option("--channels", help="1 (mono) or 2 (stereo).")] = 1,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the split by file.")] = 0,
    lufs: Annotated[float, typer.Option("--lufs", help="Loudness target of every clip (BS.1770).")] = -20.0,
    normalize: Annotated[bool, typer.Option("--normalize/--no-normalize", help="Loudness-normalise clips.")] = True,
    workers: Annotated[int, typer.Option("--workers", help="Decoding processes (output is identical).")] = 1,
    clips_per_shard: Annotated[int, typer.Option("--clips-per-shard", help="Clips per shard: at least processes × "
                                                 "loader workers shards per split for distributed training.")] = 256,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Turn a folder of your own audio plus captions into training shards; bad files are skipped and reported."""
    from melody.data.ingest import ingest

    report = ingest(src, out, captions, clip_seconds=clip_seconds, sample_rate=sample_rate, channels=channels,
                    seed=seed, normalize_lufs=lufs if normalize else None, workers=workers, clips_per_shard=clips_per_shard,
                    progress=progress)
    typer.echo(report.summary())


@data_app.command("check")
def data_check(
    root: Annotated[Path, typer.Argument(help="Corpus folder.")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Report folder (default: ROOT/check).")] = None,
    judge: Annotated[str, typer.Option("--judge", help="Which tagger judges: mtt, msd or both.")] = "both",
    split: Annotated[Optional[str], typer.Option("--split", help="Only this split.")] = None,
    limit: LimitOpt = None,
    k: Annotated[int, typer.Option("--k", help="A hit is an expected tag among the clip's top k.")] = 5,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Do the pretrained musicnn taggers (MTT, MSD) hear what the captions say? Tables and heat maps per style."""
    from melody.data.check import check_corpus, judges_for, report_markdown, write_report

    check = check_corpus(root, judges=judges_for(judge), k=k, split=split, limit=limit, progress=progress)
    paths = write_report(check, out or Path(root) / "check")
    typer.echo(report_markdown(check))
    typer.echo("wrote " + ", ".join(str(p) for p in paths.values()))


@data_app.command("info")
def data_info(root: Annotated[Path, typer.Argument(help="Corpus folder.")]) -> None:
    """Summarise a corpus: clips and hours per split and source."""
    from melody.data.shards import read_manifest

    manifest = read_manifest(root)
    for split, info in manifest["splits"].items():
        typer.echo(f"{split:6s} {info['clips']:6d} clips {info['seconds'] / 3600:7.2f} h {len(info['shards'])} shards")
    if "seconds_by_source" in manifest:
        typer.echo("sources: " + ", ".join(f"{k} {v / 3600:.2f} h" for k, v in manifest["seconds_by_source"].items()))


@data_app.command("stats")
def data_stats(
    root: Annotated[Path, typer.Argument(help="Corpus folder.")],
    split: Annotated[Optional[str], typer.Option("--split", help="Only this split (default: every split).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Folder for stats.json + stats.png (default: ROOT/stats).")] = None,
) -> None:
    """Count a corpus from its metadata (no audio decoded): clips, hours, clip and caption lengths, attribute histograms."""
    from melody.data.stats import corpus_stats, summary, write_stats

    stats = corpus_stats(root, split)
    paths = write_stats(stats, out or Path(root) / "stats")
    typer.echo(summary(stats))
    typer.echo("wrote " + ", ".join(str(p) for p in paths))


@data_app.command("manifest")
def data_manifest(
    src: Annotated[Path, typer.Argument(help="The corpus whose shards were copied elsewhere.")],
    out: Annotated[Path, typer.Argument(help="Folder for the new manifest.json (the corpus to train from).")],
    url: Annotated[str, typer.Option(help="Where each shard is now, with {shard} for its path in SRC: "
                                          "'pipe:aws s3 cp s3://bucket/corpus/{shard} -', 'https://host/corpus/{shard}'.")],
) -> None:
    """Point a corpus at shards that live elsewhere (object store, web server, any `pipe:` command)."""
    from melody.data.shards import relocate_manifest

    typer.echo(f"wrote {relocate_manifest(src, out, url)}; train with --data {out}")


@data_app.command("encode")
def data_encode(
    root: Annotated[Path, typer.Argument(help="Corpus folder.")],
    bundle: Annotated[Optional[Path], typer.Option(help="Take the VAE, tokenizer and MuLan from this bundle (e.g. melody/bundled).")] = None,
    vae: Annotated[Optional[Path], typer.Option(help="VAE-GAN run or model folder (the DPD's latents).")] = None,
    tokenizer: Annotated[Optional[Path], typer.Option(help="Semantic tokenizer run or model folder.")] = None,
    mulan: Annotated[Optional[Path], typer.Option(help="MuLan run or model folder (the semantic LM's condition).")] = None,
    batch_size: Annotated[int, typer.Option(help="Clips per forward pass.")] = 8,
    latents: Annotated[str, typer.Option("--latents", help="float16: the VAE posterior per frame; uint8: its mean at 8 "
                                         "bits and each clip's average log-variance, a quarter of the size (to carry "
                                         "features where space is short); none: no VAE, tokens only (the semantic "
                                         "LM's features, a few kB a clip).")] = "float16",
    progress: ProgressOpt = True,
) -> None:
    """Cache VAE posteriors, semantic tokens and MuLan tokens of every clip (CORPUS/features/<checkpoints' hash>/),
    for `--set train.cached_features=true` in `melody train dpd` and `melody train semantic`."""
    from melody.data.features import LATENT_FORMATS, encode_corpus
    from melody.train.recipes import load_stage

    if latents not in LATENT_FORMATS:
        raise MelodyError(f"--latents {latents}: choose one of {', '.join(LATENT_FORMATS)}")
    paths = {"vae": vae, "tokenizer": tokenizer, "mulan": mulan}
    if bundle is not None:
        paths = {name: path or bundle / name for name, path in paths.items()}
    if latents == "none":
        paths["vae"] = None
    elif paths["vae"] is None:
        raise MelodyError("encode needs a VAE for latents: pass --bundle or --vae, or --latents none for tokens only")
    if paths["tokenizer"] is None:
        raise MelodyError("encode needs a tokenizer: pass --bundle, or --tokenizer (and --mulan for the semantic LM)")
    models = {name: load_stage(path, name)[0] for name, path in paths.items() if path is not None}
    out = encode_corpus(root, models.get("vae"), models["tokenizer"], models.get("mulan"), batch_size=batch_size, progress=progress,
                        latents=latents)
    typer.echo(f"wrote {out}")


@data_app.command("spectrograms")
def data_spectrograms(
    root: Annotated[Path, typer.Argument(help="Corpus folder.")],
    out: Annotated[Path, typer.Option("--out", help="PNG to write.")] = Path("spectrograms.png"),
    per_group: Annotated[int, typer.Option("--per-group", help="Clips per style/source row.")] = 3,
    split: Annotated[str, typer.Option("--split")] = "train",
) -> None:
    """A picture of log-mel spectrograms: a few clips per style (recordings and scores as their own rows)."""
    from melody.data.plots import spectrogram_grid
    from melody.data.shards import iter_samples, read_manifest

    rows: dict[str, list] = {}
    rate = read_manifest(root)["sample_rate"]
    for sample in iter_samples(root, split):
        meta = sample["meta"]
        group = _group(meta)
        if len(rows.setdefault(group, [])) < per_group:
            rows[group].append((meta.get("caption", ""), sample["audio"][0]))
    if not rows:
        raise MelodyError(f"{root}: the '{split}' split holds no clips")
    spectrogram_grid(dict(sorted(rows.items())), rate, out)
    typer.echo(f"wrote {out} ({len(rows)} rows)")


# --- generate ---------------------------------------------------------------------------------

BundleOpt = Annotated[Optional[Path], typer.Option("--bundle", help="Model bundle folder (default: the bundled tiny model).")]
StepsOpt = Annotated[Optional[int], typer.Option("--steps", help="DPD sampling steps (default: the bundle's; 5 for the bundled model).")]
GuidanceOpt = Annotated[Optional[float], typer.Option("--guidance", help="DPD classifier-free guidance (default 2.5).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed: the same seed reproduces the same music.")]
TemperatureOpt = Annotated[Optional[float], typer.Option("--temperature", help="Semantic LM sampling temperature "
                                                         "(default: the bundle's, 1; 0 always takes the likeliest token).")]
TopKOpt = Annotated[Optional[int], typer.Option("--top-k", help="Semantic LM: sample among the k likeliest tokens "
                                                "(default: the bundle's; 0 keeps every token).")]
SolverOpt = Annotated[Optional[str], typer.Option("--solver", help="DPD sampler: ddim (the paper's) or dpmpp-2m "
                                                  "(DPM-Solver++(2M), the same passes; the bundled model's default).")]
LMGuidanceOpt = Annotated[Optional[float], typer.Option("--lm-guidance", help="Semantic LM classifier-free guidance "
                                                        "(default: the bundle's, 3; 1 is none).")]
PlotOpt = Annotated[bool, typer.Option("--plot", help="Also write a spectrogram PNG beside the audio.")]
CompileOpt = Annotated[bool, typer.Option("--compile", help="torch.compile the semantic LM's token step and the DPD's "
                                          "pass: the first chunks wait for the compilation (about a minute on 2 CPU "
                                          "cores, less once inductor's cache holds it), the later ones come faster.")]
ShowProgress = Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar over the stages.")]


class _StageBar:
    """A progress bar over the pipeline's stages, told each stage's name as it starts."""

    def __init__(self, stages: int, enabled: bool) -> None:
        from tqdm.auto import tqdm

        # only on a terminal: a log file or a pipe gets the result lines, not bar redraws
        self.bar = tqdm(total=stages, desc="generate", unit="stage", disable=not enabled or not sys.stderr.isatty(), leave=False)
        self.started = False

    def __call__(self, stage: str) -> None:
        if self.started:
            self.bar.update(1)
        self.started = True
        self.bar.set_description(stage)

    def close(self) -> None:
        self.bar.update(self.bar.total - self.bar.n)
        self.bar.close()


def _melody(bundle: Optional[Path], solver: Optional[str] = None, compile_: bool = False):
    from melody.bundled import BUNDLE
    from melody.pipeline import MeLoDy

    model = MeLoDy.from_pretrained(bundle or BUNDLE)
    if solver is not None:
        model.cfg.dpd.solver = solver
    if compile_:
        model.cfg.semantic_lm.compile = model.cfg.dpd.compile = True
    return model


def _check_out(out: Path) -> Path:
    if out.suffix.lower() not in (".wav", ".flac"):
        raise MelodyError(f"--out {out}: give a .wav or .flac file name")
    if not out.parent.exists():
        raise MelodyError(f"--out {out}: the folder {out.parent} does not exist")
    return out


@app.command("generate")
def generate_command(
    prompt: Annotated[Optional[str], typer.Argument(help="What the music should be, e.g. 'an upbeat funk groove with slap bass'.")] = None,
    duration: Annotated[float, typer.Option("--duration", help="Seconds of music.")] = 10.0,
    out: Annotated[Path, typer.Option("--out", help="Audio file to write (.wav or .flac); a .json sidecar goes beside it.")] = Path("music.wav"),
    steps: StepsOpt = None, guidance: GuidanceOpt = None, seed: SeedOpt = 0,
    temperature: TemperatureOpt = None, top_k: TopKOpt = None, lm_guidance: LMGuidanceOpt = None,
    solver: SolverOpt = None,
    prompt_audio: Annotated[Optional[Path], typer.Option("--prompt-audio", help="A music prompt instead of text.")] = None,
    batch: Annotated[Optional[Path], typer.Option("--batch", help="A text file with one prompt per line.")] = None,
    bpm: Annotated[Optional[float], typer.Option("--bpm", help="Tempo in beats per minute, said in the prompt (wins over a tempo the text names).")] = None,
    key: Annotated[Optional[str], typer.Option("--key", help="Key and mode, e.g. 'A minor' or 'Bb dorian' (wins over a key the text names).")] = None,
    best_of: Annotated[int, typer.Option("--best-of", help="Draw N candidates per prompt; keep the one MuLan finds closest to the prompt.")] = 1,
    fit_tempo: Annotated[Optional[bool], typer.Option("--fit-tempo/--no-fit-tempo", help="Where a prompt states a tempo (--bpm, "
                                                      "or 'at 90 BPM'), measure the music with a beat tracker and stretch it "
                                                      "onto that tempo when it is more than 4 % off (costs a second render). "
                                                      "Default: on for an LM without a beat clock.")] = None,
    precision: Annotated[Optional[str], typer.Option("--precision", help="The networks' precision at sampling: fp32, or "
                                                     "bf16 (the DPD under autocast, the semantic LM's weights in bf16).")] = None,
    device: Annotated[str, typer.Option("--device", help="Where to run: cpu, or cuda[:N] (there the samplers replay CUDA "
                                        "graphs).")] = "cpu",
    bundle: BundleOpt = None, plot: PlotOpt = False, progress: ShowProgress = True,
) -> None:
    """Text (or a music prompt) to music with MeLoDy."""
    import torch

    from melody.audio import audio_info
    from melody.data.synth.captions import with_controls
    from melody.pipeline import MAX_BEST_OF, PRECISIONS, check_device, check_duration, check_prompts, check_sampling

    _check_out(out)
    check_device(device)
    check_sampling(steps, guidance, temperature, top_k, lm_guidance, solver)
    if precision is not None and precision not in PRECISIONS:
        raise MelodyError(f"--precision {precision}: choose one of {', '.join(PRECISIONS)}")
    check_duration(duration)
    sources = sum(x is not None for x in (prompt, prompt_audio, batch))
    if sources != 1:
        raise MelodyError("give exactly one of: a PROMPT, --prompt-audio FILE or --batch FILE")
    if batch is not None:
        if not batch.is_file():
            raise MelodyError(f"--batch {batch}: no such file")
        prompts = [line.strip() for line in batch.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not prompts:
            raise MelodyError(f"--batch {batch}: holds no prompt (one per line)")
    else:
        prompts = [prompt] if prompt is not None else None
    if prompts is not None:
        prompts = [with_controls(p, bpm, key) for p in check_prompts(prompts)]  # before loading anything
    elif bpm is not None or key is not None:
        raise MelodyError("--bpm and --key steer a text prompt; give a PROMPT or --batch with them")
    if not 1 <= best_of <= MAX_BEST_OF:
        raise MelodyError(f"--best-of {best_of}: draw between 1 and {MAX_BEST_OF} candidates")
    if prompt_audio is not None:
        audio_info(prompt_audio)  # a missing or unreadable file: one line, before loading the model
    model = _melody(bundle, solver).to(device)
    if precision is not None:
        model.set_precision(precision)
    music = None
    if prompt_audio is not None:
        from melody.audio import load_audio

        music = torch.from_numpy(load_audio(prompt_audio, model.vae.cfg.sample_rate, 1)).float()  # (1, samples)
    from melody.pipeline import tempo_fit_asks

    fit_tempo = model.fits_tempo if fit_tempo is None else fit_tempo
    fits = fit_tempo and any(bpm is not None for bpm in tempo_fit_asks(prompts, duration))
    bar = _StageBar(1 + (3 + fits) * best_of + (best_of > 1), progress)
    try:
        output = model.generate(prompts, duration, steps, guidance, temperature, top_k, lm_guidance, seed=seed,
                                prompt_audio=music, best_of=best_of, fit_tempo=fit_tempo, progress=bar)
    finally:
        bar.close()
    names = [out] if output.audio.shape[0] == 1 else [out.with_name(f"{out.stem}-{i:03d}{out.suffix}")
                                                      for i in range(output.audio.shape[0])]
    for i, name in enumerate(names):
        record = generation_record(model, output, i, prompt=None if prompts is None else prompts[i],
                         prompt_audio=None if prompt_audio is None else str(prompt_audio), seed=seed + i,
                         duration=duration, steps=steps or model.cfg.dpd.steps, bpm=bpm, key=key,
                         sampling=model.sampling_settings(steps, guidance, temperature, top_k, lm_guidance))
        if best_of > 1:
            record["best_of"] = {"candidates": best_of, "kept": output.candidate[i],
                                 "mulan_scores": [round(x, 4) for x in output.mulan_scores[i]]}
        write_result(name, output.audio[i].cpu().numpy(), output.sample_rate, record, plot)
        fit = record.get("tempo_fit")
        said = "" if fit is None else (f"; tempo fit: heard {fit['heard_bpm']:g} BPM, " + (
            "kept" if fit["rate"] == 1.0 else f"played ×{fit['rate']:.3g} towards {fit['asked_bpm']:g}"))
        typer.echo(f"wrote {name} ({duration:g} s{said})")
    total = sum(output.seconds.values())
    typer.echo(f"{len(names) * duration:g} s of music in {total:.2f} s; forward passes "
               + ", ".join(f"{k} {v}" for k, v in output.forward_passes.items()))


@app.command("continue")
def continue_command(
    audio: Annotated[Path, typer.Argument(help="The clip to continue.")],
    seconds: Annotated[float, typer.Option("--seconds", help="Seconds to add.")] = 10.0,
    out: Annotated[Path, typer.Option("--out", help="Audio file to write: the input followed by its continuation.")] = Path("continued.wav"),
    prompt: Annotated[Optional[str], typer.Option("--prompt", help="Steer the continuation with text (default: the clip itself).")] = None,
    steps: StepsOpt = None, guidance: GuidanceOpt = None, seed: SeedOpt = 0,
    temperature: TemperatureOpt = None, top_k: TopKOpt = None, lm_guidance: LMGuidanceOpt = None,
    solver: SolverOpt = None,
    bundle: BundleOpt = None, plot: PlotOpt = False, progress: ShowProgress = True,
) -> None:
    """Extend a clip: the output starts with the input, unchanged."""
    import torch

    from melody.audio import audio_info, load_audio
    from melody.pipeline import check_duration, check_sampling

    _check_out(out)
    check_duration(seconds)
    check_sampling(steps, guidance, temperature, top_k, lm_guidance, solver)
    audio_info(audio)  # a missing or unreadable file: one line, before loading the model
    model = _melody(bundle, solver)
    clip = torch.from_numpy(load_audio(audio, model.vae.cfg.sample_rate, model.vae.cfg.channels)).float()[None]
    bar = _StageBar(5, progress)
    try:
        output = model.continue_(clip, seconds, None if prompt is None else [prompt], steps, guidance, temperature, top_k,
                                 lm_guidance, seed=seed, progress=bar)
    finally:
        bar.close()
    record = generation_record(model, output, input=str(audio), prompt=prompt, seed=seed, seconds_added=seconds,
                               sampling=model.sampling_settings(steps, guidance, temperature, top_k, lm_guidance))
    write_result(out, output.audio[0].numpy(), output.sample_rate, record, plot)
    typer.echo(f"wrote {out} ({output.audio.shape[-1] / output.sample_rate:.2f} s)")


@app.command("inpaint")
def inpaint_command(
    audio: Annotated[Path, typer.Argument(help="The clip to repair or rework.")],
    start: Annotated[float, typer.Option("--start", help="Where the region to regenerate starts, in seconds.")],
    end: Annotated[float, typer.Option("--end", help="Where it ends, in seconds.")],
    prompt: Annotated[Optional[str], typer.Argument(help="What the region should become (default: the clip itself).")] = None,
    out: Annotated[Path, typer.Option("--out", help="Audio file to write: the input, region made anew.")] = Path("inpainted.wav"),
    blend: Annotated[float, typer.Option("--blend", help="Seconds of crossfade on each side of the region.")] = 0.1,
    steps: StepsOpt = None, guidance: GuidanceOpt = None, seed: SeedOpt = 0,
    temperature: TemperatureOpt = None, top_k: TopKOpt = None, lm_guidance: LMGuidanceOpt = None,
    solver: SolverOpt = None,
    bundle: BundleOpt = None, plot: PlotOpt = False, progress: ShowProgress = True,
) -> None:
    """Regenerate the region --start … --end of a clip; the rest stays the input's own, sample for sample."""
    import torch

    from melody.audio import audio_info, load_audio
    from melody.pipeline import check_prompts, check_region, check_sampling

    _check_out(out)
    check_sampling(steps, guidance, temperature, top_k, lm_guidance, solver)
    info = audio_info(audio)  # a missing or unreadable file: one line, before loading the model
    check_region(start, end, info.frames / info.sample_rate, blend=blend)
    if prompt is not None:
        check_prompts([prompt])
    model = _melody(bundle, solver)
    clip = torch.from_numpy(load_audio(audio, model.vae.cfg.sample_rate, model.vae.cfg.channels)).float()[None]
    bar = _StageBar(5, progress)
    try:
        output = model.inpaint(clip, start, end, None if prompt is None else [prompt], steps, guidance, temperature,
                               top_k, lm_guidance, seed=seed, blend=blend, progress=bar)
    finally:
        bar.close()
    record = generation_record(model, output, input=str(audio), prompt=prompt, seed=seed, start=start, end=end, blend=blend,
                               steps=steps or model.cfg.dpd.steps, sampling=model.sampling_settings(steps, guidance, temperature, top_k, lm_guidance))
    write_result(out, output.audio[0].numpy(), output.sample_rate, record, plot)
    typer.echo(f"wrote {out} ({start:g} s … {end:g} s regenerated)")


@app.command("stream")
def stream_command(
    prompts: Annotated[Path, typer.Option("--prompts", help="A text file: one prompt per chunk, in order.")],
    out: Annotated[str, typer.Option("--out", help="Audio file to write, or '-' for raw 16-bit PCM on stdout.")] = "stream.wav",
    chunk_seconds: Annotated[float, typer.Option("--chunk-seconds", help="Seconds per chunk.")] = 5.0,
    steps: StepsOpt = None, guidance: GuidanceOpt = None, seed: SeedOpt = 0,
    temperature: TemperatureOpt = None, top_k: TopKOpt = None, lm_guidance: LMGuidanceOpt = None,
    solver: SolverOpt = None,
    bundle: BundleOpt = None, progress: ShowProgress = True, compile_: CompileOpt = False,
) -> None:
    """Music that follows a story: one chunk per line of --prompts, each continuing the last without a seam."""
    import numpy as np

    from melody.pipeline import check_sampling

    check_sampling(steps, guidance, temperature, top_k, lm_guidance, solver)
    if not prompts.is_file():
        raise MelodyError(f"--prompts {prompts}: no such file")
    story = [line.strip() for line in prompts.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not story:
        raise MelodyError(f"--prompts {prompts}: holds no prompt (one per line)")
    if out != "-":
        _check_out(Path(out))
    pcm_out = sys.stdout.buffer
    # With --out -, stdout carries nothing but PCM: whatever else anything prints goes to stderr.
    with contextlib.redirect_stdout(sys.stderr) if out == "-" else contextlib.nullcontext():
        model = _melody(bundle, solver, compile_)
        from tqdm.auto import tqdm

        if compile_ and progress:  # the first chunks wait on the compiler with nothing else to show
            typer.echo("compiling the semantic LM's step and the DPD's pass (torch.compile): the first two chunks take "
                       "about a minute on 2 CPU cores, less once inductor's cache holds them", err=True)

        rate, pieces = model.vae.cfg.sample_rate, []
        chunks = model.stream(story, chunk_seconds, steps, guidance, temperature, top_k, lm_guidance, seed=seed)
        for chunk in tqdm(chunks, total=len(story), desc="stream", unit="chunk", disable=not progress or not sys.stderr.isatty()):
            if out == "-":
                pcm = (np.clip(chunk.numpy().T, -1, 1) * 32767).astype("<i2")  # interleaved frames
                pcm_out.write(pcm.tobytes())
                pcm_out.flush()
            else:
                pieces.append(chunk.numpy())
    if out != "-":
        from melody.audio import save_audio

        save_audio(Path(out), np.concatenate(pieces, axis=-1), rate)
        typer.echo(f"wrote {out} ({len(story) * chunk_seconds:g} s, {len(story)} chunks)")


# --- train ------------------------------------------------------------------------------------

DataOpt = Annotated[Path, typer.Option("--data", help="Corpus folder (melody-shards) to train on.")]
RunOpt = Annotated[Path, typer.Option("--out", help="Run folder: checkpoints, logs, samples, the exported model.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue the run in --out exactly where it stopped.")]
ProgressOpt = Annotated[bool, typer.Option(help="Show a progress bar.")]


InitOpt = Annotated[Optional[Path], typer.Option("--init", help="Start from this trained model's weights (a run or model "
                                                  "folder, e.g. melody/bundled/semantic_lm): fine-tuning, with a fresh "
                                                  "optimizer; the config must build the same shapes.")]


def _train(name: str, data: Path, out: Path, preset: str, overrides: list[str], resume: bool, progress: bool,
           frozen: Optional[dict] = None, teacher=None, init: Optional[Path] = None) -> None:
    """Train stage `name` to `train.steps` (or until stopped) and say where its model is."""
    from melody.train.recipes import train_stage

    trained = train_stage(name, data, out, preset, overrides, resume, progress, frozen, teacher, init)
    if int(os.environ.get("RANK", "0")) == 0:  # under a launcher, once, not once per process
        typer.echo(trained.summary())
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Every rank has finished, saved and left the process group together (`Engine.fit`). Twice in the full suite a
        # 2-process FSDP run then aborted in the interpreter's teardown ("terminate called without an active
        # exception": a C++ thread destroyed while joinable) and the launcher reported a finished run as failed. Its
        # work is on disk, so the process leaves without that teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


@train_app.command("vae")
def train_vae(data: DataOpt, out: RunOpt, preset: PresetOpt = "tiny", set_: SetOpt = None, resume: ResumeOpt = False,
              progress: ProgressOpt = True) -> None:
    """Train the audio VAE-GAN (waveform ⇄ latents)."""
    _train("vae", data, out, preset, set_ or [], resume, progress)


@train_app.command("mulan")
def train_mulan(data: DataOpt, out: RunOpt, preset: PresetOpt = "tiny", set_: SetOpt = None, resume: ResumeOpt = False,
                progress: ProgressOpt = True) -> None:
    """Train the MuLan joint text/audio embedding (contrastive), then fit its RVQ tokens."""
    _train("mulan", data, out, preset, set_ or [], resume, progress)


@train_app.command("tokenizer")
def train_tokenizer(
    data: DataOpt, out: RunOpt, preset: PresetOpt = "tiny", set_: SetOpt = None, resume: ResumeOpt = False,
    teacher: Annotated[Optional[Path], typer.Option("--teacher", help="A trained tokenizer run: predict its tokens "
                                                    "(HuBERT's second iteration) instead of log-mel k-means classes.")] = None,
    encoder: Annotated[Optional[Path], typer.Option("--encoder", help="A trained tokenizer (run or model folder) whose "
                                                    "encoder to keep as it is: take no step, only fit a new codebook "
                                                    "with this run's settings, e.g. --set tokenizer.onset_weight=1.")] = None,
    progress: ProgressOpt = True,
) -> None:
    """Train the HuBERT-style semantic tokenizer by masked prediction, then fit its k-means codebook."""
    previous = _load_stage(teacher, "tokenizer")[0] if teacher is not None else None
    frozen = {"encoder": _load_stage(encoder, "tokenizer")} if encoder is not None else None
    _train("tokenizer", data, out, preset, set_ or [], resume, progress, frozen, teacher=previous)


MuLanRunOpt = Annotated[Path, typer.Option("--mulan", help="Trained MuLan run (or model folder).")]
TokenizerRunOpt = Annotated[Path, typer.Option("--tokenizer", help="Trained semantic tokenizer run (or model folder).")]


@train_app.command("semantic")
def train_semantic(data: DataOpt, out: RunOpt, mulan: MuLanRunOpt, tokenizer: TokenizerRunOpt, preset: PresetOpt = "tiny",
                   set_: SetOpt = None, resume: ResumeOpt = False, progress: ProgressOpt = True, init: InitOpt = None) -> None:
    """Train the semantic LM: MuLan tokens of a clip's audio → its semantic tokens (both conditioners frozen)."""
    frozen = {"mulan": _load_stage(mulan, "mulan"), "tokenizer": _load_stage(tokenizer, "tokenizer")}
    _train("semantic", data, out, preset, set_ or [], resume, progress, frozen, init=init)


@train_app.command("dpd")
def train_dpd(
    data: DataOpt, out: RunOpt,
    vae: Annotated[Path, typer.Option("--vae", help="Trained VAE-GAN run (or model folder).")],
    tokenizer: Annotated[Path, typer.Option("--tokenizer", "--semantic", help="Trained semantic tokenizer run (or model folder).")],
    mulan: Annotated[Optional[Path], typer.Option("--mulan", help="Trained MuLan run (or model folder): for "
                                                  "--set dpd.mulan_condition=true, a DPD that hears MuLan tokens too.")] = None,
    preset: PresetOpt = "tiny", set_: SetOpt = None, resume: ResumeOpt = False, progress: ProgressOpt = True,
    init: InitOpt = None,
) -> None:
    """Train the dual-path diffusion model: semantic tokens + noise → VAE latents (both frozen, run on the fly)."""
    frozen = {"vae": _load_stage(vae, "vae"), "tokenizer": _load_stage(tokenizer, "tokenizer")}
    if mulan is not None:
        frozen["mulan"] = _load_stage(mulan, "mulan")
    _train("dpd", data, out, preset, set_ or [], resume, progress, frozen, init=init)


@train_app.command("musiclm")
def train_musiclm(
    data: DataOpt, out: RunOpt,
    bundle: Annotated[Path, typer.Option("--bundle", help="The melody bundle whose MuLan, tokenizer, semantic LM and VAE "
                                         "the baseline shares (e.g. melody/bundled).")],
    preset: Annotated[str, typer.Option("--preset", help="MusicLM-style preset: tiny (CPU) or paper.")] = "tiny",
    set_: SetOpt = None, resume: ResumeOpt = False, progress: ProgressOpt = True,
) -> None:
    """Train the MusicLM-style baseline: fit its codec (k-means RVQ), then its coarse and fine acoustic LMs."""
    from melody.train.musiclm import train_musiclm as train_baseline

    typer.echo(train_baseline(data, bundle, out, preset, set_ or [], resume, progress).summary())


@train_app.command("all")
def train_all(
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="Runs folder: one run per stage (OUT/vae, OUT/mulan, ...), "
                                      "OUT/curves.png and the bundle.")],
    preset: PresetOpt = "tiny", set_: SetOpt = None,
    bundle: Annotated[Optional[Path], typer.Option("--bundle", help="Where to export the trained model "
                                                   "(default: OUT/bundle).")] = None,
    progress: ProgressOpt = True,
) -> None:
    """Train every stage in order (vae, mulan, tokenizer, semantic, dpd) with the bundled model's recipe, then bundle them.

    Finished stages are skipped and an unfinished one resumed, so re-running after Ctrl-C continues. --set applies to every stage, after the recipe."""
    from melody.train.recipes import train_all as train_everything

    folder = train_everything(data, out, preset, set_ or [], bundle, progress, say=typer.echo)
    typer.echo(f'generate with: melody generate "a calm piano piece" --bundle {folder}')


@app.command("export")
def export(
    run: Annotated[Path, typer.Argument(help="Run folder (its exported model, or its newest checkpoint).")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write <stage>.safetensors + config.json to.")],
    stage: Annotated[str, typer.Option("--stage", help="Which stage's model: vae, mulan, tokenizer, semantic_lm or dpd.")] = "vae",
    half: Annotated[bool, typer.Option("--half/--full", help="Store float16 (half the size; loads as float32).")] = False,
    step: Annotated[Optional[int], typer.Option("--step", help="Export the run's kept checkpoint of this step (its raw "
                                                "weights) instead of the finished model or the newest checkpoint.")] = None,
) -> None:
    """Copy a trained stage's model into a self-contained folder (e.g. to bundle or share it)."""
    from melody.train.recipes import export_model

    path = export_model(run, out, stage, half, step)
    typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


def _load_stage(run: Path, stage: str):
    """(model, config) of a stage from a run or model folder."""
    from melody.train.recipes import load_stage

    return load_stage(run, stage)


# --- eval -------------------------------------------------------------------------------------


@eval_app.command("vae")
def eval_vae(
    run: Annotated[Path, typer.Argument(help="Run folder of `melody train vae` (or any folder with vae.safetensors + config.json).")],
    data: DataOpt,
    out: ReportOpt = None,
    split: Annotated[str, typer.Option("--split", help="Held-out split to reconstruct.")] = "test",
    limit: LimitOpt = None,
    tagger: Annotated[bool, typer.Option("--tagger/--no-tagger", help="Compare musicnn's top tags of original and reconstruction.")] = True,
    progress: ProgressOpt = True,
) -> None:
    """Reconstruct held-out clips; report mel/STFT distances, SI-SDR, latent statistics and tag agreement."""
    from tqdm.auto import tqdm

    from melody.eval.vae import evaluate_vae, write_vae_report

    vae, _ = _load_stage(run, "vae")
    judge = None
    if tagger:
        from melody.ears.musicnn import MusicnnTagger

        judge = MusicnnTagger.load("MTT_musicnn")
    with tqdm(desc="eval vae", unit="clip", total=limit, disable=not progress) as bar:
        report, examples = evaluate_vae(vae, data, split, limit, judge, progress=lambda: bar.update(1))
    paths = write_vae_report(report, examples, vae.cfg.sample_rate, out or run / "eval")
    typer.echo(f"{report.clips} {split} clips: mel distance {report.mel_distance:.3f}, multi-res STFT {report.stft_distance:.3f}, "
               f"SI-SDR {report.si_sdr_db:.2f} dB, latent cut {100 * report.latent_cut_fraction:.3f} %")
    if report.tag_top5_overlap is not None:
        typer.echo(f"musicnn top-5 tag overlap {report.tag_top5_overlap:.2f} (different clips: "
                   f"{report.tag_top5_overlap_between_different_clips or float('nan'):.2f}), top-1 match {report.tag_top1_match:.2f}")
    typer.echo(f"wrote {paths[0]} and {paths[1]}")


@eval_app.command("mulan")
def eval_mulan(
    run: Annotated[Path, typer.Argument(help="Run folder of `melody train mulan` (or any folder with mulan.safetensors + config.json).")],
    data: DataOpt,
    out: ReportOpt = None,
    split: SplitOpt = "test",
    limit: LimitOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Text→audio and audio→text retrieval on held-out clips, matched vs mismatched cosine, token agreement."""
    from tqdm.auto import tqdm

    from melody.eval.mulan import evaluate_mulan, summary, write_mulan_report

    mulan, _ = _load_stage(run, "mulan")
    with tqdm(desc="eval mulan", unit="clip", total=limit, disable=not progress) as bar:
        report, similarity = evaluate_mulan(mulan.eval(), data, split, limit, progress=bar.update)
    paths = write_mulan_report(report, similarity, out or run / "eval")
    typer.echo(summary(report))
    typer.echo(f"wrote {paths[0]} and {paths[1]}")


@eval_app.command("semantic")
def eval_semantic(
    run: Annotated[Path, typer.Argument(help="Run folder of `melody train semantic` (or any folder with semantic_lm.safetensors).")],
    data: DataOpt,
    mulan: MuLanRunOpt,
    tokenizer: TokenizerRunOpt,
    out: ReportOpt = None,
    split: SplitOpt = "test",
    limit: LimitOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Held-out perplexity of the semantic LM (audio, text and null condition) against unigram and bigram baselines."""
    from tqdm.auto import tqdm

    from melody.eval.semantic import evaluate_semantic, summary, write_semantic_report

    lm, cfg = _load_stage(run, "semantic_lm")
    mulan_model, tokenizer_model = _load_stage(mulan, "mulan")[0], _load_stage(tokenizer, "tokenizer")[0]
    if (lm.vocab_size, lm.mulan_levels, lm.mulan_codebook_size) != (tokenizer_model.quantizer.codebook_size,
                                                                     mulan_model.rvq.levels, mulan_model.rvq.codebook_size):
        raise MelodyError(f"{run}: the LM was trained with other conditioners (vocabulary {lm.vocab_size}, "
                          f"{lm.mulan_levels} × {lm.mulan_codebook_size} MuLan codes); pass the --mulan and --tokenizer it used")
    with tqdm(desc="eval semantic", unit="clip", disable=not progress) as bar:
        report = evaluate_semantic(lm, mulan_model, tokenizer_model, data, split, cfg.semantic_lm.window_seconds,
                                   limit, progress=bar.update, guidance=cfg.semantic_lm.guidance)
    paths = write_semantic_report(report, out or run / "eval")
    typer.echo(summary(report))
    typer.echo(f"wrote {paths[0]} and {paths[1]}")


@eval_app.command("dpd")
def eval_dpd(
    run: Annotated[Path, typer.Argument(help="Run folder of `melody train dpd` (or any folder with dpd.safetensors).")],
    data: DataOpt,
    vae: Annotated[Path, typer.Option("--vae", help="The VAE-GAN the DPD was trained with.")],
    tokenizer: TokenizerRunOpt,
    out: ReportOpt = None,
    split: SplitOpt = "test",
    steps: Annotated[str, typer.Option("--steps", help="Sampling step counts, comma-separated (one row each).")] = "10",
    seconds: Annotated[float, typer.Option("--seconds", help="Seconds of each clip to regenerate.")] = 10.0,
    limit: LimitOpt = None,
    tagger: Annotated[bool, typer.Option("--tagger/--no-tagger", help="Compare musicnn's top tags.")] = True,
    mulan: Annotated[Optional[Path], typer.Option("--mulan", help="The MuLan a DPD trained with "
                                                  "dpd.mulan_condition hears (its run or model folder).")] = None,
    progress: ProgressOpt = True,
) -> None:
    """Regenerate held-out clips from their own semantic tokens; mel distance and tag agreement vs chance and the VAE floor."""
    from tqdm.auto import tqdm

    from melody.eval.dpd import evaluate_dpd, summary, write_dpd_report

    try:
        counts = tuple(int(t) for t in steps.split(",") if t.strip())
    except ValueError:
        raise MelodyError(f"--steps wants comma-separated integers, e.g. 5,10,20; got '{steps}'") from None
    if not counts or min(counts) < 1:
        raise MelodyError(f"--steps wants step counts of at least 1, got '{steps}'")
    dpd, cfg = _load_stage(run, "dpd")
    vae_model, tokenizer_model = _load_stage(vae, "vae")[0], _load_stage(tokenizer, "tokenizer")[0]
    mulan_model = _load_stage(mulan, "mulan")[0] if mulan is not None else None
    judge = None
    if tagger:
        from melody.ears.musicnn import MusicnnTagger

        judge = MusicnnTagger.load("MTT_musicnn")
    with tqdm(desc="eval dpd", unit="clip", total=limit, disable=not progress) as bar:
        report, examples = evaluate_dpd(dpd, vae_model, tokenizer_model, data, split, seconds, counts, cfg.dpd.guidance,
                                        limit=limit, tagger=judge, progress=lambda: bar.update(1), mulan=mulan_model)
    paths = write_dpd_report(report, examples, vae_model.cfg.sample_rate, out or run / "eval")
    typer.echo(summary(report))
    typer.echo(f"wrote {paths[0]} and {paths[1]}")


@eval_app.command("music")
def eval_music(
    data: DataOpt,
    bundle: Annotated[Optional[Path], typer.Argument(help="Model bundle folder, or a `melody train all` run holding "
                                                     "one in RUN/bundle (default: the bundled tiny model).")] = None,
    out: Annotated[Path, typer.Option("--out", help="Report folder.")] = Path("music_eval"),
    split: SplitOpt = "test",
    limit: LimitOpt = None,
    seconds: Annotated[float, typer.Option("--seconds", help="Seconds of each clip to compare and of music to make.")] = 10.0,
    steps: StepsOpt = None, guidance: GuidanceOpt = None, seed: SeedOpt = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Prompts per generate call.")] = 4,
    attribute_clips: Annotated[int, typer.Option("--attribute-clips", help="Train-split clips (spread over it) the style, "
                                                 "instrument, tempo and mode classifiers learn from; 0: none.")] = 400,
    baseline: Annotated[Optional[Path], typer.Option("--baseline", help="A MusicLM-style baseline (`melody train musiclm`'s "
                                                     "run folder) to evaluate instead, on top of the bundle, with the "
                                                     "same clips and seeds.")] = None,
    fit_tempo: Annotated[bool, typer.Option("--fit-tempo/--no-fit-tempo", help="The pipeline's tempo fit on for captions "
                                            "that state a tempo (off: the model alone, as the baseline).")] = False,
    source: Annotated[str, typer.Option("--source", help="What the judged music is made from: caption (the whole "
                                        "pipeline), tokens (the DPD from each real clip's own semantic tokens: the LM "
                                        "left out) or vae (each real clip through the VAE), to tell which stage loses "
                                        "what the captions ask for.")] = "caption",
    best_of: Annotated[int, typer.Option("--best-of", help="Each caption's music the best of N candidates by MuLan, as "
                                         "`generate --best-of` (N times the generation).")] = 1,
    progress: ProgressOpt = True,
) -> None:
    """Generate music from the held-out clips' captions; FAD, MuLan cycle consistency, tag and tempo adherence vs the real clips.

    The whole model (a bundle) is judged here, so this is `eval music` beside the per-stage `eval vae|mulan|semantic|dpd`
    (issue 7 calls it `melody eval RUN_OR_BUNDLE`). Writes OUT/music_eval.json, .md (the table) and .png."""
    from tqdm.auto import tqdm

    from melody.bundled import BUNDLE
    from melody.data.shards import shard_paths
    from melody.eval.music import evaluate_music, summary, write_music_report

    shard_paths(data, split)  # a missing corpus or split: one line, before loading the model
    if bundle is not None and (bundle / "bundle").is_dir():
        bundle = bundle / "bundle"
    model = _melody(bundle)
    judged = None
    if baseline is not None:
        from melody.baselines.musiclm import MusicLMStyle

        judged = MusicLMStyle.from_pretrained(baseline, model)
    with tqdm(desc="eval music", unit="clip", total=limit, disable=not progress) as bar:
        report, examples = evaluate_music(model, data, split, seconds, limit, steps, guidance, seed, batch_size,
                                          bundle=str(baseline or bundle or BUNDLE), progress=bar.update,
                                          attribute_clips=attribute_clips, baseline=judged, fit_tempo=fit_tempo,
                                          source=source, best_of=best_of)
    paths = write_music_report(report, examples, out)
    typer.echo(summary(report))
    typer.echo("wrote " + ", ".join(str(p) for p in paths))


@eval_app.command("compare")
def eval_compare(
    first: Annotated[Path, typer.Argument(help="A `melody eval music` report: its music_eval.json or its folder.")],
    second: Annotated[Path, typer.Argument(help="Another, on the same clips.")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Also write OUT/compare.json and compare.md.")] = None,
) -> None:
    """Tell two `eval music` reports on the same clips apart, clip by clip: which clips changed, and how sure that is.

    Right/wrong outcomes (each attribute classifier, the tempo's octave) get McNemar's exact p over the clips right under
    one model only; per-clip values (MCC, tag adherence, tempo error) the mean difference and its bootstrap interval."""
    from melody.eval.compare import compare_reports, markdown, read_report, write_comparison

    comparison = compare_reports(read_report(first), read_report(second))
    typer.echo(markdown(comparison), nl=False)
    if out is not None:
        typer.echo("wrote " + ", ".join(str(p) for p in write_comparison(comparison, out)))


@app.command("bench")
def bench_command(
    bundle: Annotated[Optional[Path], typer.Argument(help="Model bundle folder for the `bundled` shapes "
                                                     "(default: the bundled tiny model).")] = None,
    seconds: Annotated[Optional[list[float]], typer.Option("--seconds", help="Seconds of music per run "
                                                           "(repeatable; default 10 and 30).")] = None,
    shapes: Annotated[Optional[list[str]], typer.Option("--shapes", help="bundled, paper (random weights), bundled@bf16 or paper@bf16 "
                                                        "(the DPD under bf16 autocast, the LM's weights in bf16), musicgen-small or "
                                                        "musicgen-small@bf16 (its weights in bf16), "
                                                        "optionally with its own durations, e.g. paper:10 "
                                                        "(repeatable; default bundled).")] = None,
    threads: Annotated[int, typer.Option("--threads", help="Intra-op threads of every run.")] = 2,
    steps: Annotated[Optional[list[int]], typer.Option("--steps", help="DPD sampling steps of the MeLoDy runs (repeatable: "
                                                       "each shape set runs at each; default: the bundle's or preset's "
                                                       "own).")] = None,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda[:N].")] = "cpu",
    out: Annotated[Path, typer.Option("--out", help="Report folder: bench.json, bench.md, bench.png.")] = Path("bench"),
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Print each run's steps.")] = True,
    compile_: Annotated[bool, typer.Option("--compile", help="On a CUDA device: also time MeLoDy with both samplers "
                                           "torch.compiled before their CUDA graphs are recorded.")] = False,
) -> None:
    """Forward passes, wall time, real-time factor, peak memory and roofline bounds per stage; MusicGen-small shapes beside."""
    from melody.eval.bench import run_bench, summary, write_bench_report

    report = run_bench(bundle, seconds or [10.0, 30.0], shapes or ["bundled"], threads, steps, device,
                       progress=(lambda line: typer.echo(line, err=True)) if progress else None,
                       partial=lambda done: write_bench_report(done, out),  # the runs done so far survive a stop
                       compile=compile_)
    paths = write_bench_report(report, out)
    typer.echo(summary(report))
    typer.echo("wrote " + ", ".join(str(p) for p in paths))


def _group(meta: dict) -> str:
    style = (meta.get("attributes") or {}).get("style")
    if meta.get("source") == "recording" or not style:
        return f"[{meta.get('source', 'clip')}]"
    return style if meta.get("source") == "procedural" else f"{style} (score)"


app.command("demo")(demo_command)


def main() -> None:
    reuse_freed_memory()  # large activations reused rather than mapped afresh at every pass (`melody.runtime`)
    try:
        app()
    except MelodyError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted; outputs written so far are complete files, partial ones were removed", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
