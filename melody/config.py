"""Typed configuration for every stage of MeLoDy, with named presets.

The tree mirrors the pipeline of the paper (Fig. 1): `data`, `vae` (audio VAE-GAN), `mulan`
(joint text/audio embedding + RVQ tokens), `tokenizer` (self-supervised features + k-means →
semantic tokens), `semantic_lm`, `dpd` (dual-path diffusion) and `train` (the shared engine).

The dataclass defaults are the `paper` preset: the sizes in `shared/reference/melody-paper.md`
(24 kHz, VAE down-sampling 96 → 250 Hz × 16 latents, 12 MuLan tokens × 1024 codes, 25 Hz
semantic tokens with 1024 centroids, DPD hidden 768 with 8 dual-path blocks, segments of 64
with hop 32, merge factors 2-4-8-16-16-8-4-2, 4 chunks, guidance 2.5). Where the paper gives
no number (LM depth/width, MuLan towers, optimiser) the default is our documented choice.
Every other preset is a set of overrides written the same way a user writes `--set`, so a
preset is data, not code.

A config is saved as JSON next to every checkpoint (`save_config` / `load_config`) and loaded
back strictly: an unknown key or a value of the wrong type is a one-line `MelodyError` naming
the key. Keys missing from an older file take their defaults.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from melody.errors import MelodyError
from melody.io import read_json, write_json_atomic

CONFIG_FORMAT_VERSION = 1


@dataclass
class DataConfig:
    """The built-in corpus and clip loading (issue 2)."""

    sample_rate: int = 24_000
    channels: int = 1
    clip_seconds: float = 10.0
    hours: float = 3.0
    seed: int = 0
    valid_fraction: float = 0.05
    test_fraction: float = 0.05
    # Shares of the built-in corpus by source; real recordings feed the text-free stages above all.
    procedural_share: float = 0.55
    score_share: float = 0.2
    recording_share: float = 0.25
    piece_seconds: float = 20.0
    soundfont: str = ""  # empty: FluidR3_GM, else TimGM6mb, from Debian's packages
    clips_per_shard: int = 256


@dataclass
class VAEConfig:
    """Audio VAE-GAN (paper: 100.1 M params, encoder 256 channels, decoder 768, 24 kHz / 96 → 250 Hz × 16).

    Widths are given at the latent end and halve at every stride towards the waveform (DAC's
    layout), never below `min_channels`. Loss weights under the keys the training logs use
    (`mel`, `adv`, `feat`, `kl`); the discriminators join at `disc_start_step`.
    """

    sample_rate: int = 24_000
    channels: int = 1
    latent_dim: int = 16
    strides: tuple[int, ...] = (2, 4, 4, 3)  # their product is the hop: samples per latent frame
    # "conv": the paper's HiFi-GAN-style strided / transposed-conv stacks. "stft": a frame-rate
    # variant for CPUs (Vocos-style): STFT → ConvNeXt encoder; ConvNeXt → STFT coefficients → iSTFT.
    architecture: str = "conv"
    encoder_channels: int = 256
    decoder_channels: int = 768
    min_channels: int = 8  # conv: narrowest stage
    dilations: tuple[int, ...] = (1, 3, 9)  # conv: residual units per stage
    encoder_layers: int = 4  # stft: ConvNeXt blocks
    decoder_layers: int = 8  # stft: ConvNeXt blocks
    window_hops: int = 4  # stft: window length in hops (n_fft = window_hops × hop)
    # Latents are clamped at ±latent_clamp, then divided by it → [-1, 1] for the diffusion. 3 before
    # training; at export it is set from the data so that `latent_cut` of the values are cut (§3.3: < 0.1 %).
    latent_clamp: float = 3.0
    latent_cut: float = 0.0005
    # Discriminators: multi-period (HiFi-GAN) and multi-resolution complex STFT (EnCodec).
    mpd_periods: tuple[int, ...] = (2, 3, 5, 7, 11)
    mpd_channels: int = 32
    stft_ffts: tuple[int, ...] = (2048, 1024, 512)
    stft_channels: int = 32
    adv_loss: str = "lsgan"  # or "hinge"
    # Multi-scale mel reconstruction: 7 window lengths, mel bins growing with the window (DAC).
    mel_windows: tuple[int, ...] = (32, 64, 128, 256, 512, 1024, 2048)
    mel_bins: tuple[int, ...] = (5, 10, 20, 40, 80, 160, 320)
    mel_weight: float = 15.0
    adv_weight: float = 1.0
    feat_weight: float = 2.0
    kl_weight: float = 0.004
    disc_start_step: int = 10_000
    crop_seconds: float = 1.0  # training crop length


@dataclass
class MuLanConfig:
    """MuLan-style joint embedding and its residual-quantised tokens (paper: 195.3 M, 12 tokens)."""

    embed_dim: int = 128
    audio_dim: int = 768
    audio_layers: int = 12
    audio_heads: int = 12
    n_mels: int = 128
    text_encoder: str = "all-MiniLM-L6-v2"
    rvq_levels: int = 12
    codebook_size: int = 1024
    temperature: float = 0.07
    crop_seconds: float = 10.0  # MuLan and MusicLM embed 10 s clips
    # A local LAION-CLAP folder (transformers `ClapModel`) to take the joint embedding from instead of training
    # MuLan's towers: `melody train mulan` then only fits the RVQ of the tokens on CLAP's embeddings.
    pretrained: str = ""
    pretrained_fingerprint: str = ""  # of that model's weights, recorded at training; a different model is refused


@dataclass
class TokenizerConfig:
    """Semantic tokenizer: self-supervised frame features at 25 Hz + k-means with 1024 centroids."""

    frame_rate: int = 25
    codebook_size: int = 1024
    dim: int = 768
    layers: int = 12
    heads: int = 12
    n_mels: int = 80
    mask_prob: float = 0.08
    feature_layer: int = 6
    # Iteration 1's masked-prediction targets: k-means classes of log-mel frames (HuBERT: 100 MFCC clusters).
    targets: int = 100
    kmeans_frames: int = 100_000  # frames sampled to fit the targets and the token codebook
    # Onset strength (spectral flux of the encoder's log-mel frames) as one more k-means dimension, weighted so
    # that its variance is onset_weight² × the features' total (0: the features alone, the paper's tokens).
    # Outside the paper: a small encoder's features barely mark onsets, so its tokens lose the rhythm.
    onset_weight: float = 0.0
    crop_seconds: float = 10.0
    # A local HuBERT / Wav2Vec2-Conformer folder (transformers) to take the features from instead of the built-in
    # encoder: `melody train tokenizer` then only fits the k-means codebook on its `feature_layer`.
    pretrained: str = ""
    pretrained_fingerprint: str = ""  # of that model's weights, recorded at training; a different model is refused


@dataclass
class SemanticLMConfig:
    """LLaMA-style decoder over [MuLan tokens | semantic tokens] (paper: 429.5 M, 10 s windows)."""

    dim: int = 1024
    depth: int = 24
    heads: int = 16
    window_seconds: float = 10.0
    stride_seconds: float = 5.0
    cond_dropout: float = 0.1
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    guidance: float = 3.0  # classifier-free guidance scale at sampling (the paper gives none for the LM; MusicGen's 3)
    dropout: float = 0.0  # on each sublayer's output; a small corpus needs it against memorising
    # Share of training examples conditioned on their caption's MuLan tokens instead of their audio's
    # (0: the paper's audio-only recipe; a captioned corpus lets the LM see what prompts give).
    text_condition_prob: float = 0.0
    # A tempo token beside the MuLan tokens (0: none, the paper's LM): BPM in `tempo_buckets` log-spaced
    # buckets over `tempo_range`, from the clip's metadata in training and from the prompt or --bpm at
    # sampling; `tempo_dropout` of the training examples go without it, so a prompt naming no tempo works.
    tempo_buckets: int = 0
    tempo_range: tuple[float, ...] = (40.0, 240.0)
    tempo_dropout: float = 0.3
    # Training only, with the tempo token: examples that state their tempo are played faster or slower by a rate
    # drawn log-uniformly in [1 / (1 + s), 1 + s] (`stretch_tokens`), their tempo token moved with them, so that the
    # token, not the corpus's usual pace, sets how fast tokens come (0: off; outside the paper).
    tempo_stretch: float = 0.0
    # With the stretch: the condition says the new tempo too. A stretched example's caption restates it as
    # `generate(bpm=)` words it (`with_controls`), and MuLan tokens of the clip's audio, which cannot, are never
    # stretched. Off, a stretched example's caption and audio tokens still say the clip's own tempo.
    tempo_restate: bool = False
    # With the tempo token: a beat clock beside each semantic token (`beat_clock`; outside the paper). The input that
    # predicts frame i also holds sin/cos of its phase on the beat grid of the stated tempo (bars, half bars, beats,
    # half beats), so every frame of a window, not only its first second, shows the LM where the asked beats fall.
    tempo_clock: bool = False
    # The clock is part of the condition that guidance drops and strengthens (True), or an input both branches get
    # (False: the unconditional branch is clocked too, so guidance strengthens only the caption and the tempo token).
    clock_guided: bool = True
    # With clock_guided=False: > 0 guides the clock and the caption apart, in three branches (`two_scale_cfg_logits`):
    # ℓ_u + tempo_guidance (ℓ_β − ℓ_u) + guidance (ℓ_c − ℓ_β), ℓ_β the null condition with the clock; 0: one scale
    tempo_guidance: float = 0.0
    # How a MuLan token enters the LM: "table", one learned vector per (level, code) (the paper is silent); or
    # "codebook", level l's position holds a learned projection of the RVQ's running reconstruction Σ_{i≤l} q_i, the
    # MuLan embedding at l levels' precision, so nearby embeddings give nearby conditions (a small corpus's LM then
    # cannot read a clip's 12 codes as its name). `condition_noise` σ: training-time Gaussian noise on those
    # reconstructions (codebook only: a table LM refuses it; 0: off).
    condition_embedding: str = "table"
    condition_noise: float = 0.0
    # At sampling: "fp32", or "bf16" weights (a bf16 copy: one token's pass streams every weight, so half the bytes
    # is what counts on a CPU); the sampler reads the logits in fp32.
    precision: str = "fp32"
    cuda_graphs: bool = True  # at sampling on a CUDA device: each token's step replayed as one CUDA graph
    # at sampling: the token step through torch.compile (inductor), then recorded as above; costs a compilation
    # at the first token (tens of seconds), so it pays where one process generates many clips (a server, a bench)
    compile: bool = False


@dataclass
class DPDConfig:
    """Dual-path diffusion over VAE latents (paper: 296.6 M, hidden 768, 8 dual-path blocks)."""

    latent_dim: int = 16
    hidden: int = 768
    blocks: int = 8
    segment_size: int = 64
    segment_hop: int = 32
    merge_factors: tuple[int, ...] = (2, 4, 8, 16, 16, 8, 4, 2)
    angle_dim: int = 256
    heads: int = 8
    roformer_layers: int = 3  # per block, across segments (the paper gives none; 3 puts DPD at 314 M vs 296.6 M)
    sru_layers: int = 2
    recurrence: str = "sru"  # within segments: "sru" (the paper's) or "gru" (faster on CPUs)
    chunks: int = 4
    cond_dropout: float = 0.1
    # outside the paper: the DPD also hears the prompt's MuLan tokens (through MuLan's codebooks), beside the semantic
    # tokens, so the caption's style reaches the renderer directly (`melody.dpd`, "MuLan condition")
    mulan_condition: bool = False
    text_condition_prob: float = 0.5  # with mulan_condition: share of training examples told their caption's tokens
    guidance: float = 2.5
    steps: int = 10
    solver: str = "ddim"  # at sampling: "ddim" (the paper's angle-DDIM) or "dpmpp-2m" (DPM-Solver++(2M), same passes)
    clean_prob: float = 0.5  # share of training windows with a clean left or right stretch (continuation)
    crop_seconds: float = 10.0  # training window
    window_seconds: float = 10.0  # sampling window (rotary positions and recurrence: any length works)
    precision: str = "fp32"  # the network at sampling: "fp32", or "bf16" autocast (the sampler's state stays fp32)
    cuda_graphs: bool = True  # at sampling on a CUDA device: each pass replayed as one CUDA graph (per input shape)
    compile: bool = False  # at sampling: the pass through torch.compile (inductor) first, compiled once per input shape


@dataclass
class TrainConfig:
    """The shared training engine (accelerate)."""

    batch_size: int = 16  # global: examples per optimiser step, over all processes and accumulation steps
    grad_accum: int = 1  # micro-batches per optimiser step on each process
    lr: float = 2e-4
    weight_decay: float = 0.0
    steps: int = 100_000
    warmup_steps: int = 1_000
    grad_clip: float = 1.0
    ema_decay: float = 0.0  # 0 disables EMA
    mixed_precision: str = "bf16"  # used where the device supports it
    checkpoint_every: int = 1_000
    log_every: int = 50
    sample_every: int = 5_000
    num_workers: int = 2
    shuffle_buffer: int = 256  # clips in the loader's shuffle buffer (per reader); 0 reads shards in order
    # FSDP (FSDP2): shard weights, gradients and optimiser state over the processes instead of replicating them
    # (DDP); for the dpd and semantic_lm stages, e.g. at `paper` sizes on many GPUs. Checkpoints stay whole.
    fsdp: bool = False
    cached_features: bool = False  # DPD / semantic LM: read `melody data encode`'s features instead of running the frozen models
    seed: int = 0


@dataclass
class MelodyConfig:
    """The whole configuration tree; `preset` records where it started."""

    preset: str = "paper"
    data: DataConfig = field(default_factory=DataConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    mulan: MuLanConfig = field(default_factory=MuLanConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    semantic_lm: SemanticLMConfig = field(default_factory=SemanticLMConfig)
    dpd: DPDConfig = field(default_factory=DPDConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# A preset is the overrides it applies to the paper defaults, in `--set` syntax.
PRESETS: dict[str, tuple[str, ...]] = {
    "paper": (),
    "tiny": (
        "vae.strides=2,4,4,6",  # 192 → 125 Hz latents: the lower rate the lineage moved to, cheap on CPU
        "vae.latent_dim=16",
        "vae.architecture=stft",  # frame-rate ConvNeXt + iSTFT: 2× faster per step on CPU and learns faster
        "vae.encoder_channels=192",
        "vae.decoder_channels=256",
        "vae.encoder_layers=4",
        "vae.decoder_layers=6",
        "vae.mpd_channels=8",
        "vae.stft_ffts=1024,512,256",
        "vae.stft_channels=8",
        "vae.crop_seconds=0.5",
        "mulan.embed_dim=128",
        "mulan.audio_dim=128",
        "mulan.audio_layers=2",
        "mulan.audio_heads=4",
        "mulan.n_mels=64",
        "mulan.rvq_levels=12",
        "mulan.codebook_size=128",
        "tokenizer.dim=128",
        "tokenizer.layers=2",
        "tokenizer.heads=4",
        "tokenizer.codebook_size=256",
        "tokenizer.feature_layer=2",
        "semantic_lm.dim=128",
        "semantic_lm.depth=4",
        "semantic_lm.heads=4",
        "semantic_lm.dropout=0.1",
        "semantic_lm.text_condition_prob=0.5",
        "dpd.hidden=128",
        "dpd.blocks=4",
        "dpd.segment_size=16",
        "dpd.segment_hop=8",
        "dpd.merge_factors=2,4,4,2",
        "dpd.angle_dim=64",
        "dpd.heads=4",
        "dpd.roformer_layers=1",
        "dpd.recurrence=gru",  # the SRU's step loop costs 1.5× the step on a CPU; the GRU is one fused op
        "dpd.crop_seconds=2.56",  # 320 latent frames, 64 semantic tokens
        "dpd.steps=5",  # 10 s in one 10 s window: 1.0 s of DPD on 2 threads; 10 steps: 2.1 s (benchmarks/dpd_windows.py)
        "dpd.solver=dpmpp-2m",  # same passes as DDIM; on 55 test clips, from captions: style 0.43 -> 0.48, MCC 0.166 -> 0.185
        "train.batch_size=8",
        "train.lr=3e-4",
        "train.steps=2000",
        "train.warmup_steps=100",
        "train.checkpoint_every=200",
        "train.log_every=10",
        "train.sample_every=500",
        "train.mixed_precision=no",
    ),
}


def preset(name: str, overrides: typing.Sequence[str] = ()) -> MelodyConfig:
    """The named preset with `key=value` overrides applied on top."""
    if name not in PRESETS:
        raise MelodyError(f"unknown preset '{name}'; choose one of: {', '.join(PRESETS)}")
    cfg = MelodyConfig(preset=name)
    apply_overrides(cfg, PRESETS[name])
    apply_overrides(cfg, overrides)
    return cfg


def apply_overrides(cfg: Any, overrides: typing.Iterable[str]) -> Any:
    """Apply `section.key=value` strings in place (`dpd.blocks=8`, `vae.strides=2,4,4,3`)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise MelodyError(f"override '{item}' is not of the form section.key=value (e.g. dpd.blocks=8)")
        *path, leaf = key.split(".")
        node = cfg
        for i, part in enumerate(path):
            node = getattr(node, part, None) if _has_field(node, part) else None
            if node is None or not dataclasses.is_dataclass(node):
                raise MelodyError(f"unknown config key '{key}': '{'.'.join(path[: i + 1])}' is not a config section")
        hints = _field_types(type(node))
        if leaf not in hints:
            raise MelodyError(f"unknown config key '{key}'; {_known(node, '.'.join(path))}")
        if dataclasses.is_dataclass(getattr(node, leaf)):
            raise MelodyError(f"config key '{key}' is a section; set one of its keys, e.g. {key}.{_first_field(getattr(node, leaf))}=...")
        setattr(node, leaf, _parse(raw.strip(), hints[leaf], key))
    return cfg


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(data: dict, cls: type = MelodyConfig, where: str = "") -> Any:
    """Build `cls` from a dict strictly: unknown keys and wrong types raise `MelodyError`."""
    if not isinstance(data, dict):
        raise MelodyError(f"config section '{where or 'root'}' must be a JSON object")
    hints = _field_types(cls)
    kwargs = {}
    for key, value in data.items():
        name = f"{where}.{key}" if where else key
        if key not in hints:
            raise MelodyError(f"unknown config key '{name}'; {_known(cls, where)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(value, tp, name)
        else:
            kwargs[key] = _check_value(value, tp, name)
    return cls(**kwargs)


def save_config(cfg: MelodyConfig, path: str | Path) -> Path:
    return write_json_atomic(path, {"format_version": CONFIG_FORMAT_VERSION, **to_dict(cfg)})


def load_config(path: str | Path) -> MelodyConfig:
    data = read_json(path, "config")
    if not isinstance(data, dict):
        raise MelodyError(f"{path}: a config must be a JSON object; regenerate it")
    version = data.pop("format_version", None)
    if version != CONFIG_FORMAT_VERSION:
        raise MelodyError(f"{path}: config format version {version} is not supported (expected {CONFIG_FORMAT_VERSION}); regenerate it")
    return from_dict(data)


# --- typing helpers ---------------------------------------------------------------------------


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _has_field(node: Any, name: str) -> bool:
    return dataclasses.is_dataclass(node) and name in {f.name for f in dataclasses.fields(node)}


def _first_field(node: Any) -> str:
    return dataclasses.fields(node)[0].name


def _known(node: Any, where: str) -> str:
    names = [f.name for f in dataclasses.fields(node)]
    return f"known keys{(' of ' + where) if where else ''}: {', '.join(names)}"


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is tuple:
        return f"a comma-separated list of {typing.get_args(tp)[0].__name__}"
    return getattr(tp, "__name__", str(tp))


def _parse(raw: str, tp: Any, key: str) -> Any:
    """Text from the command line → a value of type `tp`."""
    try:
        if tp is bool:
            low = raw.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            return int(raw)
        if tp is float:
            return float(raw)
        if tp is str:
            return raw
        if typing.get_origin(tp) is tuple:
            inner = typing.get_args(tp)[0]
            text = raw.strip("()[] ")
            return tuple(inner(part) for part in text.split(",") if part.strip()) if text else ()
    except ValueError:
        raise MelodyError(f"config key '{key}' expects {_type_name(tp)}, got '{raw}'") from None
    raise MelodyError(f"config key '{key}' cannot be set from the command line")


def _check_value(value: Any, tp: Any, key: str) -> Any:
    """A JSON value → a value of type `tp`, or a one-line error."""
    ok = False
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, str)
    elif typing.get_origin(tp) is tuple:
        inner = typing.get_args(tp)[0]
        allowed = (int, float) if inner is float else inner  # JSON writes 40.0 as 40 when a person edits it
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, allowed) and not isinstance(v, bool) for v in value)
        value = tuple(inner(v) for v in value) if ok else value
    elif isinstance(tp, types.UnionType):
        ok = True
    if not ok:
        raise MelodyError(f"config key '{key}' expects {_type_name(tp)}, got {json.dumps(value)}")
    return value
