"""The project's "ears": musicnn (Pons & Serra, 2019), a pretrained music tagger, run in PyTorch.

Not part of MeLoDy itself. MeLoDy's evaluation needs a judge that nobody here trained: this module
loads the `MTT_musicnn` weights that the `musicnn` package (ISC licence) ships as a TF1 checkpoint
and gives, per 3-second patch, 50 MagnaTagATune tag probabilities and a 200-d embedding (the
penultimate layer, after its batch norm: what musicnn's own extractor calls `penultimate`).

The architecture follows musicnn's `models.py` (`build_musicnn`, 'MTT_musicnn' configuration):

- front end (`b t f` log-mel, t = 187, f = 96): batch norm of the whole input (one channel); two
  *timbral* convs, 7 frames x {38, 67} mel bins (int(0.4*96), int(0.7*96)), 204 filters, time padded
  by 3 on each side, 'valid' in frequency; three *temporal* convs, {128, 64, 32} frames x 1 bin,
  51 filters, TF 'same' padding (for an even kernel TF puts the extra frame at the *end*: 63 before,
  64 after for 128). Each conv is conv -> ReLU -> batch norm -> max over all frequency; the five
  maps concatenate to 561 channels.
- mid end: three 1-D convs over time (7 frames, 64 filters, padding 3), conv -> ReLU -> batch norm,
  the 2nd and 3rd with residual connections; the output is the concatenation of the front end and
  the three layers (561 + 3 x 64 = 753 channels).
- back end: max and mean over time, flattened as [max_0, mean_0, max_1, mean_1, ...] (TF concatenates
  them on a trailing axis and flattens: 753 x 2 = 1506), batch norm, dense 200 + ReLU, batch norm
  (= the embedding), dense 50 (logits), sigmoid. Dropout is inactive at inference.
- TF batch norm: epsilon 1e-3 (not torch's 1e-5).

Input pipeline (musicnn's `extractor.batch_data` and its training configuration): mono audio
resampled to 16 kHz (soxr here, librosa/resampy there), librosa mel spectrogram (n_fft 512, hop 256,
96 mels, power 2, Slaney filters, centred frames with *reflect* padding: librosa's default in the
0.7-0.9 versions musicnn required; 0.10 changed it to zeros), cast to float16, then
`log10(10000 * x + 1)` computed in float32: under the numpy (< 1.17) that musicnn pinned,
`float16_array * 10000` promoted to float32 (value-based casting), whereas numpy 2 would keep float16
and overflow to inf for mel powers above 6.55. Patches are non-overlapping 187-frame (3 s) windows;
a trailing partial patch is dropped (as musicnn does). Audio shorter than one patch is
*repeat-padded* (tiled) to one patch, as the checkpoint's training configuration says
(`"pad_short": "repeat-pad"`); audio shorter than one FFT window (512 samples at 16 kHz, 32 ms) is
refused with a MelodyError.

Not verified against TensorFlow numerically (no TF here); sanity-checked on FluidSynth renders
(see tests/test_musicnn.py). `MSD_musicnn` (same architecture, Million Song Dataset tags, which
include jazz, folk, funk) loads too: `MusicnnTagger.load("MSD_musicnn")`.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from melody.errors import MelodyError
from melody.ears.tf_checkpoint import read_tf_checkpoint

SAMPLE_RATE = 16000
N_FFT = 512
HOP_LENGTH = 256
N_MELS = 96
PATCH_FRAMES = 187  # 3 s: librosa.time_to_frames(3, sr=16000, n_fft=512, hop_length=256) + 1
TF_BN_EPS = 1e-3

# musicnn.configuration.MTT_LABELS, in the order of the output units.
TAGS: tuple[str, ...] = (
    "guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock", "fast",
    "piano", "ambient", "beat", "violin", "vocal", "synth", "female", "indian", "opera", "male",
    "singing", "vocals", "no vocals", "harpsichord", "loud", "quiet", "flute", "woman",
    "male vocal", "no vocal", "pop", "soft", "sitar", "solo", "man", "classic", "choir", "voice",
    "new age", "dance", "male voice", "female vocal", "beats", "harp", "cello", "no voice",
    "weird", "country", "metal", "female voice", "choral",
)  # fmt: skip

# musicnn.configuration.MSD_LABELS (for the MSD_musicnn checkpoint).
MSD_TAGS: tuple[str, ...] = (
    "rock", "pop", "alternative", "indie", "electronic", "female vocalists", "dance", "00s",
    "alternative rock", "jazz", "beautiful", "metal", "chillout", "male vocalists", "classic rock",
    "soul", "indie rock", "Mellow", "electronica", "80s", "folk", "90s", "chill", "instrumental",
    "punk", "oldies", "blues", "hard rock", "ambient", "acoustic", "experimental",
    "female vocalist", "guitar", "Hip-Hop", "70s", "party", "country", "easy listening", "sexy",
    "catchy", "funk", "electro", "heavy metal", "Progressive rock", "60s", "rnb", "indie pop", "sad",
    "House", "happy",
)  # fmt: skip

_LABELS = {"MTT_musicnn": TAGS, "MSD_musicnn": MSD_TAGS}


@dataclass(frozen=True)
class MusicnnConfig:
    """The 'MTT_musicnn' / 'MSD_musicnn' sizes of `build_musicnn` (num_filt 1.6, midend 64, backend 200)."""

    n_mels: int = N_MELS
    timbral_frames: int = 7
    timbral_widths: tuple[int, ...] = (38, 67)  # int(0.4 * 96), int(0.7 * 96) mel bins
    timbral_filters: int = 204  # int(1.6 * 128)
    temporal_lengths: tuple[int, ...] = (128, 64, 32)  # frames
    temporal_filters: int = 51  # int(1.6 * 32)
    midend_filters: int = 64
    midend_layers: int = 3
    midend_kernel: int = 7
    backend_units: int = 200
    n_tags: int = 50

    @property
    def frontend_channels(self) -> int:
        return (
            len(self.timbral_widths) * self.timbral_filters
            + len(self.temporal_lengths) * self.temporal_filters
        )

    @property
    def midend_channels(self) -> int:
        return self.frontend_channels + self.midend_layers * self.midend_filters


class FrontEnd(nn.Module):
    """Musically motivated convs: timbral (short in time, wide in frequency) and temporal (long in
    time, one bin), each max-pooled over all of frequency. `b t f` -> `b c t`."""

    def __init__(self, cfg: MusicnnConfig):
        super().__init__()
        self.input_bn = nn.BatchNorm2d(1, eps=TF_BN_EPS)
        self.timbral = nn.ModuleList(
            nn.Conv2d(1, cfg.timbral_filters, (cfg.timbral_frames, w)) for w in cfg.timbral_widths
        )
        self.timbral_bn = nn.ModuleList(
            nn.BatchNorm2d(cfg.timbral_filters, eps=TF_BN_EPS) for _ in cfg.timbral_widths
        )
        self.temporal = nn.ModuleList(
            nn.Conv2d(1, cfg.temporal_filters, (k, 1)) for k in cfg.temporal_lengths
        )
        self.temporal_bn = nn.ModuleList(
            nn.BatchNorm2d(cfg.temporal_filters, eps=TF_BN_EPS) for _ in cfg.temporal_lengths
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_bn(x[:, None])  # b 1 t f
        maps = []
        for conv, bn in zip(self.timbral, self.timbral_bn):
            k = conv.kernel_size[0]
            h = conv(F.pad(x, (0, 0, k // 2, k // 2)))  # b c t f', 'same' in time, 'valid' in freq
            maps.append(bn(F.relu(h)).amax(dim=3))  # b c t
        for conv, bn in zip(self.temporal, self.temporal_bn):
            k = conv.kernel_size[0]
            h = conv(F.pad(x, (0, 0, (k - 1) // 2, k // 2)))  # TF 'same': the extra frame at the end
            maps.append(bn(F.relu(h)).amax(dim=3))  # b c t
        return torch.cat(maps, dim=1)  # b 561 t


class MidEnd(nn.Module):
    """1-D convs over time with residuals; returns its input and every layer's output, concatenated.
    `b c t` -> `b (c + layers*filters) t`."""

    def __init__(self, cfg: MusicnnConfig):
        super().__init__()
        widths = [cfg.frontend_channels] + [cfg.midend_filters] * (cfg.midend_layers - 1)
        k = cfg.midend_kernel
        self.convs = nn.ModuleList(nn.Conv1d(c, cfg.midend_filters, k, padding=k // 2) for c in widths)
        self.bns = nn.ModuleList(
            nn.BatchNorm1d(cfg.midend_filters, eps=TF_BN_EPS) for _ in range(cfg.midend_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [x]
        h = self.bns[0](F.relu(self.convs[0](x)))  # b 64 t: adapts the width, no residual
        outs.append(h)
        for conv, bn in zip(self.convs[1:], self.bns[1:]):
            h = bn(F.relu(conv(h))) + h
            outs.append(h)
        return torch.cat(outs, dim=1)  # b 753 t


class BackEnd(nn.Module):
    """Global max and mean pooling over time, then dense layers. `b c t` -> (logits `b n`, embedding `b d`)."""

    def __init__(self, cfg: MusicnnConfig):
        super().__init__()
        pooled = 2 * cfg.midend_channels
        self.pool_bn = nn.BatchNorm1d(pooled, eps=TF_BN_EPS)
        self.dense = nn.Linear(pooled, cfg.backend_units)
        self.dense_bn = nn.BatchNorm1d(cfg.backend_units, eps=TF_BN_EPS)
        self.out = nn.Linear(cfg.backend_units, cfg.n_tags)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = torch.stack([x.amax(dim=2), x.mean(dim=2)], dim=2).flatten(1)  # b (c 2): max, mean per channel
        embedding = self.dense_bn(F.relu(self.dense(self.pool_bn(pooled))))  # b 200
        return self.out(embedding), embedding


class Musicnn(nn.Module):
    """musicnn: log-mel patches `b t 96` (t = 187 for the pretrained weights) -> (tag probabilities
    `b 50`, embedding `b 200`)."""

    def __init__(self, cfg: MusicnnConfig = MusicnnConfig()):
        super().__init__()
        self.cfg = cfg
        self.front = FrontEnd(cfg)
        self.mid = MidEnd(cfg)
        self.back = BackEnd(cfg)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, embedding = self.back(self.mid(self.front(x)))
        return torch.sigmoid(logits), embedding

    @classmethod
    def from_tf_tensors(cls, tensors: dict[str, np.ndarray], cfg: MusicnnConfig = MusicnnConfig()) -> Musicnn:
        """Build the model from a musicnn TF checkpoint's tensors; every model tensor must be used."""
        model = cls(cfg)
        state, used = tf_to_state_dict(tensors, cfg)
        unused = sorted(n for n in tensors if n not in used and not _is_optimizer_slot(n))
        if unused:
            raise MelodyError(f"musicnn checkpoint has tensors the model does not use: {', '.join(unused[:5])}")
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise MelodyError(f"musicnn checkpoint does not fit the model: {str(err).splitlines()[0]}") from None
        return model.eval()


def tf_to_state_dict(
    tensors: dict[str, np.ndarray], cfg: MusicnnConfig = MusicnnConfig()
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Map musicnn's TF variable names to this module's state dict; returns (state, TF names used).

    TF names layers in creation order: conv2d..conv2d_7 = timbral x2, temporal x3, mid-end x3;
    batch_normalization..batch_normalization_10 = input, timbral x2, temporal x3, mid-end x3,
    pooled, dense; dense, dense_1 = embedding layer, output layer.
    """
    n_timbral, n_temporal = len(cfg.timbral_widths), len(cfg.temporal_lengths)
    front_convs = [f"front.timbral.{i}" for i in range(n_timbral)]
    front_convs += [f"front.temporal.{i}" for i in range(n_temporal)]
    mid_convs = [f"mid.convs.{i}" for i in range(cfg.midend_layers)]
    bns = ["front.input_bn"] + [f"front.timbral_bn.{i}" for i in range(n_timbral)]
    bns += [f"front.temporal_bn.{i}" for i in range(n_temporal)]
    bns += [f"mid.bns.{i}" for i in range(cfg.midend_layers)] + ["back.pool_bn", "back.dense_bn"]

    used: set[str] = set()

    def get(name: str) -> torch.Tensor:
        if name not in tensors:
            raise MelodyError(f"musicnn checkpoint lacks tensor {name!r} (wrong or damaged checkpoint)")
        used.add(name)
        return torch.from_numpy(np.ascontiguousarray(tensors[name], dtype=np.float32))

    state: dict[str, torch.Tensor] = {}
    for i, module in enumerate(front_convs + mid_convs):
        tf = _tf_layer("conv2d", i)
        kernel = get(f"{tf}/kernel")  # kh kw cin cout
        if module.startswith("mid."):  # a conv over (time, channel) with one input plane = conv1d
            state[f"{module}.weight"] = kernel[:, :, 0, :].permute(2, 1, 0).contiguous()  # cout cin k
        else:
            state[f"{module}.weight"] = kernel.permute(3, 2, 0, 1).contiguous()  # cout cin kh kw
        state[f"{module}.bias"] = get(f"{tf}/bias")
    for i, module in enumerate(bns):
        tf = _tf_layer("batch_normalization", i)
        state[f"{module}.weight"] = get(f"{tf}/gamma")
        state[f"{module}.bias"] = get(f"{tf}/beta")
        state[f"{module}.running_mean"] = get(f"{tf}/moving_mean")
        state[f"{module}.running_var"] = get(f"{tf}/moving_variance")
        state[f"{module}.num_batches_tracked"] = torch.tensor(0)
    for i, module in enumerate(["back.dense", "back.out"]):
        tf = _tf_layer("dense", i)
        state[f"{module}.weight"] = get(f"{tf}/kernel").T.contiguous()  # out in
        state[f"{module}.bias"] = get(f"{tf}/bias")
    return state, used


def _tf_layer(base: str, i: int) -> str:
    return base if i == 0 else f"{base}_{i}"


def _is_optimizer_slot(name: str) -> bool:
    return name.endswith(("/Adam", "/Adam_1")) or name in ("beta1_power", "beta2_power")


def checkpoint_prefix(name: str = "MTT_musicnn") -> Path:
    """The directory of the `musicnn` package's bundled checkpoint `name` (without importing it)."""
    if name not in _LABELS:
        raise MelodyError(f"unknown musicnn model {name!r}; choose one of {', '.join(_LABELS)}")
    spec = importlib.util.find_spec("musicnn")
    if spec is None or not spec.submodule_search_locations:
        raise MelodyError("the musicnn package (for its weights) is missing: pip install --no-deps musicnn")
    directory = Path(next(iter(spec.submodule_search_locations))) / name
    if not (directory / ".index").is_file():
        raise MelodyError(f"musicnn checkpoint not found at {directory}: reinstall with pip install --no-deps musicnn")
    return directory


# ---------------------------------------------------------------------------------------------
# Input pipeline: audio -> log-mel -> patches (numpy, no torch)


def log_mel(wav: np.ndarray | torch.Tensor, sample_rate: int) -> np.ndarray:
    """musicnn's input representation of mono audio: `t 96` float32 (see the module docstring)."""
    import librosa
    import soxr

    x = _as_mono(wav)
    if not sample_rate > 0:
        raise MelodyError(f"sample rate must be positive, got {sample_rate}")
    if sample_rate != SAMPLE_RATE:
        x = soxr.resample(x, sample_rate, SAMPLE_RATE).astype(np.float32)
    if x.shape[0] < N_FFT:
        raise MelodyError(f"audio too short for the tagger: {x.shape[0]} samples at 16 kHz, need at least {N_FFT}")
    mel = librosa.feature.melspectrogram(
        y=x, sr=SAMPLE_RATE, n_fft=N_FFT, hop_length=HOP_LENGTH, n_mels=N_MELS, power=2.0, pad_mode="reflect"
    ).T  # t f
    mel = mel.astype(np.float16).astype(np.float32)
    return np.log10(10000.0 * mel + 1.0).astype(np.float32)


def to_patches(logmel: np.ndarray, n_frames: int = PATCH_FRAMES) -> np.ndarray:
    """Non-overlapping `n_frames` windows, `n t f`; the tail is dropped; a short input is tiled to one patch."""
    t = logmel.shape[0]
    if t < n_frames:
        logmel = logmel[np.arange(n_frames) % t]  # repeat-pad
        t = n_frames
    n = t // n_frames
    return np.ascontiguousarray(logmel[: n * n_frames].reshape(n, n_frames, logmel.shape[1]))


def _as_mono(wav: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().cpu().numpy()
    x = np.asarray(wav, dtype=np.float32)
    if x.ndim == 2:  # channels first (c n), as torch audio code holds it
        x = x.mean(axis=0)
    if x.ndim != 1:
        raise MelodyError(f"audio for the tagger must be mono (n,) or channels-first (c, n), got shape {x.shape}")
    if x.size == 0:
        raise MelodyError("audio for the tagger is empty")
    if not np.isfinite(x).all():
        raise MelodyError("audio for the tagger contains NaN or infinite samples")
    return x


# ---------------------------------------------------------------------------------------------
# The tagger: weights + input pipeline + labels


@dataclass(frozen=True)
class PatchOutputs:
    """The tagger's outputs per 3-s patch of one clip."""

    probs: np.ndarray  # n 50, sigmoid tag probabilities
    embedding: np.ndarray  # n 200, penultimate layer (after its batch norm)


class MusicnnTagger:
    """A pretrained musicnn with its input pipeline and labels: audio in, tags and embeddings out.

    Use `MusicnnTagger.load()`: it reads the checkpoint once per process and returns the same
    instance to every caller (so treat it as read-only).
    """

    def __init__(self, model: Musicnn, labels: tuple[str, ...], batch_size: int = 2):
        if len(labels) != model.cfg.n_tags:
            raise MelodyError(f"{len(labels)} labels for a model with {model.cfg.n_tags} outputs")
        self.model = model.eval()
        self.labels = labels
        self.batch_size = batch_size  # patches per forward (~25 MB of activations each; small is fastest on CPU)

    @classmethod
    def load(cls, name: str = "MTT_musicnn") -> MusicnnTagger:
        """The tagger for the `musicnn` package's checkpoint `name` ('MTT_musicnn' or 'MSD_musicnn')."""
        return _load_cached(name)

    @torch.inference_mode()
    def patch_outputs(self, wav: np.ndarray | torch.Tensor, sample_rate: int) -> PatchOutputs:
        """Tag probabilities and embeddings of each non-overlapping 3-s patch of `wav`."""
        patches = to_patches(log_mel(wav, sample_rate))
        param = next(self.model.parameters())
        probs, embs = [], []
        for start in range(0, len(patches), self.batch_size):
            x = torch.from_numpy(patches[start : start + self.batch_size]).to(param.device, param.dtype)
            p, e = self.model(x)
            probs.append(p.float().cpu().numpy())
            embs.append(e.float().cpu().numpy())
        return PatchOutputs(np.concatenate(probs), np.concatenate(embs))

    def tags(self, wav: np.ndarray | torch.Tensor, sample_rate: int) -> np.ndarray:
        """Tag probabilities `(50,)`, mean over patches."""
        return self.patch_outputs(wav, sample_rate).probs.mean(axis=0)

    def embed(self, wav: np.ndarray | torch.Tensor, sample_rate: int) -> np.ndarray:
        """Embedding `(200,)`, mean over patches."""
        return self.patch_outputs(wav, sample_rate).embedding.mean(axis=0)

    def top_tags(self, wav: np.ndarray | torch.Tensor, sample_rate: int, k: int = 5) -> list[tuple[str, float]]:
        """The `k` most probable tags of the clip (mean over patches), most probable first."""
        return top_k(self.tags(wav, sample_rate), self.labels, k)


def top_k(probs: np.ndarray, labels: tuple[str, ...], k: int) -> list[tuple[str, float]]:
    """(label, probability) of the `k` largest entries of `probs`, largest first (ties: label order)."""
    order = np.argsort(-np.asarray(probs), kind="stable")[:k]
    return [(labels[i], float(probs[i])) for i in order]


@functools.cache
def _load_cached(name: str) -> MusicnnTagger:
    tensors = read_tf_checkpoint(checkpoint_prefix(name), include=lambda n: not _is_optimizer_slot(n))
    return MusicnnTagger(Musicnn.from_tf_tensors(tensors), _LABELS[name])
