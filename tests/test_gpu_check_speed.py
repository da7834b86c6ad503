"""The GPU speed options (r2r.pipeline.speed), checked on the CPU: diffusers runs PyTorch's SDPA attention in
every network; channels-last gives the same image; torch.compile wraps the U-Net only when asked; the FLOP
count per stage (meta device) has the known size of SD-1.5's U-Net and scales with the working size."""

from __future__ import annotations

import pytest
import torch

from r2r.errors import R2RUserError
from r2r.pipeline import R2RPipeline
from r2r.pipeline.speed import attention_processors, pipeline_flops, speed_options, stage_flops


def _scene(h=96, w=128):
    g = torch.Generator().manual_seed(0)
    comp = torch.rand(1, 3, h, w, generator=g)
    mask = torch.zeros(1, 1, h, w)
    mask[..., 20:70, 40:90] = 1
    return comp, mask


def test_diffusers_networks_use_sdpa(tiny_release):
    pipe = R2RPipeline.from_pretrained(tiny_release)
    assert attention_processors(pipe.components.unet) == {"AttnProcessor2_0"}
    assert attention_processors(pipe.components.controller) == {"AttnProcessor2_0"}
    assert attention_processors(pipe.components.clear_vae) <= {"AttnProcessor2_0"}


def test_channels_last_gives_the_same_image(tiny_release):
    comp, mask = _scene()
    plain = R2RPipeline.from_pretrained(tiny_release)(comp, mask, num_inference_steps=2, generator=3, max_side=128)
    pipe = R2RPipeline.from_pretrained(tiny_release)
    applied = speed_options(pipe.models, channels_last=True)
    assert set(applied) == {"unet", "controller", "clear_vae"} and all(a["channels_last"] for a in applied.values())
    assert pipe.components.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    fast = pipe(comp, mask, num_inference_steps=2, generator=3, max_side=128)
    assert (fast.images - plain.images).abs().max() < 1e-5


def test_compile_is_opt_in_and_checked(tiny_release):
    pipe = R2RPipeline.from_pretrained(tiny_release)
    unet = pipe.components.unet
    assert "compile" not in speed_options(pipe.models)["unet"] and pipe.components.unet is unet
    applied = speed_options(pipe.models, compile=True, compile_mode="reduce-overhead")
    assert applied["unet"]["compile"] == "reduce-overhead" and "compile" not in applied["controller"]
    assert pipe.components.unet is not unet and pipe.components.unet.config is unet.config  # a wrapper
    with pytest.raises(R2RUserError, match="compile_mode must be one of"):
        speed_options(pipe.models, compile=True, compile_mode="fast")
    with pytest.raises(R2RUserError, match="resident networks"):
        speed_options(object())


def test_flops_per_stage_on_the_meta_device():
    tiny = {"unet": None}  # official configs
    per = pipeline_flops((512, 512), steps=10, configs=tiny)
    assert 0.7e12 < per["unet_step"] < 0.9e12  # SD-1.5's U-Net: ~0.8 TFLOP per forward at 512²
    assert per["decode"] > per["encode"] > per["controller_step"] > 0
    assert per["total"] == per["encode"] + 10 * (per["controller_step"] + per["unet_step"]) + per["decode"]
    big = stage_flops((1024, 1024))
    assert 3.9 < big["encode"] / per["encode"] < 4.5  # convolutions scale with the pixels
    assert big["unet_step"] / per["unet_step"] > 4.5  # self-attention grows faster
