"""Diffusion in angle form (MeLoDy §3.2): the velocity objective, multi-chunk noise levels, step schedules, samplers.

Pure functions over tensors; the DPD network (`melody.dpd`) knows nothing of them. Latents are
`(b, L, d)` (frames × latent channels, the VAE's `encode_latents` layout) and the noise level is
an angle δ ∈ [0, π/2] **per frame**, `(b, L)`:

- **Forward process** (MeLoDy Eq. 3, v-diffusion of Salimans & Ho 2022 in angle form):
  z_δ = α z + σ ε with α = cos δ, σ = sin δ (`alpha_sigma`, `noisy`); δ = 0 is clean, π/2 pure noise.
- **Velocity** (Eq. 4): v = α ε − σ z (`velocity_target`). Its exact inverses (rotation by δ):
  z = α z_δ − σ v, ε = σ z_δ + α v (`denoised_from_velocity`, `noise_from_velocity`).
- **Multi-chunk velocity** (§3.2, training): the L frames are cut into M chunks at ⌊mL/M⌋ and each
  chunk gets its own δ_m ~ U[0, π/2] (`multichunk_angles`); the loss is the MSE between the
  predicted and true velocities (`multichunk_loss`, unreduced per example).
- **Clean context** (the lineage's choice for continuation and inpainting, `shared/reference`): with
  probability `clean_prob` a left or right stretch of 20–80 % of the window gets δ = 0, the
  continuation situation; frames at δ = 0 carry no velocity to learn (their "target" is the
  meaningless −0·z + 1·ε = ε) and are left out of the loss, which the reference implementation
  did not do and we do.
- **Step schedules** (§3.2 sampler): T angle steps ω_t, t = T … 1, summing to π/2 — uniform
  ω_t = π / (2T) (Moûsai; plain DDIM in angle form) or MeLoDy's ω_t = π/(6T) + 2πt / (3T(T+1)),
  largest first (`uniform_steps`, `melody_steps`), turned into the δ visited (`angles_from_steps`).
- **Update** (DDIM in angle form): z_{δ−ω} = cos ω · z_δ − sin ω · v̂ (`ddim_step`). With the true
  velocity it is exact: it rotates (z, ε) from angle δ to δ − ω, whatever ω.
- **Guidance** (Ho & Salimans 2022, scale 2.5 in the paper): v̂ = v_u + w (v_c − v_u) (`guided`).
- **A second-order update at the same passes** (`solver="dpmpp-2m"`, outside the paper): DPM-Solver++(2M)
  (Lu et al. 2022, Alg. 2) in angle form. With λ = log(α/σ) = −log tan δ and the denoised
  D = α z_δ − σ v̂, a step δ_s → δ_t is z_t = (σ_t/σ_s) z_s − α_t (e^{−h} − 1) D̃ with h = λ_t − λ_s
  (`dpm_solver_step`; with D̃ = D it is exactly the DDIM step), and D̃ = (1 + 1/(2r)) D − 1/(2r) D_prev,
  r = h_prev / h, extrapolates the denoised from the last two steps (`multistep_denoised`). The first
  step (from δ = π/2, where λ = −∞) and the last (to δ = 0, which lands on D̃) use D̃ = D, as k-diffusion's
  `sample_dpmpp_2m` does at its ends. Written here rather than taken from k-diffusion: its samplers
  step one σ per batch row in VE form, while these windows hold clean known frames at δ = 0 beside noisy
  ones and write them back after every step.

Samplers (k-diffusion's signature): `sample(model, x, deltas, cond, guidance, generator, callback, known)`
where `model(x, delta, cond)` → v̂ and cond=None is the unconditional branch. `known` (a clean
latent and a `(b, L)` bool mask) is continuation and inpainting: those frames sit at δ = 0 and are
written back to their known values after every step.

**Continuation** (`continue_latents`, §4 and the lineage's rule): the next window holds the last
`context` frames of what exists, clean (δ = 0, written back after every step), followed by the new
frames, which start from noise at δ = π/2; the model sees both, so the new frames continue the
old ones, and only the new frames are kept. Repeating it writes latents of any length.

**Inpainting** (`inpaint_latents`, the multi-chunk noise levels of §3.2 put to the use the lineage
names): a window whose frames first … first + count − 1 start from noise at δ = π/2 while the
frames on either side are known (δ = 0, written back after every step); continuation is the case
with nothing known on the right.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

HALF_PI = math.pi / 2


# --- the process (Eq. 3, 4) -----------------------------------------------------------------------

def alpha_sigma(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """α = cos δ, σ = sin δ, shaped to broadcast over the latent channels: `(b, L)` → `(b, L, 1)` each."""
    delta = delta[..., None]
    return torch.cos(delta), torch.sin(delta)


def noisy(z: torch.Tensor, noise: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """z_δ = α z + σ ε: clean latents `(b, L, d)`, noise like z, angles `(b, L)` → `(b, L, d)`."""
    alpha, sigma = alpha_sigma(delta)
    return alpha * z + sigma * noise


def velocity_target(z: torch.Tensor, noise: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """v = α ε − σ z `(b, L, d)`."""
    alpha, sigma = alpha_sigma(delta)
    return alpha * noise - sigma * z


def denoised_from_velocity(z_delta: torch.Tensor, v: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """z = α z_δ − σ v: the clean latents a velocity implies."""
    alpha, sigma = alpha_sigma(delta)
    return alpha * z_delta - sigma * v


def noise_from_velocity(z_delta: torch.Tensor, v: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """ε = σ z_δ + α v: the noise a velocity implies."""
    alpha, sigma = alpha_sigma(delta)
    return sigma * z_delta + alpha * v


# --- training: multi-chunk angles and the loss ------------------------------------------------------

def chunk_bounds(length: int, chunks: int) -> list[int]:
    """Chunk edges ⌊mL/M⌋ for m = 0 … M (§3.2): M + 1 integers from 0 to L."""
    return [m * length // chunks for m in range(chunks + 1)]


def multichunk_angles(batch: int, length: int, chunks: int, generator: torch.Generator | None = None,
                      clean_prob: float = 0.0) -> torch.Tensor:
    """Per-frame angles `(batch, length)`: chunk m of ⌊mL/M⌋ … ⌊(m+1)L/M⌋ at δ_m ~ U[0, π/2] (independent).

    With probability `clean_prob` per example, a left or right stretch (side and 20–80 % of the
    frames drawn uniformly) is set to δ = 0: clean context, as in continuation. Every draw comes from
    `generator` (on its device), the same number of draws whatever is chosen.
    """
    device = generator.device if generator is not None else torch.device("cpu")
    per_chunk = torch.rand(batch, chunks, generator=generator, device=device) * HALF_PI
    edges = chunk_bounds(length, chunks)
    sizes = torch.tensor([edges[m + 1] - edges[m] for m in range(chunks)], device=device)
    delta = per_chunk.repeat_interleave(sizes, dim=1)  # (b, L)
    keep_clean, right, share = torch.rand(3, batch, generator=generator, device=device)
    clean_frames = ((0.2 + 0.6 * share) * length).long()  # (b,) 20–80 % of the window
    position = torch.arange(length, device=device)[None, :]
    stretch = torch.where(right[:, None] < 0.5, position < clean_frames[:, None], position >= length - clean_frames[:, None])
    return delta.masked_fill(stretch & (keep_clean[:, None] < clean_prob), 0.0)


def multichunk_loss(v_pred: torch.Tensor, v_target: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """MSE of velocities over the frames with δ > 0, per example `(b,)` (0 for an example with none)."""
    weight = (delta > 0).to(v_pred.dtype)[..., None]  # (b, L, 1): clean frames have nothing to learn
    squared = (v_pred.float() - v_target.float()).pow(2) * weight
    counted = weight.sum(dim=(1, 2)) * v_pred.shape[-1]
    return squared.sum(dim=(1, 2)) / counted.clamp_min(1.0)


# --- sampling ------------------------------------------------------------------------------------------

def uniform_steps(steps: int) -> torch.Tensor:
    """ω_t = π / (2T) for t = T … 1 `(T,)` (Moûsai; DDIM with a uniform angle grid)."""
    _check_steps(steps)
    return torch.full((steps,), HALF_PI / steps, dtype=torch.float64)


def melody_steps(steps: int) -> torch.Tensor:
    """MeLoDy's ω_t = π/(6T) + 2πt / (3T(T+1)) for t = T … 1 `(T,)`: the noisiest step is the largest; Σ = π/2."""
    _check_steps(steps)
    t = torch.arange(steps, 0, -1, dtype=torch.float64)
    return math.pi / (6 * steps) + 2 * math.pi * t / (3 * steps * (steps + 1))


def angles_from_steps(omegas: torch.Tensor) -> torch.Tensor:
    """The δ visited `(T + 1,)`: π/2, π/2 − ω_T, …, 0 (the last set to exactly 0)."""
    deltas = HALF_PI - torch.cat((omegas.new_zeros(1), omegas.cumsum(0)))
    deltas[-1] = 0.0
    return deltas.clamp(0.0, HALF_PI)


SCHEDULES: dict[str, Callable[[int], torch.Tensor]] = {"melody": melody_steps, "uniform": uniform_steps}


def ddim_step(z_delta: torch.Tensor, v: torch.Tensor, omega: torch.Tensor | float) -> torch.Tensor:
    """z_{δ−ω} = cos ω · z_δ − sin ω · v̂ (DDIM in angle form); ω a float or per frame `(b, L)`."""
    omega = torch.as_tensor(omega, dtype=z_delta.dtype, device=z_delta.device)
    if omega.dim() > 0:
        omega = omega[..., None]
    return torch.cos(omega) * z_delta - torch.sin(omega) * v


def log_snr(delta: float) -> float:
    """λ = log(α / σ) = −log tan δ: +∞ at δ = 0 (clean), −∞ at π/2 (noise)."""
    if delta <= 0.0:
        return math.inf
    if delta >= HALF_PI:
        return -math.inf
    return -math.log(math.tan(delta))


def dpm_solver_step(z_s: torch.Tensor, denoised: torch.Tensor, delta_s: float, delta_t: float) -> torch.Tensor:
    """z_t = (σ_t/σ_s) z_s − α_t (e^{−h} − 1) D, h = λ_t − λ_s (DPM-Solver++ first-order form, Lu et al. 2022
    Eq. 9); from δ = π/2 (σ_s = 1) it is α_t D + σ_t z_s, and to δ = 0 it is D."""
    alpha_t, sigma_t, sigma_s = math.cos(delta_t), math.sin(delta_t), math.sin(delta_s)
    if delta_t <= 0.0:
        return denoised
    # α_t (1 − e^{−h}) = α_t − α_s σ_t / σ_s: the closed form, finite at δ_s = π/2 where h is infinite
    return (sigma_t / sigma_s) * z_s + (alpha_t - math.cos(delta_s) * sigma_t / sigma_s) * denoised


def multistep_denoised(denoised: torch.Tensor, previous: torch.Tensor, h: float, h_previous: float) -> torch.Tensor:
    """D̃ = (1 + 1/(2r)) D − 1/(2r) D_prev, r = h_prev / h (DPM-Solver++(2M), Lu et al. 2022 Alg. 2)."""
    weight = 1.0 / (2.0 * (h_previous / h))
    return (1.0 + weight) * denoised - weight * previous


SOLVERS = ("ddim", "dpmpp-2m")


def check_solver(solver: str) -> None:
    if solver not in SOLVERS:
        from melody.errors import MelodyError

        raise MelodyError(f"unknown DPD solver '{solver}'; choose one of: {', '.join(SOLVERS)}")


def guided(v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """v̂ = v_u + w (v_c − v_u) (classifier-free guidance; the paper's w = 2.5)."""
    return v_uncond + scale * (v_cond - v_uncond)


def guided_in_one_call(model: Callable, scale: float) -> Callable:
    """`model(x, delta, cond, drop=None)` → v̂ with classifier-free guidance folded in: the conditional and
    the null branch in one call over the doubled batch (the rows, then the same rows with the condition
    dropped), so a guided step is one network pass — as the paper counts DPD passes (Table 3: 25·T + 20)
    and as audiocraft and k-diffusion batch guidance. Pass the result to `sample` with guidance 1."""

    def velocity(x: torch.Tensor, delta: torch.Tensor, cond):
        if cond is None or scale == 1.0:
            return model(x, delta, cond)
        b = x.shape[0]
        drop = torch.arange(2 * b, device=x.device) >= b
        both = model(torch.cat((x, x)), torch.cat((delta, delta)), torch.cat((cond, cond)), drop=drop)
        return guided(both[:b], both[b:], scale)

    return velocity


@dataclass
class Known:
    """Frames whose clean value is given: `latents` `(b, L, d)` where `mask` `(b, L)` is True."""

    latents: torch.Tensor
    mask: torch.Tensor


@torch.no_grad()
def sample(model: Callable, x: torch.Tensor, deltas: torch.Tensor, cond=None, guidance: float = 1.0,
           known: Known | None = None, callback: Callable[[dict], None] | None = None,
           solver: str = "ddim") -> torch.Tensor:
    """Deterministic sampling from `x` (noise at δ = deltas[0], usually π/2) down the angles `deltas`
    `(T + 1,)`; `model(x, delta (b, L), cond)` → v̂, cond=None the unconditional branch; T (+ T if
    guided) network calls. Known frames stay at δ = 0 with their values (continuation, inpainting).
    `solver`: "ddim" (the paper's angle-DDIM) or "dpmpp-2m" (DPM-Solver++(2M), same passes)."""
    check_solver(solver)
    b, length, _ = x.shape
    mask = None if known is None else known.mask.to(x.device)
    if mask is not None:
        x = torch.where(mask[..., None], known.latents.to(x), x)
    previous = None  # (D, h) of the last step, for the multistep update
    for i in range(len(deltas) - 1):
        delta, omega = float(deltas[i]), float(deltas[i] - deltas[i + 1])
        frame_delta = torch.full((b, length), delta, device=x.device, dtype=x.dtype)
        if mask is not None:
            frame_delta = frame_delta.masked_fill(mask, 0.0)
        # v̂(z_δ; c), guided against the null condition
        v = model(x, frame_delta, cond)
        if cond is not None and guidance != 1.0:
            v = guided(v, model(x, frame_delta, None), guidance)
        if solver == "ddim":
            # z_{δ−ω} = cos ω z_δ − sin ω v̂
            x = ddim_step(x, v, omega)
        else:
            target = float(deltas[i + 1])
            denoised = math.cos(delta) * x - math.sin(delta) * v  # D = α z_δ − σ v̂ (`denoised_from_velocity`)
            h = log_snr(target) - log_snr(delta)
            used = denoised
            if previous is not None and math.isfinite(h) and math.isfinite(previous[1]):
                used = multistep_denoised(denoised, previous[0], h, previous[1])
            x = dpm_solver_step(x, used, delta, target)
            previous = (denoised, h)
        if mask is not None:  # known frames are clean: write them back
            x = torch.where(mask[..., None], known.latents.to(x), x)
        if callback is not None:
            callback({"i": i, "delta": delta, "x": x, "v": v})
    return x


def _check_steps(steps: int) -> None:
    if steps < 1:
        from melody.errors import MelodyError

        raise MelodyError(f"the sampler needs at least 1 step, got {steps}")


def noise_like_rows(batch: int, frames: int, dim: int, generator, device: torch.device | str) -> torch.Tensor:
    """Gaussian noise `(batch, frames, dim)` from one generator, or row i from `generator[i]` (a sequence),
    so that a row's noise does not depend on the other rows of the batch."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != batch:
            raise ValueError(f"{len(generator)} generators for {batch} rows")
        return torch.cat([torch.randn(1, frames, dim, generator=g, device=g.device) for g in generator]).to(device)
    gen_device = generator.device if generator is not None else device
    return torch.randn(batch, frames, dim, generator=generator, device=gen_device).to(device)


@torch.no_grad()
def inpaint_latents(model: Callable, latents: torch.Tensor, first: int, count: int, cond, deltas: torch.Tensor,
                    guidance: float = 1.0, generator=None, callback: Callable[[dict], None] | None = None,
                    solver: str = "ddim") -> torch.Tensor:
    """Frames `first … first + count − 1` of the window `latents` `(b, L, d)` sampled afresh → `(b, count, d)`:
    they start from noise drawn from `generator` (or one generator per row, `noise_like_rows`), every
    other frame is known (`Known`: δ = 0, written back after every step), sampled with `sample`; `cond`
    is the window's condition (e.g. its semantic tokens). What `latents` holds in the sampled frames is
    ignored."""
    b, length, d = latents.shape
    noise = noise_like_rows(b, count, d, generator, latents.device).to(latents)
    window = torch.cat((latents[:, :first], noise, latents[:, first + count:]), dim=1)
    mask = torch.ones(b, length, dtype=torch.bool, device=latents.device)
    mask[:, first:first + count] = False
    out = sample(model, window, deltas, cond, guidance, known=Known(window, mask), callback=callback, solver=solver)
    return out[:, first:first + count]


@torch.no_grad()
def continue_latents(model: Callable, previous: torch.Tensor, new_frames: int, cond, deltas: torch.Tensor,
                     guidance: float = 1.0, generator=None, context: int | None = None,
                     callback: Callable[[dict], None] | None = None, solver: str = "ddim") -> torch.Tensor:
    """`new_frames` latents `(b, new_frames, d)` that continue `previous` `(b, P, d)`: a window of its last
    `context` frames (all of them by default) kept clean, then fresh noise from `generator` (or one
    generator per row, `noise_like_rows`), sampled with `sample` (`inpaint_latents` with nothing known
    on the right); `cond` is the window's condition (e.g. its semantic tokens, covering context + new frames)."""
    b, _, d = previous.shape
    keep = previous[:, previous.shape[1] - (previous.shape[1] if context is None else min(context, previous.shape[1])):]
    window = torch.cat((keep, keep.new_zeros(b, new_frames, d)), dim=1)
    return inpaint_latents(model, window, keep.shape[1], new_frames, cond, deltas, guidance, generator, callback, solver)
