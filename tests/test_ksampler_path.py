"""The KSampler path inside ComfyUI's own sampling code (in-process, --cpu), on tiny random weights.

* KSampler (euler, normal) on "R2R Model for KSampler" + "R2R Conditioning" equals the exact R2R
  denoising loop (r2r.pipeline.sampling with diffusers' Euler) for the same seed and composite latent;
* the Harmony Controller's residuals land where diffusers adds them (checked through that equality,
  with strength, a reference mask, batch 2 and cond/uncond batching);
* every core sampler runs; SamplerCustomAdvanced and KSampler (Advanced) give KSampler's result;
* ComfyUI's own detection takes the official U-Net config as SD1.5 inpainting, with the same
  config as the one derived here.

The tiny release's U-Net is scaled down (32-64 channels, 8 norm groups), so it goes through the
scaled-down branch of nodes/comfy_unet.py; the official layout's detection is checked on the meta
device (no weights).
"""

from __future__ import annotations

import os

import pytest
import torch
from comfy_pack import comfy_sampling_in_process, pack_module

comfy_nodes = comfy_sampling_in_process()  # ComfyUI's nodes.py (KSampler), ComfyUI first on sys.path, --cpu
import comfy.samplers  # noqa: E402
import folder_paths  # noqa: E402, F401

pytestmark = [pytest.mark.comfyui, pytest.mark.usefixtures("comfy_host_mode")]

ksp = pack_module("nodes.ksampler_path")
comfy_unet = pack_module("nodes.comfy_unet")
harmony = pack_module("nodes.harmony_control")
host = pack_module("nodes._host")
imaging = pack_module("r2r.imaging")
sampling = pack_module("r2r.pipeline.sampling")
flow = pack_module("nodes.flow")
PreparedReference = pack_module("r2r.pipeline").PreparedReference
R2RUserError = pack_module("r2r.errors").R2RUserError


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def parts(tiny_release):
    """(unet, controller, prompt embeds, scheduler config) of the tiny release, float32."""
    weights = pack_module("r2r.weights")
    comps = weights.load_components(tiny_release, torch_dtype=torch.float32, device="cpu",
                                    components=("unet", "controller"))
    return comps.unet.eval(), comps.controller.eval(), comps.prompt_embeds, comps.scheduler_config


@pytest.fixture(scope="module")
def managed(parts):
    unet, controller, _, _ = parts
    return host.ManagedModel(unet, "unet"), host.ManagedModel(controller, "controller")


def _prepared(batch=1, h=96, w=128, seed=0, max_side=128):
    g = torch.Generator().manual_seed(seed)
    comp = torch.rand(batch, 3, h, w, generator=g)
    mask = torch.zeros(batch, 1, h, w)
    mask[:, :, h // 4: 3 * h // 4, w // 3: 2 * w // 3] = 1
    comp = torch.where(mask > 0, comp * torch.tensor([1.3, 0.7, 0.6]).view(1, 3, 1, 1), comp).clamp(0, 1)
    return imaging.prepare(comp, mask, max_side=max_side)


def _ref_latent(prepared):
    ref = torch.zeros_like(prepared.latent_mask)
    ref[..., :, : ref.shape[-1] // 3] = 1
    return ref


def _exact_r2r(parts, prepared, z_comp, seed, steps, strength, ref_lat, sampler="euler"):
    """The exact path: diffusers' scheduler, the controller's residuals, the U-Net (as R2R Sampler)."""
    unet, controller, embeds, sched_cfg = parts
    scheduler = sampling.make_scheduler(sched_cfg, sampler)
    timesteps = sampling.set_timesteps(scheduler, steps)
    residuals = sampling.controller_residuals(controller, prepared.hint, prepared.latent_mask, timesteps, embeds,
                                              conditioning_scale=strength, reference_mask=ref_lat)
    generator = torch.Generator("cpu").manual_seed(seed)
    return sampling.denoise(unet, scheduler, z_comp * 0.18215, prepared.latent_mask, embeds, residuals, generator,
                            steps)


def _control(parts, managed, prepared, ref_lat, strength):
    """The KSampler path's control object over the pipeline's residual stage (as R2R Conditioning makes it)."""
    _, _, embeds, sched_cfg = parts
    pipe = flow.pipeline(unet=managed[0], controller=managed[1], scheduler_config=sched_cfg, prompt_embeds=embeds,
                         in_sampler=True)
    reference = None if ref_lat is None else PreparedReference(ref_lat, None, "test-region")
    return harmony.control_class()(pipe, prepared, reference, strength)


def _conditioning(parts, managed, prepared, z_comp, strength, ref_lat):
    _, _, embeds, _ = parts
    control = _control(parts, managed, prepared, ref_lat, strength)
    pos = ksp.build_conditioning(embeds, z_comp, prepared.latent_mask, control)
    neg = ksp.build_conditioning(embeds, z_comp, prepared.latent_mask, control)
    return pos, neg


def _ksampler(model, pos, neg, shape, seed, steps, sampler="euler", scheduler="normal", cfg=1.0, latent=None):
    latent = {"samples": torch.zeros(shape)} if latent is None else latent
    (out,) = comfy_nodes.KSampler().sample(model, seed, steps, cfg, sampler, scheduler, pos, neg, latent, 1.0)
    return out


# ----------------------------------------------------------------------------- equality with the exact path


@pytest.mark.parametrize("batch,cfg,strength,use_ref", [(1, 1.0, 1.0, False), (2, 3.0, 0.7, True)])
def test_ksampler_euler_equals_r2r_euler(parts, managed, batch, cfg, strength, use_ref):
    prepared = _prepared(batch=batch, h=64, w=128)
    ref_lat = _ref_latent(prepared) if use_ref else None
    g = torch.Generator().manual_seed(3)
    z_comp = torch.randn(batch, 4, *prepared.latent_mask.shape[-2:], generator=g) * 2  # unscaled
    seed, steps = 42, 10  # 10 steps: diffusers' linspace timesteps 999, 888, ... are integers
    expected = _exact_r2r(parts, prepared, z_comp, seed, steps, strength, ref_lat)

    model = comfy_unet.comfy_model(managed[0])
    pos, neg = _conditioning(parts, managed, prepared, z_comp, strength, ref_lat)
    out = _ksampler(model, pos, neg, z_comp.shape, seed, steps, cfg=cfg)
    got = out["samples"] * 0.18215  # KSampler returns the unscaled latent
    assert got.shape == expected.shape
    scale = expected.abs().max()
    assert (got - expected).abs().max() <= 1e-4 * scale, float((got - expected).abs().max() / scale)
    assert not torch.equal(got[0], got[-1]) or batch == 1

    # the controller matters here (so the equality above checks the residual mapping)
    no_ctrl = _ksampler(model, ksp.build_conditioning(parts[2], z_comp, prepared.latent_mask),
                        ksp.build_conditioning(parts[2], z_comp, prepared.latent_mask), z_comp.shape, seed, steps)
    assert (no_ctrl["samples"] * 0.18215 - expected).abs().max() > 1e-2 * scale


def test_residual_order_matches_diffusers_unet(parts, managed):
    """One U-Net call: ComfyUI's model + the control dict == diffusers' U-Net + down/mid residuals."""
    unet, controller, embeds, _ = parts
    prepared = _prepared(h=64, w=128)
    model = comfy_unet.comfy_model(managed[0])
    control = _control(parts, managed, prepared, None, 1.0)
    ms = model.get_model_object("model_sampling")
    control.pre_run(model.model, lambda p: ms.percent_to_sigma(p))
    sigma = ms.sigmas[500:501].clone()
    x = torch.randn(1, 4, *prepared.latent_mask.shape[-2:], generator=torch.Generator().manual_seed(1))
    z = torch.randn_like(x)
    cond = {"c_crossattn": embeds}
    ctrl = control.get_control(x, sigma, cond, 1, {})
    assert len(ctrl["output"]) == 12 and len(ctrl["middle"]) == 1
    xin = x / (sigma ** 2 + 1) ** 0.5
    concat = torch.cat([prepared.latent_mask, z * 0.18215], 1)
    got = model.model.diffusion_model(torch.cat([xin, concat], 1), torch.tensor([500.0]), context=embeds,
                                      control=ctrl, transformer_options={})
    down, mid = controller(prepared.hint, torch.tensor([500.0]), embeds, prepared.latent_mask)
    expected = unet(torch.cat([xin, concat], 1), torch.tensor([500.0]), encoder_hidden_states=embeds,
                    down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()
    control.cleanup()


def test_control_is_loaded_and_counted_by_comfy(parts, managed):
    """ComfyUI's sampler collects the controller's ModelPatcher and its activation estimate from the
    conditioning (so it loads it with the U-Net and frees memory for it); copies keep the settings."""
    import comfy.sampler_helpers

    prepared = _prepared(h=64, w=128)
    pos, neg = _conditioning(parts, managed, prepared, torch.zeros(1, 4, 8, 16), 0.5, _ref_latent(prepared))
    conds = {"positive": comfy.sampler_helpers.convert_cond(pos), "negative": comfy.sampler_helpers.convert_cond(neg)}
    models, memory = comfy.sampler_helpers.get_additional_models(conds, torch.float16)
    assert managed[1].patcher() in models
    own = harmony.controller_memory_bytes(managed[1], 1, (8, 16), managed[1].dtype)
    assert memory == own > 0
    control = pos[0][1]["control"]
    twin = control.copy()
    assert (twin.r2r_strength, twin.managed, twin.reference, twin.cache) == (0.5, control.managed, control.reference,
                                                                              control.cache)
    assert twin.strength == 1.0  # ComfyUI's own scaling stays off: the residual stage applies the strength


def test_initial_noise_follows_diffusers_linspace(managed):
    model = comfy_unet.comfy_model(managed[0])
    ms = model.get_model_object("model_sampling")
    noise = torch.ones(1, 4, 2, 2)
    start = ms.noise_scaling(ms.sigma_max.view(1), noise, torch.zeros_like(noise), max_denoise=True)
    assert torch.allclose(start, noise * ms.sigma_max)  # diffusers: init_noise_sigma = sigma_max (linspace)
    partial = ms.noise_scaling(torch.tensor([2.0]), noise, torch.ones_like(noise))
    assert torch.allclose(partial, noise * 2 + 1)  # img2img unchanged


def test_model_is_cached_per_unet(managed):
    a = comfy_unet.comfy_model(managed[0])
    b = comfy_unet.comfy_model(managed[0])
    assert a is not b and a.model is b.model  # clones of one built model
    assert a.model.model_config.unet_config["in_channels"] == 9
    assert type(a.model.model_config).__name__ == "SD15"


# ----------------------------------------------------------------------------- every sampler runs

@pytest.fixture(scope="module")
def small_setup(parts, managed):
    prepared = _prepared(h=64, w=64, max_side=64)
    z = torch.randn(1, 4, *prepared.latent_mask.shape[-2:], generator=torch.Generator().manual_seed(0))
    model = comfy_unet.comfy_model(managed[0])
    pos, neg = _conditioning(parts, managed, prepared, z, 1.0, None)
    return model, pos, neg, z.shape


@pytest.mark.parametrize("sampler", comfy.samplers.KSampler.SAMPLERS)
def test_every_core_sampler_runs(small_setup, sampler):
    model, pos, neg, shape = small_setup
    out = _ksampler(model, pos, neg, shape, 1, 2, sampler=sampler, scheduler="karras")
    assert out["samples"].shape == shape and torch.isfinite(out["samples"]).all()


def test_sampler_custom_advanced_and_ksampler_advanced_equal_ksampler(small_setup):
    from comfy_extras import nodes_custom_sampler as ncs

    model, pos, neg, shape = small_setup
    (noise,) = ncs.RandomNoise().get_noise(7)
    (guider,) = ncs.BasicGuider().get_guider(model, pos)
    (sampler,) = ncs.KSamplerSelect().get_sampler("euler")
    (sigmas,) = ncs.BasicScheduler().get_sigmas(model, "normal", 4, 1.0)
    out, _denoised = ncs.SamplerCustomAdvanced().sample(noise, guider, sampler, sigmas, {"samples": torch.zeros(shape)})
    expected = _ksampler(model, pos, neg, shape, 7, 4)
    assert out["samples"].shape == shape
    assert torch.allclose(out["samples"], expected["samples"], rtol=1e-5, atol=1e-5 * expected["samples"].abs().max())
    (advanced,) = comfy_nodes.KSamplerAdvanced().sample(model, "enable", 7, 4, 1.0, "euler", "normal", pos, neg,
                                                         {"samples": torch.zeros(shape)}, 0, 10000, "disable")
    assert torch.allclose(advanced["samples"], expected["samples"], rtol=1e-5,
                          atol=1e-5 * expected["samples"].abs().max())


# ----------------------------------------------------------------------------- the official U-Net layout


def test_comfy_detects_official_unet_as_sd15_inpainting():
    import json

    import comfy.model_detection
    import comfy.utils
    from diffusers import UNet2DConditionModel

    path = os.path.join(pack_module("r2r").__path__[0], "configs", "official", "stable-diffusion-inpainting", "unet",
                        "config.json")
    with open(path) as f:
        cfg = json.load(f)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(cfg)
    sd = unet.state_dict()
    detected = comfy.model_detection.model_config_from_diffusers_unet(sd)
    assert type(detected).__name__ == "SD15" and detected.unet_config["in_channels"] == 9
    derived = comfy_unet.unet_config_from_diffusers(unet.config)
    ours = comfy.model_detection.convert_config(derived)
    assert {k: v for k, v in ours.items() if k != "dtype"} == {
        k: detected.unet_config[k] for k in ours if k != "dtype"}
    keys = comfy.utils.unet_to_diffusers(detected.unet_config)
    assert set(sd) <= set(keys)  # every diffusers weight has its place


def test_unsupported_layout_is_refused():
    from diffusers import UNet2DConditionModel
    from tiny import tiny_configs

    cfg = tiny_configs()["unet"]
    cfg.update(in_channels=4)  # a text-to-image U-Net, not R2R's inpainting layout
    unet = UNet2DConditionModel.from_config(cfg)
    with pytest.raises(R2RUserError, match="in_channels=4"):
        comfy_unet.comfy_model(host.ManagedModel(unet, "unet"))


# ----------------------------------------------------------------------------- the nodes, against R2R Sampler


@pytest.fixture(scope="module")
def r2r_socket_objects(parts, tiny_release):
    """(R2R_MODEL, R2R_CLEAR_VAE (fp32), R2R_CONTROLLER) as the loaders return them."""
    unet, controller, embeds, sched_cfg = parts
    types = pack_module("nodes._types")
    weights = pack_module("r2r.weights")
    vae = weights.load_components(tiny_release, torch_dtype=torch.float32, device="cpu",
                                  components=("clear_vae",)).clear_vae.eval()
    model = types.R2RModel(unet=host.ManagedModel(unet, "unet"), scheduler_config=sched_cfg, prompt_embeds=embeds,
                           source="tiny")
    return model, host.ManagedModel(vae, "clear_vae"), host.ManagedModel(controller, "controller")


def _scene_image(b=1, h=72, w=136):
    """IMAGE [B,H,W,3] and MASK [B,H,W] as ComfyUI passes them."""
    g = torch.Generator().manual_seed(11)
    img = torch.rand(b, h, w, 3, generator=g)
    mask = torch.zeros(b, h, w)
    mask[:, h // 4: 3 * h // 4, w // 4: w // 2] = 1
    return img, mask


def test_nodes_ksampler_equals_r2r_sampler_and_decodes(r2r_socket_objects):
    flow = pack_module("nodes.flow")
    model, vae, controller = r2r_socket_objects
    image, mask = _scene_image()
    comp, m = flow.read_inputs(image, mask)
    latent = flow.encode(vae, comp, m, max_side=128)
    ref = torch.zeros_like(mask)
    ref[:, :, -40:] = 1
    seed, steps, strength = 1234, 10, 0.8
    controlled = flow.attach_controller(model, controller, strength, flow.make_reference(ref))
    exact = flow.sample(controlled, latent, seed, steps, "euler")

    (mdl,) = ksp.R2RUNetToModel.execute(model).result
    pos, neg, lat = ksp.R2RConditioning.execute(model, latent, controller, strength, seed, "sample", ref).result
    assert torch.count_nonzero(lat["samples"]) == 0 and lat["r2r"].key == latent["r2r"].key
    out = _ksampler(mdl, pos, neg, None, seed, steps, latent=lat)
    scale = exact["samples"].abs().max()
    assert (out["samples"] - exact["samples"]).abs().max() <= 1e-4 * scale

    picture = flow.decode(vae, out)  # Clear-VAE Decode takes KSampler's LATENT
    assert picture.shape == image.shape and torch.isfinite(picture).all()
    assert torch.equal(picture[:, :4], image[:, :4])  # background (away from the feathered edge) pasted back
    assert not torch.allclose(picture[:, mask[0] > 0], image[:, mask[0] > 0], atol=1e-3)

    # the posterior mean instead of the sample: a different (deterministic) composite latent
    pos_m, _, _ = ksp.R2RConditioning.execute(model, latent, controller, strength, seed, "mean", ref).result
    mean = latent["r2r"].encoded.mean
    assert torch.equal(pos_m[0][1]["concat_latent_image"], mean)
    assert not torch.equal(pos[0][1]["concat_latent_image"], mean)


def test_a_new_seed_on_the_ksampler_path_runs_no_controller(r2r_socket_objects):
    """Issue 23: the control object memoises the controller's residuals by timestep for one R2R
    Conditioning output: a new seed (or another sampler on the same timesteps) runs no controller pass
    and gives what a fresh conditioning gives; a new strength is a new output with its own memo."""
    flow = pack_module("nodes.flow")
    model, vae, controller = r2r_socket_objects
    image, mask = _scene_image()
    comp, m = flow.read_inputs(image, mask)
    latent = flow.encode(vae, comp, m, max_side=64)
    calls = []
    hook = controller.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        (mdl,) = ksp.R2RUNetToModel.execute(model).result
        pos, neg, lat = ksp.R2RConditioning.execute(model, latent, controller, 0.8, 5, "sample").result
        first = _ksampler(mdl, pos, neg, None, 1, 4, latent=lat)
        assert len(calls) == 4  # one controller pass per step (euler, cfg 1)
        calls.clear()
        reseeded = _ksampler(mdl, pos, neg, None, 2, 4, latent=lat)
        other_sampler = _ksampler(mdl, pos, neg, None, 2, 4, sampler="euler_ancestral", latent=lat)
        assert calls == []  # served from the memo
        assert not torch.equal(reseeded["samples"], first["samples"])
        fresh_pos, fresh_neg, _ = ksp.R2RConditioning.execute(model, latent, controller, 0.8, 5, "sample").result
        fresh = _ksampler(mdl, fresh_pos, fresh_neg, None, 2, 4, latent=lat)
        assert len(calls) == 4  # a new conditioning output: its own memo
        assert torch.equal(fresh["samples"], reseeded["samples"])
        calls.clear()
        weaker, weaker_neg, _ = ksp.R2RConditioning.execute(model, latent, controller, 0.4, 5, "sample").result
        _ksampler(mdl, weaker, weaker_neg, None, 2, 4, latent=lat)
        assert len(calls) == 4  # a new strength is computed, not taken from another memo
        assert other_sampler["samples"].shape == first["samples"].shape
    finally:
        hook.remove()


def test_conditioning_without_controller_and_bad_inputs(r2r_socket_objects):
    flow = pack_module("nodes.flow")
    model, vae, controller = r2r_socket_objects
    image, mask = _scene_image()
    comp, m = flow.read_inputs(image, mask)
    latent = flow.encode(vae, comp, m, max_side=64)
    pos, neg, _ = ksp.R2RConditioning.execute(model, latent).result
    assert "control" not in pos[0][1] and pos[0][0].shape[1:] == (77, model.prompt_embeds.shape[-1])
    assert pos[0][1]["concat_mask"].shape[-2:] == latent["samples"].shape[-2:]

    with pytest.raises(R2RUserError, match="did not come from 'R2R Clear-VAE Encode'"):
        ksp.R2RConditioning.execute(model, {"samples": torch.zeros(1, 4, 8, 8)})
    with pytest.raises(R2RUserError, match="must be an R2R_MODEL"):
        ksp.R2RConditioning.execute(controller, latent)
    with pytest.raises(R2RUserError, match="must be an R2R_CONTROLLER"):
        ksp.R2RConditioning.execute(model, latent, model)
    with pytest.raises(R2RUserError, match="composite_latent"):
        ksp.R2RConditioning.execute(model, latent, controller, 1.0, 0, "median")
    with pytest.raises(R2RUserError, match="reference_mask is empty|empty at the latent"):
        ksp.R2RConditioning.execute(model, latent, controller, 1.0, 0, "sample", torch.zeros_like(mask))
    with pytest.raises(R2RUserError, match="must be an R2R_MODEL"):
        ksp.R2RUNetToModel.execute(None)

    # KSampler given another latent than R2R Conditioning's (here: of another size)
    pos, neg, lat = ksp.R2RConditioning.execute(model, latent, controller).result
    (mdl,) = ksp.R2RUNetToModel.execute(model).result
    with pytest.raises(R2RUserError, match="not the LATENT of R2R Conditioning"):
        _ksampler(mdl, pos, neg, (1, 4, 16, 16), 0, 1)
    with pytest.raises(R2RUserError, match="without latent upscaling"):  # the control's own check, without the wrapper
        _ksampler(comfy_unet.comfy_model(model.unet), pos, neg, (1, 4, 16, 16), 0, 1)


def test_registration_list():
    assert [c.define_schema().node_id for c in ksp.NODES] == ["R2RUNetToModel", "R2RConditioning"]
    for cls in ksp.NODES:
        schema = cls.define_schema()
        assert schema.description and schema.category.startswith("R2R")
        assert all(i.tooltip for i in schema.inputs) and all(o.tooltip for o in schema.outputs)


# ----------------------------------------------------------------------------- mixed-up graphs (issue "Hostile inputs, round 3")


def _two_composites(r2r_socket_objects, batch_b=1, size_b=None):
    flow = pack_module("nodes.flow")
    model, vae, controller = r2r_socket_objects
    image, mask = _scene_image()
    other = torch.flip(image, [2])
    if size_b is not None:
        other = torch.nn.functional.interpolate(other.permute(0, 3, 1, 2), size=size_b).permute(0, 2, 3, 1)
        mask_b = torch.nn.functional.interpolate(mask[:, None], size=size_b)[:, 0]
    else:
        mask_b = mask
    a = flow.encode(vae, *flow.read_inputs(image, mask), max_side=128)
    b = flow.encode(vae, *flow.read_inputs(other.repeat(batch_b, 1, 1, 1), mask_b), max_side=128)
    return a, b


@pytest.mark.parametrize("case", ["same_size", "other_size", "batch_2_vs_1"])
def test_conditioning_of_one_composite_with_the_latent_of_another_is_refused(r2r_socket_objects, case):
    """KSampler(positive/negative of composite B, latent_image of composite A): refused before sampling."""
    model, _, controller = r2r_socket_objects
    size_b = (64, 96) if case == "other_size" else None
    a, b = _two_composites(r2r_socket_objects, batch_b=2 if case == "batch_2_vs_1" else 1, size_b=size_b)
    (mdl,) = ksp.R2RUNetToModel.execute(model).result
    pos_b, neg_b, _ = ksp.R2RConditioning.execute(model, b, controller).result
    _, _, lat_a = ksp.R2RConditioning.execute(model, a, controller).result
    calls = []
    orig = harmony.control_class().get_control
    harmony.control_class().get_control = lambda self, *a, **k: calls.append(1) or orig(self, *a, **k)
    try:
        with pytest.raises(R2RUserError, match="made for another composite than its latent_image"):
            _ksampler(mdl, pos_b, neg_b, None, 0, 2, latent=lat_a)
    finally:
        harmony.control_class().get_control = orig
    assert calls == [], "refused before any step ran"
    # Encode's own LATENT (not R2R Conditioning's) as latent_image is refused too
    with pytest.raises(R2RUserError, match="not the LATENT of R2R Conditioning"):
        _ksampler(mdl, pos_b, neg_b, None, 0, 2, latent=b)


def test_ksampler_denoise_below_one_is_refused(r2r_socket_objects):
    model, _, controller = r2r_socket_objects
    a, _ = _two_composites(r2r_socket_objects)
    (mdl,) = ksp.R2RUNetToModel.execute(model).result
    pos, neg, lat = ksp.R2RConditioning.execute(model, a, controller).result
    with pytest.raises(R2RUserError, match="denoise to 1.0"):
        comfy_nodes.KSampler().sample(mdl, 0, 4, 1.0, "euler", "normal", pos, neg, lat, 0.6)
    with pytest.raises(R2RUserError, match="start_at_step 0"):
        comfy_nodes.KSamplerAdvanced().sample(mdl, "enable", 0, 4, 1.0, "euler", "normal", pos, neg, lat, 2, 10000,
                                              "disable")


def test_decode_refuses_ksampler_samples_of_another_composite(r2r_socket_objects):
    """KSampler's samples of composite B wrapped in composite A's LATENT state: Decode refuses them."""
    flow = pack_module("nodes.flow")
    model, vae, controller = r2r_socket_objects
    a, b = _two_composites(r2r_socket_objects)
    (mdl,) = ksp.R2RUNetToModel.execute(model).result
    pos, neg, lat_b = ksp.R2RConditioning.execute(model, b, controller).result
    out_b = _ksampler(mdl, pos, neg, None, 0, 2, latent=lat_b)
    with pytest.raises(R2RUserError, match="sampled for another composite"):
        flow.decode(vae, {"samples": out_b["samples"], "r2r": a["r2r"]})
    assert flow.decode(vae, out_b).shape[0] == 1  # its own state decodes
