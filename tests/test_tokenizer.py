import math

import pytest
import torch

from melody.config import TokenizerConfig
from melody.errors import MelodyError
from melody.semantic.tokenizer import (
    HFFeatureExtractor, SemanticTokenizer, SSLEncoder, frame_count, masked_prediction_loss, mel_targets, onset_strength,
    span_mask,
)

SR = 24_000
HOP = 960


def tiny_config(**overrides) -> TokenizerConfig:
    values = dict(dim=32, layers=2, heads=2, n_mels=16, codebook_size=8, feature_layer=2, mask_prob=0.08)
    values.update(overrides)
    return TokenizerConfig(**values)


def tone(freq: float, seconds: float) -> torch.Tensor:
    t = torch.arange(int(seconds * SR)) / SR
    return 0.3 * torch.sin(2 * math.pi * freq * t)


@pytest.fixture(autouse=True)
def _threads(one_torch_thread):
    torch.manual_seed(0)


@pytest.mark.parametrize("samples", [SR, int(2.5 * SR), 10 * SR, 1, 961])
def test_token_rate_is_exactly_frame_rate(samples):
    encoder = SSLEncoder(tiny_config(), SR).eval()
    mel, keep = encoder.log_mel(torch.zeros(1, samples))
    assert mel.shape[1] == frame_count(samples, HOP) == math.ceil(samples / HOP)
    assert keep.all()
    if samples % SR == 0:
        assert mel.shape[1] == 25 * samples // SR


def test_span_mask_fraction_and_seed():
    def draw(seed):
        return span_mask(64, 500, 0.08, 5, torch.Generator().manual_seed(seed))

    a, b, c = draw(1), draw(1), draw(2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.bool and a.shape == (64, 500)
    expected = 1 - 0.92 ** 5  # 0.34
    assert abs(a.float().mean().item() - expected) < 0.03


def test_masked_prediction_loss_ignores_unmasked_frames():
    logits = torch.randn(2, 10, 8)
    targets = torch.randint(0, 8, (2, 10))
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, 2:5] = True
    mask[1, 7] = True
    changed = logits.clone()
    changed[~mask] = torch.randn_like(changed[~mask]) * 100
    assert torch.allclose(masked_prediction_loss(logits, targets, mask), masked_prediction_loss(changed, targets, mask))
    changed[mask] += torch.randn_like(changed[mask])
    assert not torch.allclose(masked_prediction_loss(logits, targets, mask), masked_prediction_loss(changed, targets, mask))


def test_padding_does_not_change_valid_frames():
    encoder = SSLEncoder(tiny_config(), SR).eval()
    clip = torch.randn(1, int(1.3 * SR)) * 0.1
    with torch.no_grad():
        alone, _ = encoder.features(clip)
        batch = torch.randn(2, 3 * SR)  # junk beyond the lengths
        batch[0, : clip.shape[1]] = clip[0]
        padded, keep = encoder.features(batch, torch.tensor([clip.shape[1], 3 * SR]))
    frames = frame_count(clip.shape[1], HOP)
    assert keep[0].sum() == frames and keep[1].all()
    assert torch.allclose(padded[0, :frames], alone[0], atol=1e-5)


def test_tiny_encoder_overfits_masked_prediction():
    config = tiny_config(mask_prob=0.15)
    encoder = SSLEncoder(config, SR, num_targets=4)
    wav = torch.stack([torch.cat([tone(220, 0.4), tone(880, 0.4)] * 2), torch.cat([tone(440, 0.4), torch.randn(int(0.4 * SR)) * 0.1] * 2)])
    mel, keep = encoder.log_mel(wav)
    targets = mel_targets(mel[keep], 4, seed=0)(mel)  # (b, t)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=3e-3)
    losses = []
    for step in range(80):
        loss, _ = encoder.masked_prediction(wav, targets, torch.Generator().manual_seed(step % 4))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 / 3


def test_tokens_are_in_range_and_equal_for_equal_audio():
    tokenizer = SemanticTokenizer(tiny_config(), sample_rate=SR).eval()
    clips = torch.randn(3, 2 * SR) * 0.1
    with torch.no_grad():
        feats = tokenizer.features(clips)
    tokenizer.fit_codebook(feats, seed=0)
    wav = torch.stack([clips[0], clips[0], clips[1]])
    tokens = tokenizer.tokens(wav)
    assert tokens.dtype == torch.long and tokens.shape == (3, 50)
    assert tokens.min() >= 0 and tokens.max() < 8
    assert torch.equal(tokens[0], tokens[1])
    assert torch.equal(tokenizer.tokens(clips[:1]), tokens[:1])
    assert len(tokens.unique()) > 1


def test_onset_strength_is_the_mean_rise_of_the_bins():
    mel = torch.zeros(1, 5, 4)
    mel[0, 2:] = torch.tensor([2.0, 0.0, 1.0, -1.0])  # a rise at frame 2 in two bins (a fall in one), held after
    mel[0, 4] = torch.tensor([0.0, 0.0, 0.0, -3.0])  # frame 4 falls everywhere it changes
    keep = torch.tensor([[True, True, True, True, False]])
    flux = onset_strength(mel, keep)
    assert flux.shape == (1, 5)
    assert flux[0].tolist() == [0.0, 0.0, 0.75, 0.0, 0.0]  # (2 + 1) / 4 at the rise; frame 0, a steady frame, padding: 0
    keep = torch.ones(1, 5, dtype=torch.bool)
    assert onset_strength(mel, keep)[0, 4] == 0.0  # falls are not onsets


def test_onset_column_marks_onsets_in_the_tokens():
    """With `onset_weight`, the codebook reads one more column, weighted so its variance is `onset_weight` × the
    features' total; clicks over a steady tone get tokens of their own at their frames, which the features
    alone (`onset_weight` = 0) do not give them."""
    clicks = tone(220, 4.0)
    for frame in range(10, 100, 12):  # a click every 12 frames (125 BPM at 25 Hz)
        clicks[frame * HOP: frame * HOP + 48] += 0.8
    wav = clicks[None]
    torch.manual_seed(0)
    plain = SemanticTokenizer(tiny_config(codebook_size=2), sample_rate=SR).eval()
    torch.manual_seed(0)
    marked = SemanticTokenizer(tiny_config(codebook_size=2, onset_weight=1.0), sample_rate=SR).eval()
    assert marked.quantizer.centroids.shape == (2, 33)
    with torch.no_grad():
        frames = marked.frame_features(wav)
        assert frames.shape == (1, 100, 33)
        assert torch.equal(frames[..., :32], plain.frame_features(wav))  # the same encoder, one column more
        marked.fit_codebook(frames, seed=0)
        weighted = marked.features(wav)[0]
        assert math.isclose(weighted[:, -1].var().item(), weighted[:, :-1].var(0).sum().item(), rel_tol=1e-3)
        plain.fit_codebook(plain.frame_features(wav), seed=0)
        onsets = torch.zeros(100, dtype=torch.bool)
        onsets[list(range(9, 99, 12))] = True  # the first frame whose window (centred, 2048 samples) hears a click
        for tokenizer, marks in ((marked, True), (plain, False)):
            tokens = tokenizer.tokens(wav)[0]
            onset_code = tokens[onsets].mode().values
            agree = ((tokens == onset_code) == onsets).float().mean().item()
            assert (agree > 0.95) == marks, (marks, agree)
    with pytest.raises(MelodyError, match="onset_weight must be"):
        SemanticTokenizer(tiny_config(onset_weight=-1.0), sample_rate=SR)


def test_mel_targets_separate_two_textures():
    encoder = SSLEncoder(tiny_config(), SR)
    low = tone(150, 2.0)[None]
    high = torch.randn(1, 2 * SR, generator=torch.Generator().manual_seed(0)) * 0.1
    high = high - torch.roll(high, 1, -1)  # first difference: noise tilted towards high frequencies
    mel_a, _ = encoder.log_mel(low)
    mel_b, _ = encoder.log_mel(high)
    quantizer = mel_targets(torch.cat([mel_a[0], mel_b[0]]), 4, seed=0)
    codes_a, codes_b = set(quantizer(mel_a[0]).tolist()), set(quantizer(mel_b[0]).tolist())
    assert codes_a.isdisjoint(codes_b)


def _save_tiny(kind: str, folder):
    import transformers

    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  conv_dim=(8,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    if kind == "hubert":
        model = transformers.HubertModel(transformers.HubertConfig(**common))
    else:
        model = transformers.Wav2Vec2ConformerModel(transformers.Wav2Vec2ConformerConfig(**common, conv_depthwise_kernel_size=3))
    model.save_pretrained(folder)


@pytest.mark.parametrize("kind", ["hubert", "wav2vec2-conformer"])
def test_adapter_features_at_25_hz(kind, tmp_path):
    _save_tiny(kind, tmp_path / kind)
    extractor = HFFeatureExtractor(tmp_path / kind, layer=1)
    wav = torch.randn(2, int(1.5 * SR)) * 0.1
    feats, keep = extractor.features(wav, torch.tensor([int(1.5 * SR), SR + 1]))
    assert feats.shape == (2, math.ceil(1.5 * SR / HOP), 32)
    assert keep.sum(1).tolist() == [38, 26]
    assert torch.isfinite(feats).all()
    tokenizer = SemanticTokenizer(tiny_config(), encoder=extractor, feature_layer=2)
    tokenizer.fit_codebook(feats.reshape(-1, 32), seed=0)
    assert tokenizer.tokens(wav[:, :SR]).shape == (2, 25)


def test_adapter_missing_or_unsupported_folder_is_a_one_line_error(tmp_path):
    with pytest.raises(MelodyError) as err:
        HFFeatureExtractor(tmp_path / "nowhere", layer=1)
    assert "\n" not in str(err.value)
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(MelodyError) as err:
        HFFeatureExtractor(tmp_path / "bert", layer=1)
    assert "\n" not in str(err.value) and "bert" in str(err.value)


def test_train_tokenizer_on_a_local_hubert_fits_only_its_codebook(tmp_path):
    """`melody train tokenizer --set tokenizer.pretrained=FOLDER`: no step, a k-means codebook on that model's features;
    the export holds the codebook only, loads back through the folder, and refuses another model put in its place."""
    from test_cli import melody_one_thread
    from test_shards import RATE, make_corpus

    from melody.checkpoint import read_tensors
    from melody.train.recipes import load_stage

    corpus = make_corpus(tmp_path / "corpus", clips=10, per_shard=3)
    _save_tiny("hubert", tmp_path / "hubert")
    sets = [f"data.sample_rate={RATE}", f"vae.sample_rate={RATE}", f"tokenizer.pretrained={tmp_path / 'hubert'}",
            "tokenizer.feature_layer=1", "tokenizer.codebook_size=8", "tokenizer.kmeans_frames=400", "train.num_workers=0"]
    out = melody_one_thread("train", "tokenizer", "--data", str(corpus), "--out", str(tmp_path / "run"), "--no-progress",
                            *[a for o in sets for a in ("--set", o)])
    assert out.returncode == 0, out.stderr
    assert "trained tokenizer to step 0" in out.stdout
    weights, _ = read_tensors(tmp_path / "run" / "tokenizer.safetensors", "tokenizer")
    assert set(weights) == {"quantizer.centroids"} and weights["quantizer.centroids"].shape == (8, 32)
    tokenizer, cfg = load_stage(tmp_path / "run", "tokenizer")
    assert isinstance(tokenizer.encoder, HFFeatureExtractor) and cfg.tokenizer.pretrained_fingerprint
    wav = torch.randn(2, RATE) * 0.1
    feats, _ = HFFeatureExtractor(tmp_path / "hubert", layer=1, sample_rate=RATE).features(wav)
    expected = torch.cdist(feats, weights["quantizer.centroids"][None]).argmin(-1)
    assert torch.equal(tokenizer.tokens(wav), expected)
    assert len(set(tokenizer.tokens(wav).flatten().tolist())) > 1
    import shutil

    shutil.rmtree(tmp_path / "hubert")
    torch.manual_seed(9)
    _save_tiny("hubert", tmp_path / "hubert")  # another random model at the same path
    with pytest.raises(MelodyError, match="holds another model than the one this tokenizer's codebook was fitted on") as err:
        load_stage(tmp_path / "run", "tokenizer")
    assert "\n" not in str(err.value)
