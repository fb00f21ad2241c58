import math

import pytest
import torch

from melody.discriminators import DiscriminatorOutput
from melody.losses import (
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    mel_loss_per_example,
    stft_distance_per_example,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RATE = 24_000
WINDOWS, BINS = (64, 256, 1024), (10, 40, 80)


def tone(batch: int = 3, samples: int = 4800) -> torch.Tensor:
    t = torch.arange(samples) / RATE
    freqs = torch.tensor([220.0, 330.0, 440.0])[:batch, None, None]
    return 0.5 * torch.sin(2 * math.pi * freqs * t)


def noisy(x: torch.Tensor, level: float, seed: int = 0) -> torch.Tensor:
    return x + level * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))


def mel(fake, real):
    return mel_loss_per_example(fake, real, RATE, WINDOWS, BINS)


def stft(fake, real):
    return stft_distance_per_example(fake, real, (1024, 512, 256))


@pytest.mark.parametrize("distance", [mel, stft])
def test_spectral_distances_are_zero_for_identical_audio(distance):
    x = tone()
    d = distance(x, x.clone())
    assert d.shape == (3,) and d.abs().max() < 1e-6


@pytest.mark.parametrize("distance", [mel, stft])
def test_spectral_distances_grow_with_the_noise_level(distance):
    x = tone()
    ds = [distance(noisy(x, level), x) for level in (0.003, 0.03, 0.3)]
    for d in ds:
        assert d.shape == (3,) and (d > 0).all()
    assert (ds[0] < ds[1]).all() and (ds[1] < ds[2]).all()


def test_mel_loss_is_symmetric_and_stft_distance_nearly_so():
    x, y = tone(), noisy(tone(), 0.05)
    assert torch.allclose(mel(x, y), mel(y, x), rtol=1e-5)
    ratio = stft(x, y) / stft(y, x)  # spectral convergence is normalised by the second argument
    assert ((ratio > 0.5) & (ratio < 2.0)).all()


def test_mel_loss_is_per_example():
    x = tone()
    y = x.clone()
    y[1] = noisy(x[1:2], 0.1)[0]
    d = mel(y, x)
    assert d[0] < 1e-6 and d[2] < 1e-6 and d[1] > 0.01
    assert torch.allclose(mel(y[1:2], x[1:2]), d[1:2], rtol=1e-5)


def out(*logits: float, features=()) -> DiscriminatorOutput:
    return DiscriminatorOutput(torch.tensor(logits).reshape(1, 1, -1), [torch.tensor(f) for f in features])


def test_discriminator_and_generator_losses_match_their_closed_forms():
    real = [out(1.5, 0.5), out(-0.5, 2.0, 0.0)]
    fake = [out(0.2, -1.5), out(1.0, -0.5, 3.0)]
    # LSGAN: Σ_k E(D(x) − 1)² + E D(x̂)²
    lsgan_d = ((0.25 + 0.25) / 2 + (0.04 + 2.25) / 2) + ((2.25 + 1.0 + 1.0) / 3 + (1.0 + 0.25 + 9.0) / 3)
    assert discriminator_loss(real, fake, "lsgan").item() == pytest.approx(lsgan_d, rel=1e-6)
    assert discriminator_loss(real, fake).item() == pytest.approx(lsgan_d, rel=1e-6)  # the default
    # Hinge: Σ_k E relu(1 − D(x)) + E relu(1 + D(x̂))
    hinge_d = ((0.0 + 0.5) / 2 + (1.2 + 0.0) / 2) + ((1.5 + 0.0 + 1.0) / 3 + (2.0 + 0.5 + 4.0) / 3)
    assert discriminator_loss(real, fake, "hinge").item() == pytest.approx(hinge_d, rel=1e-6)
    # Generator: LSGAN Σ_k E(D(x̂) − 1)², hinge Σ_k E relu(1 − D(x̂))
    lsgan_g = (0.64 + 6.25) / 2 + (0.0 + 2.25 + 4.0) / 3
    hinge_g = (0.8 + 2.5) / 2 + (0.0 + 1.5 + 0.0) / 3
    assert generator_adversarial_loss(fake, "lsgan").item() == pytest.approx(lsgan_g, rel=1e-6)
    assert generator_adversarial_loss(fake).item() == pytest.approx(lsgan_g, rel=1e-6)
    assert generator_adversarial_loss(fake, "hinge").item() == pytest.approx(hinge_g, rel=1e-6)
    # Perfect discriminator scores: zero loss for D under both; zero for G when D is fooled.
    assert discriminator_loss([out(1.0, 1.0)], [out(0.0, 0.0)], "lsgan").item() == 0
    assert discriminator_loss([out(1.0, 3.0)], [out(-1.0, -2.0)], "hinge").item() == 0
    assert generator_adversarial_loss([out(1.0, 1.0)], "lsgan").item() == 0


def test_unknown_adversarial_loss_is_a_value_error():
    with pytest.raises(ValueError, match="unknown adversarial loss 'wgan'"):
        discriminator_loss([out(1.0)], [out(0.0)], "wgan")
    with pytest.raises(ValueError, match="unknown adversarial loss 'wgan'"):
        generator_adversarial_loss([out(0.0)], "wgan")


def test_feature_matching_is_a_normalised_l1_averaged_over_layers():
    a = out(0.0, features=([1.0, -2.0, 3.0, -4.0], [2.0, 2.0]))
    b = out(0.0, features=([[0.5, 0.5]],))
    assert feature_matching_loss([a, b], [a, b]).item() == 0
    fa = out(0.0, features=([0.0, 0.0, 3.0, 0.0], [1.0, 4.0]))
    fb = out(0.0, features=([[0.0, 1.0]],))
    # Layer terms: mean|r − f| / mean|r|: [1,2,0,4]→1.75/2.5 = 0.7; [1,2]→1.5/2 = 0.75; [0.5,0.5]→0.5/0.5 = 1.
    expected = (0.7 + 0.75 + 1.0) / 3
    assert feature_matching_loss([a, b], [fa, fb]).item() == pytest.approx(expected, rel=1e-6)


def test_feature_matching_sends_gradients_to_the_fake_features_only():
    real = DiscriminatorOutput(torch.zeros(1), [torch.tensor([1.0, -2.0], requires_grad=True)])
    fake = DiscriminatorOutput(torch.zeros(1), [torch.tensor([0.0, 0.0], requires_grad=True)])
    feature_matching_loss([real], [fake]).backward()
    assert real.features[0].grad is None
    # d/df mean|r − f| / mean|r| = −sign(r − f) / (n · mean|r|) = −sign(r − f) / 3
    assert torch.allclose(fake.features[0].grad, torch.tensor([-1 / 3, 1 / 3]))
