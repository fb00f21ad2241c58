"""The MusicLM-style baseline's fine acoustic LM reads its codec's code vectors (melody/baselines/musiclm.py).

The committed tiny run's fine LM stayed at held-out perplexity ≈ 252 of 256: its inputs and targets were right,
but a fine level's code is the codeword nearest a residual *vector* that neighbouring frames' vectors predict, and a
free embedding row per code left the LM to learn the codebooks' geometry from the tokens, which it never did.
"""

import math
from pathlib import Path

import pytest
import torch

from melody.baselines.codec import CodecConfig, LatentCodec
from melody.baselines.musiclm import AcousticLMConfig, CoarseLM, FineLM, flatten_codes, preset, sample_acoustic
from melody.checkpoint import load_weights, read_tensors, unprefixed
from melody.config import preset as melody_preset
from melody.errors import MelodyError
from melody.semantic.lm import lm_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RUN = Path(__file__).resolve().parents[1] / "training" / "musiclm-tiny"


def smooth_latents(b: int, n: int, dim: int, generator: torch.Generator, rho: float = 0.9) -> torch.Tensor:
    """`(b, n, dim)` AR(1) frames: each frame is ρ × the last one plus fresh noise (unit variance)."""
    z, x = torch.zeros(b, n, dim), torch.randn(b, dim, generator=generator)
    for i in range(n):
        x = rho * x + math.sqrt(1 - rho ** 2) * torch.randn(b, dim, generator=generator)
        z[:, i] = x
    return z


def fitted_codec(codebook_size: int, dim: int, levels: int, coarse: int, generator: torch.Generator) -> LatentCodec:
    """A latent codec at 50 Hz on 50 Hz latents (one latent frame per codec frame), k-means fitted on smooth latents."""
    codec = LatentCodec(CodecConfig(frame_rate=50, levels=levels, coarse_levels=coarse, codebook_size=codebook_size,
                                    kmeans_iters=20), dim, 50)
    codec.fit(smooth_latents(64, 100, dim, generator), seed=0)
    return codec


def test_the_fine_lm_learns_the_fine_codes_its_codec_geometry_predicts():
    # 256 codes × 3 levels (1 coarse, 2 fine) of smooth 16-dimensional frames: each fine code is near-uniform on its own
    # (unigram ≈ log 256), but the neighbouring frames' vectors predict the residual it quantises. With free code rows
    # the fine LM stays within 0.1 nats of the unigram after 200 steps; with the codec's vectors it drops > 1 nat.
    g = torch.Generator().manual_seed(0)
    codec = fitted_codec(256, 16, 3, 1, g)
    held = codec.encode(smooth_latents(64, 16, 16, g))
    cfg = preset("tiny", ["codec.codebook_size=256", "codec.levels=3", "codec.coarse_levels=1", "fine.dim=64",
                          "fine.depth=2", "fine.heads=2", "fine.dropout=0.0"])
    torch.manual_seed(0)
    fine = FineLM.from_config(cfg, codec)
    optimiser = torch.optim.AdamW(fine.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)

    def loss(codes):
        targets = flatten_codes(codes[..., 1:])
        return lm_loss(fine(targets, codes[..., :1]).logits, targets).loss

    for _ in range(200):
        value = loss(codec.encode(smooth_latents(16, 16, 16, g)))  # fresh clips every step: no memorising
        optimiser.zero_grad()
        value.backward()
        optimiser.step()
    fine.eval()
    with torch.no_grad():
        held_out = loss(held).item()
    counts = torch.bincount(held[..., 1:].reshape(-1), minlength=256).double()
    unigram = -(counts[counts > 0] / counts.sum() * (counts[counts > 0] / counts.sum()).log()).sum().item()
    assert unigram > math.log(256) - 0.25  # the fine codes alone are near-uniform (a plug-in estimate on 2 048 codes)
    assert held_out < unigram - 0.6, (held_out, unigram)


def small_fine(generator: torch.Generator) -> tuple[FineLM, LatentCodec]:
    codec = fitted_codec(16, 8, 6, 2, generator)
    cfg = preset("tiny", ["codec.codebook_size=16", "codec.levels=6", "codec.coarse_levels=2", "fine.dim=32",
                          "fine.depth=2", "fine.heads=2"])
    torch.manual_seed(0)
    fine = FineLM.from_config(cfg, codec).eval()
    with torch.no_grad():  # the zero-initialised parts non-zero, so that every path of the vectors counts
        for p in (fine.level_embedding, fine.vector_out, fine.head_bias):
            p.normal_(0, 0.5, generator=generator)
    return fine, codec


def test_code_vectors_and_context_decode_with_a_cache_and_windows_as_in_one_pass():
    g = torch.Generator().manual_seed(1)
    fine, codec = small_fine(g)
    assert fine.vector_dim == 8 and fine.context_frames == 2
    expected = codec.rvq.codebooks / codec.rvq.codebooks.pow(2).mean().sqrt()
    torch.testing.assert_close(fine.code_vectors.view(6, 16, 8), expected)
    coarse_codes = torch.randint(0, 16, (2, 6, 2), generator=g)
    tokens = torch.randint(0, 16, (2, 6 * 4), generator=g)
    full = fine(tokens, coarse_codes)
    cache = fine.new_cache()
    first = fine(tokens[:, :5], coarse_codes, cache=cache)
    logits = [first.logits] + [fine(tokens[:, i:i + 1], cache=cache).logits for i in range(5, tokens.shape[1])]
    torch.testing.assert_close(torch.cat(logits, 1), full.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache.next_logits, full.next_logits, atol=1e-5, rtol=1e-5)
    other = coarse_codes.clone()
    other[:, 5] = (other[:, 5] + 1) % 16  # frame 5's coarse codes reach frame 3's fine tokens through the context
    assert not torch.allclose(fine(tokens[:, :16], other).logits[:, 12:16], full.logits[:, 12:16])
    with pytest.raises(ValueError, match="past the condition"):
        fine(torch.zeros(1, 9, dtype=torch.long), coarse_codes[:1, :2])

    def naive(condition, frames, window, stride):
        made = []
        for i in range(frames * 4):
            frame = i // 4
            start = 0 if frame < window else ((frame - window) // stride + 1) * stride
            context = torch.tensor(made[start * 4:], dtype=torch.long)[None]
            made.append(int(fine(context, *condition(start, min(window, frames - start))).next_logits.argmax(-1)))
        return torch.tensor(made).view(1, frames, 4)

    coarse_codes = torch.randint(0, 16, (1, 13, 2), generator=g)
    condition = lambda f, n: (coarse_codes[:, f:f + n],)  # noqa: E731
    made = sample_acoustic(fine, condition, 13, 6, 4, temperature=0)
    assert made.windows == 3 and torch.equal(made.codes, naive(condition, 13, 6, 4))


def test_presets_read_code_vectors_in_the_fine_lm_and_old_configs_keep_free_rows():
    cfg = preset("tiny")
    assert (cfg.fine.code_vectors, cfg.fine.context_frames) == (True, 2)
    assert (cfg.coarse.code_vectors, cfg.coarse.context_frames) == (False, 0)  # the coarse LM is as it was
    assert AcousticLMConfig().code_vectors is False  # a config section written before the field: free rows
    assert FineLM.from_config(cfg, melody_cfg=melody_preset("tiny")).vector_dim == 40  # 125 Hz × 16 → 50 Hz × 40
    with pytest.raises(MelodyError, match="context_frames"):
        FineLM.from_config(preset("tiny", ["fine.code_vectors=false"]))
    with pytest.raises(MelodyError, match="context_frames"):
        CoarseLM.from_config(preset("tiny", ["coarse.context_frames=1"]), melody_preset("tiny"))


def test_a_run_from_before_code_vectors_resumes_as_built_and_its_fine_weights_do_not_fit_the_new_fine_lm(tmp_path):
    """A run config written before `code_vectors` existed (the first full-budget run's, commit 772ba9e) builds the
    free-row fine LM it was trained with; the coarse LM fits either way, the free-row fine weights the new one not."""
    from melody.config import to_dict
    from melody.io import write_json_atomic
    from melody.train.musiclm import run_config

    data = {"format_version": 1, **to_dict(preset("tiny"))}  # as the engine writes a run's config.json
    for field in ("code_vectors", "context_frames"):
        data["fine"].pop(field, None)
    write_json_atomic(tmp_path / "config.json", data)
    cfg = run_config(tmp_path, "tiny", [], resume=True)
    assert not cfg.fine.code_vectors and cfg.fine.context_frames == 0
    tiny = melody_preset("tiny")
    coarse, fine = CoarseLM.from_config(cfg, tiny).state_dict(), FineLM.from_config(cfg, melody_cfg=tiny).state_dict()
    new = run_config(tmp_path, "tiny", ["fine.code_vectors=true", "fine.context_frames=2"], resume=True)
    load_weights(CoarseLM.from_config(new, tiny), coarse, "coarse")  # the coarse LM still fits
    with pytest.raises(MelodyError, match="do not fit"):
        load_weights(FineLM.from_config(new, melody_cfg=tiny), fine, "fine")


def test_the_committed_run_reads_code_vectors_and_its_model_loads():
    """training/musiclm-tiny holds the finished full-budget run's exported model (the one README's quality row judged)."""
    from melody.baselines.musiclm import MusicLMStyle
    from melody.bundled import BUNDLE
    from melody.io import read_json
    from melody.pipeline import MeLoDy

    meta = read_json(RUN / "musiclm.json", "MusicLM-style config")
    assert meta["config"]["fine"]["code_vectors"] and meta["config"]["fine"]["context_frames"] == 2
    baseline = MusicLMStyle.from_pretrained(RUN, MeLoDy.from_pretrained(BUNDLE))
    assert baseline.fine.config.code_vectors and baseline.coarse.config.dim == 128
