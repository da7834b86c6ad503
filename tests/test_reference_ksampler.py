"""A reference photo on the KSampler path (R2R Conditioning + KSampler euler) gives R2R Sampler's euler picture
for the same reference (in-process ComfyUI sampling, --cpu), on the tiny release with MACA amplified
(tests/reference_release.py) so the reference visibly matters. Set up like tests/test_ksampler_path.py."""

from __future__ import annotations

import pytest
import torch
from comfy_pack import comfy_sampling_in_process, pack_module

comfy_nodes = comfy_sampling_in_process()  # ComfyUI's nodes.py (KSampler), ComfyUI first on sys.path, --cpu

pytestmark = [pytest.mark.comfyui, pytest.mark.usefixtures("comfy_host_mode")]

ksp = pack_module("nodes.ksampler_path")
host = pack_module("nodes._host")
flow = pack_module("nodes.flow")
STEPS, SEED, STRENGTH = 10, 1234, 0.9  # 10 steps: diffusers' linspace timesteps are integers (as KSampler's)


@pytest.fixture(scope="module")
def sockets(maca_release):
    """(R2R_MODEL, R2R_CLEAR_VAE, R2R_CONTROLLER) of the amplified release, float32."""
    release = maca_release
    types = pack_module("nodes._types")
    comps = pack_module("r2r.weights").load_components(release, torch_dtype=torch.float32, device="cpu")
    model = types.R2RModel(unet=host.ManagedModel(comps.unet.eval(), "unet"),
                           scheduler_config=comps.scheduler_config, prompt_embeds=comps.prompt_embeds,
                           source="tiny-amplified")
    return (model, host.ManagedModel(comps.clear_vae.eval(), "clear_vae"),
            host.ManagedModel(comps.controller.eval(), "controller"))


def _inputs():
    """IMAGE [1,H,W,3] + MASK [1,H,W] (the composite) and a warm photo of another size with its region."""
    h, w = 72, 136
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    image = torch.stack([0.3 + 0.4 * xx, 0.2 + 0.5 * yy, 0.6 - 0.3 * xx], -1)[None]
    mask = torch.zeros(1, h, w)
    mask[:, 18:54, 34:90] = 1
    image = torch.where(mask[..., None] > 0, image * torch.tensor([0.6, 0.9, 1.4]), image).clamp(0, 1)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 120), torch.linspace(0, 1, 200), indexing="ij")
    photo = torch.stack([0.9 * (0.7 + 0.3 * yy), 0.55 + 0.1 * xx, 0.3 + 0 * xx], -1)[None]
    region = torch.zeros(1, 120, 200)
    region[:, :, :120] = 1
    return image, mask, photo, region


def _ksampler(mdl, pos, neg, latent):
    (out,) = comfy_nodes.KSampler().sample(mdl, SEED, STEPS, 1.0, "euler", "normal", pos, neg, latent, 1.0)
    return out


def test_ksampler_path_equals_r2r_sampler_with_a_reference_photo(sockets):
    model, vae, ctrl = sockets
    image, mask, photo, region = _inputs()
    comp, m = flow.read_inputs(image, mask)
    latent = flow.encode(vae, comp, m, max_side=128)
    reference = flow.make_reference(None, photo, region, "test")
    exact = flow.sample(flow.attach_controller(model, ctrl, STRENGTH, reference), latent, SEED, STEPS, "euler")

    (mdl,) = ksp.R2RUNetToModel.execute(model).result
    pos, neg, lat = ksp.R2RConditioning.execute(model, latent, ctrl, STRENGTH, SEED, "sample", None, photo,
                                                region).result
    got = _ksampler(mdl, pos, neg, lat)
    scale = float(exact["samples"].abs().max())
    diff = float((got["samples"] - exact["samples"]).abs().max())
    print(f"KSampler euler vs R2R Sampler euler with a reference photo: max |diff| = {diff:.3g} (scale {scale:.3g})")
    assert diff <= 1e-4 * scale
    # the same picture after Clear-VAE Decode
    a, b = flow.decode(vae, got), flow.decode(vae, exact)
    assert float((a - b).abs().max()) <= 1e-4
    # the reference matters on this path too
    pos0, neg0, lat0 = ksp.R2RConditioning.execute(model, latent, ctrl, STRENGTH, SEED, "sample").result
    plain = _ksampler(mdl, pos0, neg0, lat0)
    assert float((plain["samples"] - got["samples"]).abs().max()) > 100 * diff


def test_conditioning_refuses_a_bad_reference_before_sampling(sockets):
    errors = pack_module("r2r.errors")
    model, vae, ctrl = sockets
    image, mask, photo, region = _inputs()
    comp, m = flow.read_inputs(image, mask)
    latent = flow.encode(vae, comp, m, max_side=128)
    with pytest.raises(errors.R2RUserError, match="at least 64x64"):
        ksp.R2RConditioning.execute(model, latent, ctrl, 1.0, 0, "sample", None, photo[:, :40])
    with pytest.raises(errors.R2RUserError, match="is empty"):
        ksp.R2RConditioning.execute(model, latent, ctrl, 1.0, 0, "sample", None, photo, torch.zeros_like(region))
    with pytest.raises(errors.R2RUserError, match="3 references for a LATENT of 1 image"):
        ksp.R2RConditioning.execute(model, latent, ctrl, 1.0, 0, "sample", None, photo.expand(3, -1, -1, -1))
