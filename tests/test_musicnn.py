"""The ears: TF checkpoint reader, the musicnn port, and its tags on FluidSynth renders."""

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from melody.ears import musicnn as mn
from melody.ears.musicnn import TAGS, Musicnn, MusicnnTagger, checkpoint_prefix, tf_to_state_dict
from melody.ears.tf_checkpoint import read_tf_checkpoint
from melody.errors import MelodyError

SF2 = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
SR = 24000


@pytest.fixture(scope="module")
def tensors() -> dict[str, np.ndarray]:
    return read_tf_checkpoint(checkpoint_prefix("MTT_musicnn"))


@pytest.fixture(scope="module")
def tagger() -> MusicnnTagger:
    return MusicnnTagger.load()


def _copy_checkpoint(tmp_path: Path) -> Path:
    src = checkpoint_prefix("MTT_musicnn")
    dst = tmp_path / "ckpt"
    dst.mkdir()
    for name in (".index", ".data-00000-of-00001"):
        shutil.copyfile(src / name, dst / name)
    return dst


def test_reader_reads_every_tensor_with_exact_byte_counts(tensors):
    data_file = checkpoint_prefix("MTT_musicnn") / ".data-00000-of-00001"
    assert len(tensors) == 150
    assert sum(t.nbytes for t in tensors.values()) == data_file.stat().st_size
    assert all(np.isfinite(t).all() for t in tensors.values())
    assert tensors["dense/kernel"].shape == (1506, 200)
    assert tensors["dense_1/kernel"].shape == (200, 50)
    assert tensors["conv2d/kernel"].shape == (7, 38, 1, 204)
    assert tensors["conv2d_5/kernel"].shape == (7, 561, 1, 64)
    assert tensors["batch_normalization_9/moving_variance"].shape == (1506,)
    assert all(t.dtype == np.float32 for t in tensors.values())


@pytest.mark.parametrize("name", [".index", ".data-00000-of-00001"])
def test_truncated_checkpoint_file_raises(tmp_path, name):
    ckpt = _copy_checkpoint(tmp_path)
    path = ckpt / name
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(MelodyError, match="corrupt"):
        read_tf_checkpoint(ckpt)


@pytest.mark.parametrize("name", [".index", ".data-00000-of-00001"])
def test_flipped_byte_in_checkpoint_raises(tmp_path, name):
    ckpt = _copy_checkpoint(tmp_path)
    path = ckpt / name
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 3] ^= 0x40
    path.write_bytes(bytes(blob))
    with pytest.raises(MelodyError, match="corrupt"):
        read_tf_checkpoint(ckpt)


def test_missing_checkpoint_raises(tmp_path):
    with pytest.raises(MelodyError, match="not found"):
        read_tf_checkpoint(tmp_path / "nothing")


def test_missing_package_names_the_fix(monkeypatch):
    monkeypatch.setattr(mn.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MelodyError, match="pip install --no-deps musicnn"):
        checkpoint_prefix("MTT_musicnn")


def test_model_uses_every_checkpoint_weight(tensors):
    state, used = tf_to_state_dict(tensors)
    model_weights = {n for n in tensors if "Adam" not in n and not n.startswith("beta")}
    assert used == model_weights
    assert set(state) == set(Musicnn().state_dict())
    Musicnn.from_tf_tensors(tensors)  # strict load


def test_labels_match_the_musicnn_package():
    from musicnn import configuration

    assert TAGS == tuple(configuration.MTT_LABELS)
    assert mn.MSD_TAGS == tuple(configuration.MSD_LABELS)


def test_msd_checkpoint_loads_with_its_labels():
    msd = MusicnnTagger.load("MSD_musicnn")
    assert "jazz" in msd.labels and len(msd.labels) == 50


def test_forward_shapes_and_dtypes(tagger):
    x = torch.randn(2, mn.PATCH_FRAMES, mn.N_MELS)
    with torch.inference_mode():
        probs, emb = tagger.model(x)
        front = tagger.model.front(x)
    assert probs.shape == (2, 50) and emb.shape == (2, 200)
    assert probs.dtype == emb.dtype == torch.float32
    assert ((probs >= 0) & (probs <= 1)).all()
    assert front.shape == (2, 561, mn.PATCH_FRAMES)  # TF 'same' in time keeps every frame


def test_patches_are_non_overlapping_3s_windows(tagger):
    wav = np.random.default_rng(0).normal(0, 0.1, 7 * SR).astype(np.float32)
    out = tagger.patch_outputs(wav, SR)
    assert out.probs.shape == (2, 50) and out.embedding.shape == (2, 200)  # 7 s -> 2 full patches
    assert tagger.tags(wav, SR).shape == (50,) and tagger.embed(wav, SR).shape == (200,)
    assert tagger.tags(wav, SR).dtype == np.float32
    top = tagger.top_tags(wav, SR, k=4)
    assert len(top) == 4 and all(t in TAGS for t, _ in top)
    assert [p for _, p in top] == sorted((p for _, p in top), reverse=True)


def test_short_audio_is_repeat_padded_and_too_short_raises(tagger):
    wav = np.random.default_rng(1).normal(0, 0.1, SR).astype(np.float32)  # 1 s
    assert tagger.patch_outputs(wav, SR).probs.shape == (1, 50)
    assert np.isfinite(tagger.tags(torch.from_numpy(wav), SR)).all()  # torch input too
    with pytest.raises(MelodyError, match="too short"):
        tagger.tags(wav[:100], SR)
    with pytest.raises(MelodyError, match="empty"):
        tagger.tags(np.zeros(0, np.float32), SR)
    with pytest.raises(MelodyError, match="NaN"):
        tagger.tags(np.full(SR, np.nan, np.float32), SR)


def test_loud_audio_does_not_overflow_float16(tagger):
    wav = np.sign(np.sin(2 * np.pi * 55 * np.arange(4 * SR) / SR)).astype(np.float32)  # full-scale square
    logmel = mn.log_mel(wav, SR)
    assert np.isfinite(logmel).all() and logmel.max() > np.log10(10000 * 6.55 + 1)
    assert np.isfinite(tagger.tags(wav, SR)).all()


def test_same_input_same_output(tagger):
    wav = np.random.default_rng(2).normal(0, 0.1, 4 * SR).astype(np.float32)
    a, b = tagger.patch_outputs(wav, SR), tagger.patch_outputs(wav.copy(), SR)
    np.testing.assert_array_equal(a.probs, b.probs)
    np.testing.assert_array_equal(a.embedding, b.embedding)


# --- sanity: what the tagger hears in FluidSynth renders --------------------------------------


def _render(program: int, notes: list[tuple[int, float, float, int]], is_drum: bool = False) -> np.ndarray:
    pretty_midi = pytest.importorskip("pretty_midi")
    if not SF2.is_file():
        pytest.skip(f"SoundFont {SF2} not installed")
    pm = pretty_midi.PrettyMIDI(initial_tempo=120)
    inst = pretty_midi.Instrument(program=program, is_drum=is_drum)
    inst.notes = [pretty_midi.Note(velocity=v, pitch=p, start=s, end=e) for p, s, e, v in notes]
    pm.instruments.append(inst)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # sf2_path= is deprecated but works
        return pm.fluidsynth(fs=SR, sf2_path=str(SF2)).astype(np.float32)


def _drums(seconds: float) -> list:
    notes = []
    for i in range(int(seconds * 4)):  # 120 bpm eighths: hi-hat, kick on 1 and 3, snare on 2 and 4
        t = i * 0.25
        notes.append((42, t, t + 0.1, 90))
        if i % 4 in (0, 2):
            notes.append((36 if i % 4 == 0 else 38, t, t + 0.1, 110))
    return notes


def _power_chords(seconds: float) -> list:
    notes = []
    for i in range(int(seconds * 2)):
        root, t = (40, 45, 43, 38)[(i // 4) % 4], i * 0.5
        notes += [(p, t, t + 0.45, 110) for p in (root, root + 7, root + 12)]
    return notes


def _string_chords(seconds: float) -> list:
    notes = []
    for i in range(int(seconds / 1.5)):
        root, t = (48, 53, 55, 48)[i % 4], i * 1.5
        notes += [(p, t, t + 1.5, 90) for p in (root, root + 4, root + 7, root + 12)]
    return notes


@pytest.fixture(scope="module")
def renders() -> dict[str, np.ndarray]:
    return {
        "drums": _render(0, _drums(6), is_drum=True),
        "distortion guitar": _render(30, _power_chords(6)),  # GM 30
        "string ensemble": _render(48, _string_chords(6)),  # GM 48
    }


@pytest.mark.parametrize(
    "name, wanted",
    [
        ("drums", {"drums", "beat"}),
        ("distortion guitar", {"rock", "guitar"}),
        ("string ensemble", {"strings", "classical", "violin"}),
    ],
)
def test_rendered_instruments_get_their_tags(tagger, renders, name, wanted):
    top3 = {t for t, _ in tagger.top_tags(renders[name], SR, k=3)}
    assert top3 & wanted, f"top-3 {top3} has none of {wanted}"


def test_activations_match_the_checkpoints_batch_norm_statistics(tagger, renders):
    """Without TF to compare against, the checkpoint's own BN moving means are the reference: on music,
    the per-channel means of our activations should track them, which tests the input scaling, the layer
    order and the [max, mean] interleaving of the pooled features."""
    model = tagger.model
    x = torch.from_numpy(np.concatenate([mn.to_patches(mn.log_mel(y, SR)) for y in renders.values()]))
    seen = {}
    hook = model.back.pool_bn.register_forward_hook(lambda mod, inp, out: seen.update(pooled=inp[0]))
    with torch.inference_mode():
        model(x)
    hook.remove()
    ours = seen["pooled"].mean(0).numpy()  # 1506: max_0, mean_0, max_1, ...
    ref = model.back.pool_bn.running_mean.numpy()
    assert np.corrcoef(ours, ref)[0, 1] > 0.8
    blocked = np.concatenate([ours[0::2], ours[1::2]])  # the wrong layout: all maxes, then all means
    assert np.corrcoef(blocked, ref)[0, 1] < 0.3
