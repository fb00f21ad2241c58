"""A user's own EnCodec / DAC (local transformers folders) as the MusicLM-style baseline's codec (melody/baselines/hf_codec.py).

Each codec is a tiny random model of the real class, saved with `save_pretrained` and read back from disk: an
EnCodec at 16 kHz (hop 160: 100 Hz, 4 levels at 1.6 kbps) and a DAC at 44.1 kHz (hop 512: 86.13 Hz, 3 levels).
"""

import json
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from test_musiclm_baseline import SMALL
from test_shards import make_corpus

from melody.audio import resample
from melody.baselines.hf_codec import HFCodec, load_hf_codec
from melody.baselines.musiclm import MusicLMStyle, preset
from melody.bundled import BUNDLE
from melody.checkpoint import fingerprint
from melody.config import preset as melody_preset
from melody.errors import MelodyError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SR = 24_000
SHAPES = {  # kind → (rate, hop, levels, coarse levels: a third, rounded)
    "encodec": (16_000, 160, 4, 1),
    "dac": (44_100, 512, 3, 1),
}


def tiny_codec(kind: str, seed: int = 0):
    """A tiny random `EncodecModel` / `DacModel` (eval mode)."""
    from transformers import DacConfig, DacModel, EncodecConfig, EncodecModel

    torch.manual_seed(seed)
    if kind == "dac":
        return DacModel(DacConfig(sampling_rate=44_100, encoder_hidden_size=2, downsampling_ratios=[8, 8, 8],
                                  decoder_hidden_size=16, n_codebooks=3, codebook_size=16, codebook_dim=4)).eval()
    model = EncodecModel(EncodecConfig(sampling_rate=16_000, target_bandwidths=[0.8, 1.6], hidden_size=16, num_filters=4,
                                       upsampling_ratios=[8, 5, 4], codebook_size=16, num_lstm_layers=1)).eval()
    with torch.no_grad():  # transformers initialises EnCodec's codebooks to zeros: draw them from encoder frames
        frames = model.encoder(torch.randn(1, 1, 16_000) * 0.1)[0].T  # (100, 16)
        for i, layer in enumerate(model.quantizer.layers):
            layer.codebook.embed.copy_(frames[torch.randperm(100)[:16]] * 0.5 ** i)
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """kind → (the model, the folder it was saved to)."""
    root = tmp_path_factory.mktemp("codecs")
    out = {}
    for kind in SHAPES:
        model = tiny_codec(kind)
        model.save_pretrained(root / kind)
        out[kind] = (model, root / kind)
    return out


def load(saved, kind) -> HFCodec:
    return load_hf_codec(saved[kind][1], kind, bandwidth=1.6)


def clip(samples: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    t = torch.arange(samples) / SR
    noise = torch.randn(batch, 1, samples, generator=torch.Generator().manual_seed(seed))
    return 0.3 * torch.sin(2 * math.pi * 220 * t) + 0.05 * noise  # (b, 1, n)


# --- the adapter -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(SHAPES))
def test_codes_have_the_codecs_frame_rate_levels_and_range(saved, kind):
    rate, hop, levels, coarse = SHAPES[kind]
    codec = load(saved, kind)
    assert codec.frame_rate == Fraction(rate, hop) and (codec.levels, codec.coarse_levels, codec.fine_levels) == (
        levels, coarse, levels - coarse)
    assert codec.codebook_size == 16 and codec.state_dict() == {}  # the user's weights stay in their folder
    for samples in (SR, 10_007):  # 1 s, and a length that is no whole number of hops at either rate
        frames = math.ceil(math.ceil(samples * rate / SR) / hop)  # ⌈samples at the codec's rate / hop⌉
        assert codec.audio_frames(samples) == frames
        codes = codec.encode_audio(clip(samples))
        assert codes.shape == (2, frames, levels) and codes.dtype == torch.long
        assert 0 <= int(codes.min()) and int(codes.max()) < 16 and len(codes.unique()) > 2
    assert codec.audio_frames(SR) == {"encodec": 100, "dac": 87}[kind]  # 100 Hz; 44 100 / 512 ≈ 86.13 Hz


@pytest.mark.parametrize("kind", list(SHAPES))
def test_decoding_returns_the_inputs_length_at_24_khz(saved, kind):
    codec = load(saved, kind)
    for samples in (SR, 10_007, 333):
        audio = codec.decode_audio(codec.encode_audio(clip(samples)), samples)
        assert audio.shape == (2, 1, samples) and audio.dtype == torch.float32
        assert torch.isfinite(audio).all() and audio.abs().max() <= 1
    codes = codec.encode_audio(clip(SR))
    assert codec.decode_audio(codes[..., :codec.coarse_levels], SR).shape == (2, 1, SR)  # the first levels decode alone


@pytest.mark.parametrize("kind", list(SHAPES))
def test_the_adapter_is_the_saved_model(saved, kind):
    """Same weights as the model saved, and the codes its own `encode` gives for the same resampled input."""
    rate, hop, _, _ = SHAPES[kind]
    model, _ = saved[kind]
    codec = load(saved, kind)
    assert fingerprint(codec.model) == fingerprint(model)
    audio = clip(10_007)
    theirs = torch.from_numpy(resample(audio[:, 0].numpy(), SR, rate))  # melody.audio.resample: soxr, as the adapter
    x = codec.to_model_rate(audio)
    m = math.ceil(10_007 * rate / SR)
    assert x.shape[-1] == (m if kind == "encodec" else math.ceil(m / hop) * hop)  # DAC: zeros to whole hops
    n = min(m, theirs.shape[-1])
    assert torch.equal(x[:, 0, :n], theirs[:, :n]) and not x[:, 0, n:].any()
    with torch.no_grad():
        if kind == "encodec":
            own = model.encode(x, bandwidth=1.6).audio_codes[0].transpose(1, 2)
        else:
            own = model.encode(x).audio_codes.transpose(1, 2)
    assert torch.equal(codec.encode_audio(audio), own)


def test_missing_or_other_folders_are_one_line_errors(saved, tmp_path):
    def refused(match, folder, kind="encodec", **kwargs):
        with pytest.raises(MelodyError, match=match) as err:
            load_hf_codec(folder, kind, **kwargs)
        assert "\n" not in str(err.value)

    refused("config.json missing", tmp_path / "nowhere")
    refused("needs codec.path", "")
    refused("holds a 'dac' model, not a EncodecModel.*codec.kind=dac", saved["dac"][1])
    refused("holds a 'encodec' model, not a DacModel", saved["encodec"][1], "dac")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    refused("holds a 'bert' model", tmp_path / "bert")
    refused("bandwidth 6 kbps is not one this EnCodec offers; choose one of: 0.8, 1.6", saved["encodec"][1])
    refused("coarse_levels 4 must lie in \\[1, 3\\)", saved["dac"][1], "dac", coarse_levels=4)
    refused("unknown pretrained codec kind 'soundstream'", saved["dac"][1], "soundstream")
    with pytest.raises(MelodyError, match="unknown codec.kind 'soundstream'; choose one of: latent, encodec, dac"):
        MusicLMStyle.build(preset("tiny", ["codec.kind=soundstream"]), melody_preset("tiny"))


# --- the baseline on it ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def melody():
    from melody.pipeline import MeLoDy

    return MeLoDy.from_pretrained(BUNDLE)


def codec_config(saved, kind, *more):
    return preset("tiny", [*SMALL, f"codec.kind={kind}", f"codec.path={saved[kind][1]}", "codec.bandwidth=1.6",
                           "codec.coarse_levels=0", *more])


@pytest.mark.parametrize("kind", list(SHAPES))
def test_a_baseline_generates_the_codecs_frames(saved, melody, kind):
    rate, hop, levels, coarse = SHAPES[kind]
    baseline = MusicLMStyle.random(codec_config(saved, kind), melody, seed=0)
    assert (baseline.coarse.levels, baseline.fine.levels, baseline.coarse.codebook_size) == (coarse, levels - coarse, 16)
    seconds = 1.5  # several fine windows (1.28 s at `tiny`)
    out = baseline.generate(["a calm piano piece"], seconds, seed=0)
    frames = math.ceil(seconds * rate / hop)  # 150 at 100 Hz, 130 at 86.13 Hz
    assert out.acoustic_tokens.shape == (1, frames, levels) and int(out.acoustic_tokens.max()) < 16
    assert out.forward_passes["coarse"] == frames * coarse and out.forward_passes["fine"] == frames * (levels - coarse)
    assert out.forward_passes["semantic_lm"] == math.ceil(25 * seconds)
    assert out.audio.shape == (1, 1, round(seconds * SR)) and out.sample_rate == SR


def test_a_saved_baseline_keeps_the_codec_out_and_refuses_another(saved, melody, tmp_path):
    baseline = MusicLMStyle.random(codec_config(saved, "dac"), melody, seed=0)
    baseline.save_pretrained(tmp_path / "run")
    from safetensors import safe_open

    with safe_open(tmp_path / "run" / "musiclm.safetensors", "pt") as f:
        assert not any(k.startswith("codec.") for k in f.keys())
    meta = json.loads((tmp_path / "run" / "musiclm.json").read_text())
    assert meta["config"]["codec"]["kind"] == "dac" and meta["trained_against"]["codec"] == fingerprint(saved["dac"][0])
    loaded = MusicLMStyle.from_pretrained(tmp_path / "run", melody)
    assert torch.equal(baseline.generate(["jazz"], 0.3, seed=1).audio, loaded.generate(["jazz"], 0.3, seed=1).audio)
    tiny_codec("dac", seed=1).save_pretrained(tmp_path / "other")  # the same shapes, other weights
    with pytest.raises(MelodyError, match="another codec") as err:
        MusicLMStyle.from_pretrained(tmp_path / "run", melody, codec_path=tmp_path / "other")
    assert "\n" not in str(err.value)


def test_training_on_a_pretrained_codec_fits_nothing_and_exports(saved, melody, tmp_path):
    from melody.train.musiclm import train_musiclm

    corpus = make_corpus(tmp_path / "corpus", clips=6, per_shard=3, seconds=(2.0, 3.0))
    run = tmp_path / "run"
    overrides = [*SMALL, "codec.kind=encodec", f"codec.path={saved['encodec'][1]}", "codec.bandwidth=1.6",
                 "codec.coarse_levels=2", "coarse.window_seconds=0.5", "coarse.stride_seconds=0.25",
                 "fine.window_seconds=0.2", "fine.stride_seconds=0.1", "train.batch_size=2", "train.steps=2",
                 "train.warmup_steps=1", "train.checkpoint_every=2", "train.sample_every=2", "train.log_every=1",
                 "train.num_workers=0", "train.ema_decay=0"]
    done = train_musiclm(corpus, BUNDLE, run, "tiny", overrides, progress=False)
    assert done.step == 2 and not (run / "codec.safetensors").exists()  # already quantised: no k-means fit
    record = json.loads((run / "conditioners.json").read_text())
    assert record["codec"] == fingerprint(saved["encodec"][0])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < r["coarse/total"] < 2 * math.log(16) for r in rows if "coarse/total" in r)
    model = MusicLMStyle.from_pretrained(run, melody)
    assert (model.coarse.levels, model.fine.levels) == (2, 2)
    assert model.generate(["a calm piano piece"], 0.3, seed=0).forward_passes["fine"] == 30 * 2  # 100 Hz × 2 fine levels


def test_a_run_records_its_codec_and_refuses_another_on_resume(saved, tmp_path):
    from melody.train.musiclm import check_codec

    (tmp_path / "conditioners.json").write_text('{"vae": "0123"}')  # as check_frozen leaves it
    check_codec(tmp_path, load(saved, "dac"))
    assert json.loads((tmp_path / "conditioners.json").read_text()) == {"vae": "0123",
                                                                          "codec": fingerprint(saved["dac"][0])}
    check_codec(tmp_path, load(saved, "dac"))  # the same codec: resumes
    tiny_codec("dac", seed=1).save_pretrained(tmp_path / "other")
    with pytest.raises(MelodyError, match="learned the codes of another codec.*codec.path") as err:
        check_codec(tmp_path, load_hf_codec(tmp_path / "other", "dac"))
    assert "\n" not in str(err.value)


def test_resampling_is_soxr_and_lengths_are_exact():
    """The frame count rests on m = ⌈n · rate / 24 000⌉, which soxr's own output length is within one sample of."""
    for n in (1, 37, 1001, 24_001):
        for rate in (16_000, 44_100):
            got = resample(np.zeros((1, n), np.float32), SR, rate).shape[1]
            assert abs(got - math.ceil(n * rate / SR)) <= 1
