"""What the node graph reuses between runs (issue "Performance where artists feel it"): a new seed skips
the controller (residuals memoised on MACA Controller Apply's output), Encode's output is reused, the
skips kept for Decode or recomputed by rule — and every reuse path gives the image of a fresh run."""

from __future__ import annotations

import pytest
import torch
from comfy_pack import box_scene, load_pack, node_classes, pack_module
from comfy_pack import run_node as run

load_pack()
NODES = node_classes()
host = pack_module("nodes._host")
flow = pack_module("nodes.flow")


def _count_controller_calls(ctrl, monkeypatch):
    calls = []
    module = ctrl.model
    orig = type(module).forward

    def spy(self, *a, **k):
        calls.append(1)
        return orig(self, *a, **k)

    monkeypatch.setattr(type(module), "forward", spy)
    return calls


def test_new_seed_reuses_the_residuals_and_matches_a_fresh_run(loaded, monkeypatch):
    model, vae, ctrl = loaded
    image, mask = box_scene()
    (latent,) = run("R2RClearVAEEncode", vae, image, mask, 64, False, "fit")
    (cmodel,) = run("R2RMACAControllerApply", model, ctrl, 1.0)
    calls = _count_controller_calls(ctrl, monkeypatch)
    (s1,) = run("R2RSampler", cmodel, latent, 1, 3, "euler_ancestral")
    assert len(calls) == 3
    (s2,) = run("R2RSampler", cmodel, latent, 2, 3, "euler_ancestral")  # new seed: no controller call
    assert len(calls) == 3
    (s3,) = run("R2RSampler", cmodel, latent, 1, 3, "euler_ancestral")  # same seed again: same latent
    assert torch.equal(s1["samples"], s3["samples"]) and not torch.equal(s1["samples"], s2["samples"])
    # a fresh Apply (new strength or a restarted graph) computes them again, and the result equals the memo's
    (fresh,) = run("R2RMACAControllerApply", model, ctrl, 1.0)
    (s4,) = run("R2RSampler", fresh, latent, 2, 3, "euler_ancestral")
    assert len(calls) == 6 and torch.equal(s4["samples"], s2["samples"])
    (s5,) = run("R2RSampler", cmodel, latent, 2, 4, "euler_ancestral")  # other steps: only the new timesteps
    assert len(calls) == 8 and s5["samples"].shape == s2["samples"].shape  # 999 and 0 are shared with 3 steps
    # progress counts only the work that runs: 4 denoising steps when the residuals are memoised
    totals = []
    orig = host.Progress.__init__
    monkeypatch.setattr(host.Progress, "__init__", lambda self, total, desc="R2R": totals.append(total) or
                        orig(self, total, desc))
    run("R2RSampler", cmodel, latent, 3, 4, "euler_ancestral")
    assert totals == [4]


@pytest.mark.parametrize("placement", ["host", "recompute"])
def test_skips_kept_or_recomputed_give_the_same_image(loaded, monkeypatch, placement):
    model, vae, ctrl = loaded
    image, mask = box_scene()
    monkeypatch.setenv("R2R_NODE_SKIPS", placement)
    (latent,) = run("R2RClearVAEEncode", vae, image, mask, 64, False, "fit")
    assert (latent["r2r"].encoded.skips is None) == (placement == "recompute")
    (cmodel,) = run("R2RMACAControllerApply", model, ctrl, 1.0)
    (sampled,) = run("R2RSampler", cmodel, latent, 4, 2, "euler_ancestral")
    (out,) = run("R2RClearVAEDecode", vae, sampled, paste_back=True, feather=-1, fullres_mode="auto")
    monkeypatch.setenv("R2R_NODE_SKIPS", "auto")
    (one,) = run("R2RHarmonize", model, vae, ctrl, image, mask, seed=4, steps=2, max_side=64)
    assert torch.equal(out, one)


def test_bad_skips_setting_is_explained(loaded, monkeypatch):
    _, vae, _ = loaded
    image, mask = box_scene()
    monkeypatch.setenv("R2R_NODE_SKIPS", "gpu")
    errors = pack_module("r2r.errors")
    with pytest.raises(errors.R2RUserError, match="R2R_NODE_SKIPS must be one of auto, host, recompute"):
        run("R2RClearVAEEncode", vae, image, mask, 64, False, "fit")


def test_batch_of_reference_masks_with_one_composite(loaded):
    """A batch-B reference mask with a batch-1 composite is broadcast once, in one place (the sampler)."""
    model, vae, ctrl = loaded
    image, mask = box_scene()
    refs = torch.zeros(2, *mask.shape[1:])
    refs[0, :, :30] = 1
    refs[1, :, 80:] = 1
    (latent,) = run("R2RClearVAEEncode", vae, image, mask, 64, False, "fit")
    (cmodel,) = run("R2RMACAControllerApply", model, ctrl, 1.0, reference_mask=refs)
    (sampled,) = run("R2RSampler", cmodel, latent, 0, 2, "euler_ancestral")
    assert sampled["samples"].shape[0] == 2
    (out,) = run("R2RClearVAEDecode", vae, sampled, paste_back=True, feather=-1, fullres_mode="auto")
    assert out.shape[0] == 2 and not torch.equal(out[0], out[1])
