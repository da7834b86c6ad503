"""The KSampler path's MODEL costs what R2R Sampler costs (issue 23), in-process in ComfyUI (--cpu), tiny weights:

* its U-Net tensors share the R2R U-Net's storage (no second copy of the weights), and ComfyUI's weight
  patching (what LoRA loaders do) patches the MODEL without touching the R2R U-Net;
* where ComfyUI's attention for the device is its sub-quadratic / split attention (its CPU default), the
  MODEL runs ComfyUI's PyTorch SDPA attention through its own transformer_options (no global change), the
  same numbers within float rounding; an explicit --use-split/quad-cross-attention is kept.
"""

from __future__ import annotations

import pytest
import torch
from comfy_pack import comfy_sampling_in_process, pack_module

comfy_nodes = comfy_sampling_in_process()  # ComfyUI's nodes.py (KSampler), ComfyUI first on sys.path, --cpu
import comfy.cli_args  # noqa: E402
import comfy.ldm.modules.attention as comfy_attention  # noqa: E402

pytestmark = [pytest.mark.comfyui, pytest.mark.usefixtures("comfy_host_mode")]

comfy_unet = pack_module("nodes.comfy_unet")
host = pack_module("nodes._host")
ksp = pack_module("nodes.ksampler_path")


@pytest.fixture(scope="module")
def unet(tiny_release):
    weights = pack_module("r2r.weights")
    comps = weights.load_components(tiny_release, torch_dtype=torch.float32, device="cpu", components=("unet",))
    return host.ManagedModel(comps.unet.eval(), "unet"), comps.prompt_embeds


def _storage_ptrs(module) -> set:
    return {t.untyped_storage().data_ptr() for t in module.state_dict().values()}


def test_model_shares_the_unet_weights_and_patches_leave_them_alone(unet):
    managed, _ = unet
    patcher = comfy_unet.build_comfy_model(managed)
    diffusers_ptrs = _storage_ptrs(managed.model)
    comfy_sd = patcher.model.diffusion_model.state_dict()
    comfy_ptrs = {t.untyped_storage().data_ptr() for t in comfy_sd.values()}
    assert len(comfy_ptrs & diffusers_ptrs) == len(comfy_sd) == len(managed.model.state_dict())
    # a LoRA-style patch on the MODEL: applied to the MODEL only, and undone
    key = "diffusion_model.input_blocks.0.0.weight"
    before = managed.model.conv_in.weight.detach().clone()
    patcher.add_patches({key: (torch.ones_like(before),)}, strength_patch=0.5)
    patcher.patch_model()
    assert torch.allclose(patcher.model.diffusion_model.input_blocks[0][0].weight, before + 0.5)
    assert torch.equal(managed.model.conv_in.weight, before)
    patcher.unpatch_model()
    assert torch.equal(patcher.model.diffusion_model.input_blocks[0][0].weight, before)
    assert torch.equal(managed.model.conv_in.weight, before)


def test_attention_override_only_where_comfyui_picked_a_slow_one(unet, monkeypatch):
    managed, _ = unet
    current = comfy_attention.optimized_attention.__name__
    expected = "pytorch" if current in comfy_unet.SLOW_ATTENTION else None
    assert comfy_unet.attention_choice() == expected
    if current == "attention_sub_quad":  # --cpu: ComfyUI's CPU default
        patcher = comfy_unet.build_comfy_model(managed)
        assert "optimized_attention_override" in patcher.model_options["transformer_options"]
        assert "optimized_attention_override" in patcher.clone().model_options["transformer_options"]
    monkeypatch.setattr(comfy.cli_args.args, "use_split_cross_attention", True)
    assert comfy_unet.attention_choice() is None  # the user's explicit choice is kept
    monkeypatch.setattr(comfy.cli_args.args, "use_split_cross_attention", False)
    monkeypatch.setattr(comfy_attention, "optimized_attention", comfy_attention.get_attention_function("pytorch"))
    assert comfy_unet.attention_choice() is None  # ComfyUI already uses SDPA


def test_sdpa_model_gives_the_sub_quadratic_result(unet):
    if comfy_attention.optimized_attention.__name__ != "attention_sub_quad":
        pytest.skip("ComfyUI did not pick sub-quadratic attention here")
    managed, embeds = unet
    fast = comfy_unet.build_comfy_model(managed)
    slow = fast.clone()
    slow.model_options["transformer_options"] = {}
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, 12, 16, generator=g)
    mask = (torch.rand(1, 1, 12, 16, generator=g) > 0.5).float()
    cond = ksp.build_conditioning(embeds, z, mask)
    latent = {"samples": torch.zeros(1, 4, 12, 16)}
    calls = []
    real = comfy_attention.REGISTERED_ATTENTION_FUNCTIONS["pytorch"]

    def spy(*a, **k):
        calls.append(1)
        return real(*a, **k)

    override = fast.model_options["transformer_options"]["optimized_attention_override"]
    fast.model_options["transformer_options"]["optimized_attention_override"] = (
        lambda func, *a, **k: spy(*a, **k) if func.__name__ in comfy_unet.SLOW_ATTENTION else override(func, *a, **k))
    (a,) = comfy_nodes.KSampler().sample(fast, 3, 2, 1.0, "euler", "normal", cond, cond, latent, 1.0)
    (b,) = comfy_nodes.KSampler().sample(slow, 3, 2, 1.0, "euler", "normal", cond, cond, latent, 1.0)
    assert calls, "the MODEL did not use the PyTorch attention"
    assert torch.allclose(a["samples"], b["samples"], atol=1e-4, rtol=0)
