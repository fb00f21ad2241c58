"""Diffusion in angle form: exact inverses, schedules, the multi-chunk objective, samplers on oracles and a Gaussian toy."""

import math

import pytest
import torch

from melody.diffusion import (HALF_PI, Known, angles_from_steps, chunk_bounds, ddim_step, denoised_from_velocity,
                              guided, melody_steps, multichunk_angles, multichunk_loss, noise_from_velocity, noisy,
                              sample, uniform_steps, velocity_target)
from melody.errors import MelodyError


def draws(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_clean_latents_and_noise_are_recovered_exactly_from_a_velocity():
    z, eps = draws(3, 40, 16, seed=1), draws(3, 40, 16, seed=2)
    delta = torch.rand(3, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * HALF_PI
    z_delta, v = noisy(z, eps, delta), velocity_target(z, eps, delta)
    torch.testing.assert_close(denoised_from_velocity(z_delta, v, delta), z, rtol=0, atol=1e-12)
    torch.testing.assert_close(noise_from_velocity(z_delta, v, delta), eps, rtol=0, atol=1e-12)
    # the ends: δ = 0 is the data, δ = π/2 pure noise, and v there is ε and −z
    zeros, ends = torch.zeros(3, 40, dtype=torch.float64), torch.full((3, 40), HALF_PI, dtype=torch.float64)
    torch.testing.assert_close(noisy(z, eps, zeros), z)
    torch.testing.assert_close(noisy(z, eps, ends), eps, atol=1e-15, rtol=0)
    torch.testing.assert_close(velocity_target(z, eps, zeros), eps)


@pytest.mark.parametrize("steps", [1, 2, 5, 10, 20, 50])
def test_schedules_sum_to_half_pi_and_melody_takes_its_largest_step_first(steps):
    for omegas in (uniform_steps(steps), melody_steps(steps)):
        assert omegas.shape == (steps,) and float(omegas.sum()) == pytest.approx(HALF_PI, abs=1e-12)
        deltas = angles_from_steps(omegas)
        assert float(deltas[0]) == pytest.approx(HALF_PI) and float(deltas[-1]) == 0.0
        assert bool((deltas[1:] <= deltas[:-1]).all())
    omegas = melody_steps(steps)
    if steps > 1:
        assert bool((omegas[1:] < omegas[:-1]).all())  # t = T first: the noisiest step is the largest
    t = steps  # the first step, by the formula
    assert float(omegas[0]) == pytest.approx(math.pi / (6 * steps) + 2 * math.pi * t / (3 * steps * (steps + 1)))
    with pytest.raises(MelodyError, match="at least 1 step"):
        melody_steps(0)


def test_ddim_step_with_the_true_velocity_rotates_exactly_to_the_smaller_angle():
    z, eps = draws(2, 8, 4, seed=4), draws(2, 8, 4, seed=5)
    delta, omega = 1.1, 0.37
    full = torch.full((2, 8), delta, dtype=torch.float64)
    stepped = ddim_step(noisy(z, eps, full), velocity_target(z, eps, full), omega)
    torch.testing.assert_close(stepped, noisy(z, eps, full - omega), rtol=0, atol=1e-12)


def oracle_for(z0):
    """The velocity a model that knows the clean latents would give at any (x, δ)."""
    calls = []

    def model(x, delta, cond):
        calls.append(cond)
        alpha, sigma = torch.cos(delta)[..., None], torch.sin(delta)[..., None]
        eps = (x - alpha * z0) / sigma.clamp_min(1e-300)
        return alpha * eps - sigma * z0
    return model, calls


@pytest.mark.parametrize("schedule", [uniform_steps, melody_steps])
@pytest.mark.parametrize("steps", [1, 3, 10, 50])
def test_sampler_with_an_oracle_reproduces_the_clean_latents_for_any_step_count(schedule, steps):
    z0 = draws(2, 30, 16, seed=6)
    model, calls = oracle_for(z0)
    out = sample(model, draws(2, 30, 16, seed=7), angles_from_steps(schedule(steps)), cond="c", guidance=1.0)
    torch.testing.assert_close(out, z0, rtol=0, atol=1e-10)
    assert len(calls) == steps  # one network call per step without guidance


def test_guidance_calls_both_branches_and_interpolates():
    z0 = draws(1, 10, 4, seed=8)
    model, calls = oracle_for(z0)
    sample(model, draws(1, 10, 4, seed=9), angles_from_steps(melody_steps(5)), cond="c", guidance=2.5)
    assert calls == ["c", None] * 5
    vc, vu = torch.tensor([3.0]), torch.tensor([1.0])
    assert float(guided(vc, vu, 2.5)) == 6.0 and float(guided(vc, vu, 1.0)) == 3.0 and float(guided(vc, vu, 0.0)) == 1.0


def gaussian_velocity(mu, s):
    """The exact v̂ = E[v | x] when every latent value is N(mu, s²) independently."""
    def model(x, delta, cond):
        alpha, sigma = torch.cos(delta)[..., None], torch.sin(delta)[..., None]
        mean_z = mu + alpha * s**2 / (alpha**2 * s**2 + sigma**2) * (x - alpha * mu)  # E[z | z_δ = x]
        return (alpha * x - mean_z) / sigma.clamp_min(1e-300)
    return model


GAUSSIAN_MU, GAUSSIAN_S = 0.7, 0.3


def gaussian_sample(schedule, steps, solver="ddim"):
    """(sampled, exact): the probability-flow map from noise ε to data for N(μ, s²) data is z = μ + s·ε."""
    eps = draws(1, 2000, 4, seed=10)
    out = sample(gaussian_velocity(GAUSSIAN_MU, GAUSSIAN_S), eps, angles_from_steps(schedule(steps)), solver=solver)
    return out, GAUSSIAN_MU + GAUSSIAN_S * eps


def gaussian_error(schedule, steps, solver="ddim"):
    out, exact = gaussian_sample(schedule, steps, solver)
    return float((out - exact).abs().max())


def test_ddim_at_1000_steps_and_melody_at_few_agree_on_a_gaussian_with_the_closed_form():
    # measured: DDIM 1000 steps 0.0025; MeLoDy 5/10/20 steps 0.30/0.155/0.079, uniform 0.42/0.23/0.12
    assert gaussian_error(uniform_steps, 1000) < 3e-3
    few, exact = gaussian_sample(melody_steps, 20)
    assert float((few - exact).abs().max()) < 0.1
    assert float(few.mean()) == pytest.approx(GAUSSIAN_MU, abs=0.01) and float(few.std()) == pytest.approx(GAUSSIAN_S, abs=0.03)
    for steps in (5, 10, 20):  # the paper's schedule beats the uniform one at every step count it uses
        assert gaussian_error(melody_steps, steps) < 0.75 * gaussian_error(uniform_steps, steps)


def test_multichunk_angles_are_constant_per_chunk_seeded_and_in_range():
    delta = multichunk_angles(6, 103, 4, torch.Generator().manual_seed(0))
    assert delta.shape == (6, 103) and float(delta.min()) >= 0 and float(delta.max()) <= HALF_PI
    edges = chunk_bounds(103, 4)
    assert edges == [0, 25, 51, 77, 103]
    for m in range(4):
        chunk = delta[:, edges[m]:edges[m + 1]]
        assert bool((chunk == chunk[:, :1]).all())
    assert len(torch.unique(delta[:, [0, 30, 60, 90]])) == 24  # 4 independent draws per row
    again = multichunk_angles(6, 103, 4, torch.Generator().manual_seed(0))
    assert torch.equal(delta, again)


def test_clean_context_is_a_left_or_right_stretch_of_20_to_80_percent():
    delta = multichunk_angles(200, 100, 4, torch.Generator().manual_seed(1), clean_prob=1.0)
    clean = delta == 0
    sides = {"left": 0, "right": 0}
    for row in clean:
        n = int(row.sum())
        assert 20 <= n <= 80
        left, right = bool(row[:n].all()), bool(row[-n:].all())
        assert left or right
        sides["left" if left else "right"] += 1
    assert min(sides.values()) > 60  # both sides are drawn
    none = multichunk_angles(50, 100, 4, torch.Generator().manual_seed(1), clean_prob=0.0)
    assert not bool((none == 0).any())


def test_multichunk_loss_is_mse_over_noisy_frames_only():
    v_pred, v_true = draws(2, 10, 3, seed=11), draws(2, 10, 3, seed=12)
    delta = torch.full((2, 10), 0.5, dtype=torch.float64)
    delta[0, :4] = 0.0  # clean context in example 0
    loss = multichunk_loss(v_pred, v_true, delta)
    assert loss.shape == (2,)
    assert float(loss[0]) == pytest.approx(float((v_pred[0, 4:] - v_true[0, 4:]).pow(2).mean()))
    assert float(loss[1]) == pytest.approx(float((v_pred[1] - v_true[1]).pow(2).mean()))
    changed = v_pred.clone()
    changed[0, :4] += 100.0  # what the model says about clean frames does not count
    assert torch.equal(multichunk_loss(changed, v_true, delta), loss)


def test_known_frames_stay_exactly_as_given():
    z0 = draws(1, 40, 4, seed=13)
    model, _ = oracle_for(draws(1, 40, 4, seed=14))  # a model that knows other music
    mask = torch.zeros(1, 40, dtype=torch.bool)
    mask[:, :15] = True
    out = sample(model, draws(1, 40, 4, seed=15), angles_from_steps(melody_steps(5)), known=Known(z0, mask))
    assert torch.equal(out[:, :15], z0[:, :15])


def test_continuation_in_windows_reproduces_a_long_clip_seamlessly_with_an_oracle():
    from melody.diffusion import continue_latents

    long = draws(1, 100, 4, seed=16)

    def windowed(offset):  # an oracle that knows the whole clip, asked about the window starting at `offset`
        return lambda x, delta, cond: _window_oracle(long[:, offset:offset + x.shape[1]])(x, delta, cond)

    made = long[:, :40]  # the first window is given
    g = torch.Generator().manual_seed(0)
    while made.shape[1] < 100:
        start = made.shape[1] - 20  # 20 frames of clean context
        new = min(20, 100 - made.shape[1])
        made = torch.cat((made, continue_latents(windowed(start), made, new, "c", angles_from_steps(melody_steps(5)),
                                                 generator=g, context=20).to(made)), dim=1)
    torch.testing.assert_close(made, long, rtol=0, atol=1e-9)


def _window_oracle(z0):
    def model(x, delta, cond):
        alpha, sigma = torch.cos(delta)[..., None], torch.sin(delta)[..., None]
        return alpha * (x - alpha * z0) / sigma.clamp_min(1e-300) - sigma * z0
    return model


def test_continuation_returns_only_new_frames_and_is_seeded():
    from melody.diffusion import continue_latents

    calls = []

    def zero_velocity_model(x, delta, cond):
        calls.append(cond)
        return torch.zeros_like(x)

    previous = draws(2, 30, 4, seed=17)
    deltas = angles_from_steps(melody_steps(3))
    a = continue_latents(zero_velocity_model, previous, 12, None, deltas, generator=torch.Generator().manual_seed(5), context=8)
    b = continue_latents(zero_velocity_model, previous, 12, None, deltas, generator=torch.Generator().manual_seed(5), context=8)
    assert a.shape == (2, 12, 4) and torch.equal(a, b)
    assert len(calls) == 6  # 3 steps per call, unguided


@pytest.mark.parametrize("steps", [1, 2, 5, 10])
def test_dpm_solver_with_an_oracle_reproduces_the_clean_latents(steps):
    z0 = draws(2, 30, 16, seed=6)
    model, calls = oracle_for(z0)
    out = sample(model, draws(2, 30, 16, seed=7), angles_from_steps(melody_steps(steps)), cond="c", solver="dpmpp-2m")
    torch.testing.assert_close(out, z0, rtol=0, atol=1e-10)
    assert len(calls) == steps  # the same passes as DDIM


@pytest.mark.parametrize("delta_s, delta_t", [(HALF_PI, 1.2), (1.0, 0.4), (0.3, 0.05), (0.5, 0.0)])
def test_the_first_order_dpm_solver_step_is_the_ddim_step(delta_s, delta_t):
    from melody.diffusion import dpm_solver_step

    x, v = draws(1, 20, 4, seed=20), draws(1, 20, 4, seed=21)
    denoised = math.cos(delta_s) * x - math.sin(delta_s) * v
    torch.testing.assert_close(dpm_solver_step(x, denoised, delta_s, delta_t), ddim_step(x, v, delta_s - delta_t),
                               rtol=0, atol=1e-12)


def test_multistep_denoised_extrapolates_linearly_in_lambda():
    from melody.diffusion import log_snr, multistep_denoised

    # D varying linearly in λ: the 2M update uses D at the midpoint of the step, D(λ_s + h/2)
    d_prev, d, h_prev, h = torch.tensor([1.0]), torch.tensor([3.0]), 2.0, 1.0  # slope 1 per unit λ
    assert float(multistep_denoised(d, d_prev, h, h_prev)) == pytest.approx(3.0 + 0.5)
    assert log_snr(0.0) == math.inf and log_snr(HALF_PI) == -math.inf and log_snr(math.pi / 4) == pytest.approx(0.0)


def test_dpm_solver_beats_ddim_at_the_same_passes_on_a_gaussian():
    # measured (max error, MeLoDy's schedule): 5 steps DDIM 0.300, DPM-Solver++(2M) 0.208; 10: 0.155, 0.011;
    # 20: 0.079, 0.014. At 1-3 steps no step has two finite log-SNR gaps, so both are the same update
    for steps in (5, 10, 20):
        assert gaussian_error(melody_steps, steps, "dpmpp-2m") < 0.75 * gaussian_error(melody_steps, steps, "ddim")
    assert gaussian_error(melody_steps, 3, "dpmpp-2m") == pytest.approx(gaussian_error(melody_steps, 3, "ddim"), abs=1e-12)


def test_known_frames_stay_and_an_unknown_solver_is_one_line():
    z0 = draws(1, 40, 4, seed=13)
    model, _ = oracle_for(draws(1, 40, 4, seed=14))
    mask = torch.zeros(1, 40, dtype=torch.bool)
    mask[:, :15] = True
    out = sample(model, draws(1, 40, 4, seed=15), angles_from_steps(melody_steps(5)), known=Known(z0, mask),
                 solver="dpmpp-2m")
    assert torch.equal(out[:, :15], z0[:, :15])
    with pytest.raises(MelodyError, match="unknown DPD solver 'heun'; choose one of: ddim, dpmpp-2m"):
        sample(model, z0, angles_from_steps(melody_steps(2)), solver="heun")
