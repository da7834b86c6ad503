"""The official ``StableDiffusionHarmonyPipeline.__call__`` re-stated (ref §a.3): the oracle the pack's
stages are checked against (tests/test_pipeline.py) and benchmarked against (benchmarks/pipeline.py).

It is written independently of ``r2r.pipeline`` on purpose: its own scheduler, its own noise and
posterior draws in the official order (initial noise, the composite's posterior sample, one draw per
Euler-ancestral step; at decode the composite is encoded AGAIN and an unused posterior sample drawn),
the text encoder run on "" every call. Loading is separate (``load_official``), as the official
script loads once per process.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

SD = "stable-diffusion-inpainting"


def load_official(release, device="cpu", dtype=None):
    """The networks, tokenizer and scheduler of a release folder, as the official script loads them."""
    import torch
    from diffusers import EulerAncestralDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from r2r.models import ClearVAE, HarmonyController

    release = Path(release)
    sd = release / SD
    kw = {"torch_dtype": dtype or torch.float32}
    nets = {
        "tokenizer": CLIPTokenizer.from_pretrained(sd / "tokenizer"),
        "text_encoder": CLIPTextModel.from_pretrained(sd / "text_encoder", **kw).to(device).eval(),
        "unet": UNet2DConditionModel.from_pretrained(sd / "unet", **kw).to(device).eval(),
        "controller": HarmonyController.from_pretrained(sd / "controlnet", **kw).to(device).eval(),
        "vae": ClearVAE.from_pretrained(release / "clear_vae", **kw).to(device).eval(),
        "scheduler": EulerAncestralDiscreteScheduler.from_config(
            EulerAncestralDiscreteScheduler.load_config(sd / "scheduler")),
    }
    return nets


def run_official(nets, image_pm1, hint, mask, seed: int, steps: int, generator_device="cpu", clock=None):
    """One official call on prepared tensors (``image_pm1`` [B,3,H,W] in [-1,1], ``hint`` [B,7,H,W],
    ``mask`` [B,1,H,W] in {0,1}) -> ``(image [B,3,H,W] in [0,1], the generator after the call)``.

    ``generator_device``: where the seeded generator lives (the official script: the accelerator).
    ``clock``: an object with ``stage(name)`` context managers to time the phases (benchmarks)."""
    import torch
    import torch.nn.functional as F

    def stage(name):
        return clock.stage(name) if clock is not None else contextlib.nullcontext()

    tokenizer, text_encoder, unet = nets["tokenizer"], nets["text_encoder"], nets["unet"]
    controller, vae, scheduler = nets["controller"], nets["vae"], nets["scheduler"]
    device, dtype = unet.device, unet.dtype
    with torch.no_grad():
        gen = torch.Generator(device=generator_device).manual_seed(seed)
        with stage("text"):
            ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                            return_tensors="pt").input_ids.to(device)
            text = text_encoder(ids)[0].to(dtype)
        scheduler.set_timesteps(steps, device=device)
        image = image_pm1.to(device, dtype)
        b, _, h, w = image.shape
        s = vae.config.scaling_factor
        latents = torch.randn((b, 4, h // 8, w // 8), generator=gen, device=generator_device, dtype=dtype)
        latents = latents.to(device).float() * scheduler.init_noise_sigma
        with stage("encode"):
            z_comp = vae.encode(image).latent_dist.sample(generator=gen) * s
        latent_mask = F.interpolate(mask.to(device, dtype), size=(h // 8, w // 8))
        hint = hint.to(device, dtype)
        for t in scheduler.timesteps:
            x_in = scheduler.scale_model_input(latents, t).to(dtype)
            with stage("controller"):
                down, mid = controller(hint, t, text, latent_mask)
            with stage("unet"):
                eps = unet(torch.cat([x_in, latent_mask, z_comp], 1), t, encoder_hidden_states=text,
                           down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
            latents = scheduler.step(eps.float(), t, latents, generator=gen).prev_sample
        with stage("decode"):
            # decode_with_cond: encode the composite AGAIN for the skips, draw the unused posterior sample
            posterior, skips = vae.encode_with_skips(image)
            posterior.sample(generator=gen)
            out = vae.decode_with_skips(latents.to(dtype) / s, skips)
            del skips
    return (out.float() / 2 + 0.5).clamp(0, 1), gen
