"""Schedulers, the official random-number order and the controller-residual precomputation."""

import json
from pathlib import Path

import pytest
import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from r2r.errors import R2RUserError
from r2r.pipeline.sampling import SCHEDULERS, controller_residuals, denoise, make_scheduler

CONFIG = json.loads(
    (Path(__file__).resolve().parents[1] / "r2r/configs/official/stable-diffusion-inpainting/scheduler/scheduler_config.json")
    .read_text()
)


class FakeUNet(torch.nn.Module):
    """Deterministic stand-in with the diffusers call signature: eps depends on every input."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.3))
        self.calls = []

    @property
    def dtype(self):
        return self.w.dtype

    def forward(self, x, t, encoder_hidden_states=None, down_block_additional_residuals=None,
                mid_block_additional_residual=None, return_dict=True):
        self.calls.append((x.shape, float(t), down_block_additional_residuals is not None))
        eps = self.w * x[:, :4] + 0.1 * x[:, 4:5] - 0.2 * x[:, 5:9] + 1e-3 * float(t) + encoder_hidden_states.mean()
        if down_block_additional_residuals is not None:
            eps = eps + down_block_additional_residuals[0].mean() + mid_block_additional_residual.mean()
        return (eps,)


class FakeController(torch.nn.Module):
    def forward(self, hint, timestep, text, mask, conditioning_scale=1.0, reference_mask=None):
        t = torch.as_tensor(timestep, dtype=hint.dtype).reshape(-1)
        t = t.expand(hint.shape[0]) if t.numel() == 1 else t
        if reference_mask is not None and reference_mask.shape[0] != hint.shape[0]:
            raise ValueError(f"reference_mask batch {reference_mask.shape[0]} != hint batch {hint.shape[0]}")
        ref = 0 if reference_mask is None else 2 * reference_mask
        base = hint[:, :4, ::8, ::8] * (1 + t.view(-1, 1, 1, 1) / 1000) + mask + ref
        down = tuple(base * (k + 1) * conditioning_scale for k in range(12))
        return down, (base.mean(1, keepdim=True) + text[:, :1, :1, None]) * conditioning_scale


def _inputs(b=2, h=4, w=6, seed=3):
    g = torch.Generator().manual_seed(seed)
    params = torch.randn(b, 8, h, w, generator=g)
    posterior = DiagonalGaussianDistribution(params)
    mask = (torch.rand(b, 1, h, w, generator=g) > 0.5).float()
    embeds = torch.randn(1, 77, 16, generator=g)
    return posterior, mask, embeds


def test_official_timesteps_and_sigmas():
    s = make_scheduler(CONFIG)
    s.set_timesteps(10)
    assert s.timesteps.tolist() == [999.0, 888.0, 777.0, 666.0, 555.0, 444.0, 333.0, 222.0, 111.0, 0.0]
    expected = [14.6146, 7.8399, 4.6092, 2.9183, 1.9502, 1.3449, 0.9324, 0.6250, 0.3687, 0.0292, 0.0]
    assert torch.allclose(s.sigmas, torch.tensor(expected), atol=1e-4)
    assert abs(float(s.init_noise_sigma) - 14.6146) < 1e-4
    assert type(s).__name__ == "EulerAncestralDiscreteScheduler"


def test_official_rng_order_restatement():
    posterior, mask, embeds = _inputs()
    s = 0.18215
    unet = FakeUNet()
    gen = torch.Generator().manual_seed(1234)
    out = denoise(unet, make_scheduler(CONFIG), posterior, mask, embeds, None, gen, 10)
    after = torch.randn(3, generator=gen)

    # independent restatement of ref §a.3 (init noise, posterior sample, Euler-a per step, discarded draw)
    ref_unet = FakeUNet()
    g = torch.Generator().manual_seed(1234)
    shape = posterior.mean.shape
    sched = make_scheduler(CONFIG)
    sched.set_timesteps(10)
    x = torch.randn(shape, generator=g) * sched.init_noise_sigma
    z = (posterior.mean + posterior.std * torch.randn(shape, generator=g)) * s
    for i, t in enumerate(sched.timesteps):
        si, sn = sched.sigmas[i], sched.sigmas[i + 1]
        x_in = x / ((si**2 + 1) ** 0.5)
        eps = ref_unet(torch.cat([x_in, mask, z], 1), t, encoder_hidden_states=embeds.expand(2, -1, -1))[0]
        x0 = x - si * eps
        sigma_up = (sn**2 * (si**2 - sn**2) / si**2) ** 0.5
        sigma_down = (sn**2 - sigma_up**2) ** 0.5
        x = x + (x - x0) / si * (sigma_down - si)
        x = x + torch.randn(shape, generator=g) * sigma_up
    torch.randn(shape, generator=g)  # discarded decode draw
    ref_after = torch.randn(3, generator=g)

    assert torch.equal(after, ref_after), "the generator must be left exactly where the official pipeline leaves it"
    torch.testing.assert_close(out, x, rtol=1e-5, atol=1e-5)
    assert len(unet.calls) == 10 and unet.calls[0][0] == (2, 9, 4, 6)


def test_tensor_z_comp_and_no_decode_draw():
    posterior, mask, embeds = _inputs()
    gen_a = torch.Generator().manual_seed(5)
    z = posterior.mean * 0.18215
    a = denoise(FakeUNet(), make_scheduler(CONFIG), z, mask, embeds, None, gen_a, 3, draw_decode_noise=False)
    gen_b = torch.Generator().manual_seed(5)
    b = denoise(FakeUNet(), make_scheduler(CONFIG), z, mask, embeds, None, gen_b, 3, draw_decode_noise=True)
    assert torch.equal(a, b)
    assert not torch.equal(torch.randn(2, generator=gen_a), torch.randn(2, generator=gen_b))


def test_determinism_and_seed_dependence():
    posterior, mask, embeds = _inputs()
    runs = [denoise(FakeUNet(), make_scheduler(CONFIG), posterior, mask, embeds, None,
                    torch.Generator().manual_seed(seed), 4) for seed in (7, 7, 8)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_controller_residuals_batched_equals_sequential():
    _, mask, embeds = _inputs()
    hint = torch.randn(2, 7, 32, 48)
    lm = mask
    sched = make_scheduler(CONFIG)
    sched.set_timesteps(10)
    ticks = []
    seq = controller_residuals(FakeController(), hint, lm, sched.timesteps, embeds, timestep_batch=1,
                               callback=lambda i, n: ticks.append((i, n)))
    bat = controller_residuals(FakeController(), hint, lm, sched.timesteps, embeds, timestep_batch=4)
    assert ticks == [(i, 10) for i in range(1, 11)]
    assert len(seq) == len(bat) == 10
    for (d1, m1), (d2, m2) in zip(seq, bat):
        assert len(d1) == 12 and all(torch.equal(a, b) for a, b in zip(d1, d2)) and torch.equal(m1, m2)
    off = controller_residuals(FakeController(), hint, lm, sched.timesteps[:2], embeds, timestep_batch=2,
                               store_device="cpu")
    assert off[0][1].device.type == "cpu"


def test_reference_mask_and_strength_reach_the_controller_in_batched_timesteps():
    """A batch-1 reference mask with batch-2 hints, sequential and timestep-batched (the batched path
    used to repeat the hint and mask but not the reference mask)."""
    _, mask, embeds = _inputs()
    hint = torch.randn(2, 7, 32, 48)
    ref = (torch.rand(1, 1, 4, 6) > 0.5).float()
    sched = make_scheduler(CONFIG)
    sched.set_timesteps(4)
    seq = controller_residuals(FakeController(), hint, mask, sched.timesteps, embeds, reference_mask=ref,
                               conditioning_scale=0.5)
    bat = controller_residuals(FakeController(), hint, mask, sched.timesteps, embeds, reference_mask=ref,
                               conditioning_scale=0.5, timestep_batch=3)
    plain = controller_residuals(FakeController(), hint, mask, sched.timesteps, embeds)
    for (d1, m1), (d2, m2), (d3, _) in zip(seq, bat, plain):
        assert all(torch.equal(a, b) for a, b in zip(d1, d2)) and torch.equal(m1, m2)
        assert not torch.equal(d1[0], d3[0])


def test_heun_progress_total_counts_every_model_evaluation():
    posterior, mask, embeds = _inputs()
    seen, previews = [], []
    sched = make_scheduler(CONFIG, "heun")
    denoise(FakeUNet(), sched, posterior, mask, embeds, None, None, 3, callback=lambda i, n: seen.append((i, n)),
            preview=lambda i, x0: previews.append((i, tuple(x0.shape))))
    assert seen == [(i, 5) for i in range(1, 6)]  # Heun: 2N - 1 evaluations
    assert [p[0] for p in previews] == [1, 2, 3, 4, 5] and previews[0][1] == (2, 4, 4, 6)


@pytest.mark.parametrize("name", ["euler_ancestral", "dpmpp_2m", "unipc", "ddim"])
def test_preview_is_a_clean_latent_estimate(name):
    posterior, mask, embeds = _inputs()
    xs = []
    denoise(FakeUNet(), make_scheduler(CONFIG, name), posterior, mask, embeds, None, torch.Generator().manual_seed(0),
            3, preview=lambda i, x0: xs.append(x0))
    assert len(xs) == 3 and all(torch.isfinite(x).all() and x.dtype == torch.float32 for x in xs)


def test_denoise_uses_residuals_per_step_and_checks_count():
    posterior, mask, embeds = _inputs()
    sched = make_scheduler(CONFIG)
    sched.set_timesteps(4)
    hint = torch.randn(2, 7, 32, 48)
    res = controller_residuals(FakeController(), hint, mask, sched.timesteps, embeds)
    unet = FakeUNet()
    with_c = denoise(unet, make_scheduler(CONFIG), posterior, mask, embeds, res, torch.Generator().manual_seed(0), 4)
    without = denoise(FakeUNet(), make_scheduler(CONFIG), posterior, mask, embeds, None, torch.Generator().manual_seed(0), 4)
    assert all(c[2] for c in unet.calls) and not torch.equal(with_c, without)
    lazy = denoise(FakeUNet(), make_scheduler(CONFIG), posterior, mask, embeds, lambda i, t: res[i],
                   torch.Generator().manual_seed(0), 4)
    assert torch.equal(lazy, with_c)
    freed = list(res)
    again = denoise(FakeUNet(), make_scheduler(CONFIG), posterior, mask, embeds, freed, torch.Generator().manual_seed(0), 4,
                    free_residuals=True)
    assert torch.equal(again, with_c) and freed == [None] * 4 and res[0] is not None
    with pytest.raises(R2RUserError, match="residuals for 4 timesteps"):
        denoise(FakeUNet(), make_scheduler(CONFIG), posterior, mask, embeds, res, None, 10)


def test_callback_progress_and_cancel():
    posterior, mask, embeds = _inputs()
    seen = []
    denoise(FakeUNet(), make_scheduler(CONFIG), posterior, mask, embeds, None, None, 5, callback=lambda i, n: seen.append((i, n)))
    assert seen == [(i, 5) for i in range(1, 6)]

    class Cancelled(Exception):
        pass

    def cancel(i, n):
        if i == 2:
            raise Cancelled

    unet = FakeUNet()
    with pytest.raises(Cancelled):
        denoise(unet, make_scheduler(CONFIG), posterior, mask, embeds, None, None, 5, callback=cancel)
    assert len(unet.calls) == 2


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_runs(name):
    posterior, mask, embeds = _inputs()
    out = denoise(FakeUNet(), make_scheduler(CONFIG, name), posterior, mask, embeds, None,
                  torch.Generator().manual_seed(0), 4)
    assert out.shape == posterior.mean.shape and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_bf16_model_keeps_fp32_latents():
    posterior, mask, embeds = _inputs()
    unet = FakeUNet().to(torch.bfloat16)
    out = denoise(unet, make_scheduler(CONFIG), posterior, mask, embeds, None, torch.Generator().manual_seed(0), 3)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_bad_arguments():
    posterior, mask, embeds = _inputs()
    with pytest.raises(R2RUserError, match="Unknown scheduler"):
        make_scheduler(CONFIG, "k_lms_magic")
    with pytest.raises(R2RUserError, match="num_inference_steps"):
        denoise(FakeUNet(), make_scheduler(CONFIG), posterior, mask, embeds, None, None, 0)
    with pytest.raises(R2RUserError, match="latent mask"):
        denoise(FakeUNet(), make_scheduler(CONFIG), posterior, mask[:, :, :2], embeds, None, None, 2)
