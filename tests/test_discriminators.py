import math

import pytest
import torch

from melody.config import preset
from melody.discriminators import DiscriminatorOutput, Discriminators, PeriodDiscriminator, STFTDiscriminator

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_discriminators() -> Discriminators:
    torch.manual_seed(0)
    return Discriminators(preset("tiny").vae)


def test_one_output_per_sub_discriminator_with_batch_first_logits_and_features():
    cfg = preset("tiny").vae
    assert cfg.mpd_periods == (2, 3, 5, 7, 11) and cfg.stft_ffts == (1024, 512, 256)
    with torch.no_grad():
        outs = tiny_discriminators()(torch.randn(2, 1, 4800, generator=torch.Generator().manual_seed(0)))
    assert len(outs) == len(cfg.mpd_periods) + len(cfg.stft_ffts) == 8
    for out in outs:
        assert isinstance(out, DiscriminatorOutput)
        assert out.logits.shape[:2] == (2, 1) and torch.isfinite(out.logits).all()
        assert len(out.features) == 5 and all(f.shape[0] == 2 for f in out.features)
    # Period p: (b, C, ⌈t/p⌉ shrunk 3× by each of 4 strided convs, p); widths 8, 32, 128, 256, 256 (cap 32·8).
    for out, p in zip(outs[:5], cfg.mpd_periods, strict=True):
        h = math.ceil(4800 / p)
        heights = [h := math.ceil(h / 3) for _ in range(4)]
        heights.append(heights[-1])
        widths = (8, 32, 128, 256, 256)
        assert [tuple(f.shape) for f in out.features] == [(2, c, hh, p) for c, hh in zip(widths, heights, strict=True)]
        assert out.logits.shape == (2, 1, heights[-1], p)
    # STFT n: (b, 8, frames, bins) with frames = 1 + t / (n/4) and bins halved (rounded up) by 3 strided convs.
    for out, n in zip(outs[5:], cfg.stft_ffts, strict=True):
        frames, bins = 1 + 4800 // (n // 4), n // 2 + 1
        widths = [bins, *(bins := math.ceil(bins / 2) for _ in range(3))]
        widths.append(widths[-1])
        assert [tuple(f.shape) for f in out.features] == [(2, 8, frames, w) for w in widths]
        assert out.logits.shape == (2, 1, frames, widths[-1])


@pytest.mark.parametrize("samples", [4801, 4799, 7, 1])
def test_period_discriminator_takes_lengths_not_divisible_by_the_period(samples):
    disc = PeriodDiscriminator(period=5, channels=4)
    with torch.no_grad():
        out = disc(torch.randn(2, 1, samples))
    assert all(f.shape[-1] == 5 and f.shape[0] == 2 for f in out.features)
    assert out.features[0].shape[2] == math.ceil(math.ceil(samples / 5) / 3)
    assert torch.isfinite(out.logits).all()


def test_period_discriminator_folds_samples_p_apart_into_columns():
    # A signal that is non-zero only at samples ≡ 1 (mod 3) reaches only column 1 of the first feature
    # map beyond the bias: the convolutions are (5, 1), so columns never mix.
    disc = PeriodDiscriminator(period=3, channels=4)
    audio = torch.zeros(1, 1, 300)
    audio[..., 1::3] = torch.randn(100)
    with torch.no_grad():
        silent = disc(torch.zeros(1, 1, 300)).features[0]
        loud = disc(audio).features[0]
    changed = (loud - silent).abs().sum(dim=(0, 1, 2))
    assert changed[1] > 0 and changed[0] == 0 and changed[2] == 0


def test_gradients_reach_the_input_audio():
    audio = torch.randn(2, 1, 2400, generator=torch.Generator().manual_seed(0), requires_grad=True)
    outs = tiny_discriminators()(audio)
    sum(o.logits.mean() + sum(f.mean() for f in o.features) for o in outs).backward()
    assert audio.grad is not None and audio.grad.abs().sum() > 0
    # ... through both kinds of sub-discriminator.
    for disc in (PeriodDiscriminator(2, 4), STFTDiscriminator(256, 4)):
        x = torch.randn(1, 1, 1200, requires_grad=True)
        disc(x).logits.sum().backward()
        assert x.grad.abs().sum() > 0
