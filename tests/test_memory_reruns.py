"""A new seed pays only for what changed (issue 17): in the node graph a new seed runs the U-Net loop and the
decoder, never the Clear-VAE encoder or the Harmony Controller — for the four-node chain (ComfyUI keeps
Encode's and Controller Apply's outputs; the sampler and Decode reuse the residuals and the kept skips) and for
R2R Harmonize (its per-node memo). Counted by spying on the networks' own methods; the re-run's image equals a
fresh run's."""

from __future__ import annotations

import pytest
import torch
from comfy_pack import box_scene, load_pack, node_classes, pack_module
from comfy_pack import run_node as run

load_pack()
NODES = node_classes()
models = pack_module("r2r.models")


@pytest.fixture
def counts(monkeypatch):
    """Calls of the Clear-VAE encoder, the Harmony Controller and the U-Net, by network."""
    seen = {"encoder": 0, "controller": 0, "unet": 0}

    def spy(cls, name, key):
        real = getattr(cls, name)

        def wrapper(self, *a, **k):
            seen[key] += 1
            return real(self, *a, **k)
        monkeypatch.setattr(cls, name, wrapper)

    spy(models.ClearVAE, "encode_with_skips", "encoder")
    spy(models.HarmonyController, "forward", "controller")
    from diffusers import UNet2DConditionModel

    spy(UNet2DConditionModel, "forward", "unet")
    return seen


def test_chain_new_seed_runs_no_encoder_or_controller(loaded, counts):
    model, vae, ctrl = loaded
    image, mask = box_scene()
    (latent,) = run("R2RClearVAEEncode", vae, image, mask, 64, False, "fit")
    (cmodel,) = run("R2RMACAControllerApply", model, ctrl, 1.0)
    (s1,) = run("R2RSampler", cmodel, latent, 1, 3, "euler_ancestral")
    run("R2RClearVAEDecode", vae, s1, paste_back=True, feather=-1, fullres_mode="auto")
    first = dict(counts)
    assert first["encoder"] == 1 and first["controller"] == 3 and first["unet"] == 3
    # a new seed: ComfyUI re-runs only the sampler and Decode (their inputs changed)
    (s2,) = run("R2RSampler", cmodel, latent, 2, 3, "euler_ancestral")
    (out2,) = run("R2RClearVAEDecode", vae, s2, paste_back=True, feather=-1, fullres_mode="auto")
    assert counts == {"encoder": 1, "controller": 3, "unet": 6}, counts
    (fresh,) = run("R2RHarmonize", model, vae, ctrl, image, mask, seed=2, steps=3, max_side=64)
    assert torch.equal(out2, fresh)


def test_harmonize_node_new_seed_runs_no_encoder_or_controller(loaded, counts):
    model, vae, ctrl = loaded
    image, mask = box_scene(96, 128)  # another composite than the other test's (the node keeps its last one)
    run("R2RHarmonize", model, vae, ctrl, image, mask, seed=5, steps=2, max_side=64)
    assert counts["encoder"] == 1 and counts["controller"] == 2
    (again,) = run("R2RHarmonize", model, vae, ctrl, image, mask, seed=6, steps=2, max_side=64)
    assert counts["encoder"] == 1 and counts["controller"] == 2 and counts["unet"] == 4, counts
    (strength,) = run("R2RHarmonize", model, vae, ctrl, image, mask, seed=6, steps=2, max_side=64, strength=0.5)
    assert counts["encoder"] == 1 and counts["controller"] == 4, counts  # new strength: controller only
    assert not torch.equal(again, strength)
