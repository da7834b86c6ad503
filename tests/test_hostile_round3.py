"""Hostile inputs, round 3 (issue 18), outside the KSampler path (its cases are in tests/test_ksampler_path.py):
mixed-up LATENT states, latents no sampler makes, the wrong object in a socket or an API slot, meta tensors,
empty batches. Every case: a clear R2RUserError (or the documented warning), before any network runs."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch
from comfy_pack import load_pack, node_classes, pack_module
from comfy_pack import run_node as run

from r2r.errors import R2RUserError as CoreUserError
from r2r.pipeline import R2RPipeline

load_pack()
NODES = node_classes()
host = pack_module("nodes._host")
R2RUserError = pack_module("r2r.errors").R2RUserError  # the pack's own class (loaded as ComfyUI loads it)


def _scene(seed=0, h=64, w=96):
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(1, h, w, 3, generator=g) * 0.8 + 0.1
    mask = torch.zeros(1, h, w)
    mask[:, 16:48, 24:64] = 1
    return img, mask


@pytest.fixture(scope="module")
def two_sampled(loaded):
    model, vae, ctrl = loaded
    (cm,) = run("R2RMACAControllerApplyV2", model, ctrl, 1.0)
    out = []
    for seed in (0, 1):
        (lat,) = run("R2RClearVAEEncode", vae, *_scene(seed), 64, False, "fit")
        (s,) = run("R2RSampler", cm, lat, 3, 1, "euler_ancestral")
        out.append((lat, s))
    return out


def test_samples_of_one_composite_with_the_state_of_another_are_refused(loaded, two_sampled):
    _, vae, _ = loaded
    (_, sampled_a), (_, sampled_b) = two_sampled
    mixed = {"samples": sampled_b["samples"], "r2r": sampled_a["r2r"]}
    with pytest.raises(R2RUserError, match="sampled for another composite"):
        run("R2RClearVAEDecodeV2", vae, mixed, True, -1, "auto")


def test_latents_no_sampler_makes(loaded, two_sampled, caplog, monkeypatch):
    _, vae, _ = loaded
    (encoded, sampled), _ = two_sampled
    shown = []
    monkeypatch.setattr(host, "show_text", lambda text, node_id=None: shown.append(text))
    with pytest.raises(R2RUserError, match="NaN/Inf"):
        bad = sampled["samples"].clone()
        bad[0, 0, 0, 0] = float("nan")
        run("R2RClearVAEDecodeV2", vae, {"samples": bad, "r2r": sampled["r2r"]}, True, -1, "auto")
    with caplog.at_level(logging.WARNING, logger="r2r.nodes"):
        (img,) = run("R2RClearVAEDecodeV2", vae, {"samples": sampled["samples"] * 50, "r2r": sampled["r2r"]}, True,
                     -1, "auto")
    assert torch.isfinite(img).all()
    assert any("far outside what a sampler produces" in t for t in shown)
    assert any("far outside" in r.getMessage() for r in caplog.records)
    shown.clear()
    run("R2RClearVAEDecodeV2", vae, encoded, True, -1, "auto")  # Encode's LATENT decoded directly: a warning
    assert any("not harmonized" in t for t in shown)
    shown.clear()
    run("R2RClearVAEDecodeV2", vae, sampled, True, -1, "auto")  # a normal run: no warning
    assert shown == []


@pytest.mark.parametrize("node_id,slot", [
    ("R2RClearVAEEncode", "clear_vae"), ("R2RMACAControllerApplyV2", "model"), ("R2RMACAControllerApplyV2", "controller"),
    ("R2RSampler", "model"), ("R2RClearVAEDecodeV2", "clear_vae"), ("R2RHarmonize", "clear_vae"),
    ("R2RHarmonize", "controller")])  # R2R Model for KSampler / R2R Conditioning: tests/test_ksampler_path.py
@pytest.mark.parametrize("wrong", ["controller", "vae", "none"])
def test_the_wrong_object_in_a_socket_is_named(loaded, two_sampled, node_id, slot, wrong):
    model, vae, ctrl = loaded
    (latent, _), _ = two_sampled
    img, mask = _scene()
    obj = {"controller": ctrl, "vae": vae, "none": None}[wrong]
    right = {"model": model, "clear_vae": vae, "controller": ctrl}[slot]
    if obj is right:
        pytest.skip("that is the right object")
    kw = {"model": model, "clear_vae": vae, "controller": ctrl, slot: obj}
    calls = {
        "R2RClearVAEEncode": lambda: run(node_id, kw["clear_vae"], img, mask, 64, False, "fit"),
        "R2RMACAControllerApplyV2": lambda: run(node_id, kw["model"], kw["controller"], 1.0),
        "R2RSampler": lambda: run(node_id, kw["model"], latent, 0, 1, "euler_ancestral"),
        "R2RClearVAEDecodeV2": lambda: run(node_id, kw["clear_vae"], latent, True, -1, "auto"),
        "R2RHarmonize": lambda: run(node_id, kw["model"], kw["clear_vae"], kw["controller"], img, mask, steps=1,
                                    max_side=64),
    }
    with pytest.raises(R2RUserError, match=f"'{slot}' must be an R2R_") as exc:
        calls[node_id]()
    described = {"controller": "Harmony Controller", "vae": "Clear-VAE", "none": "nothing connected"}[wrong]
    assert described in str(exc.value)


def test_meta_and_empty_tensors_into_the_nodes(loaded):
    _, vae, _ = loaded
    img, mask = _scene()
    with pytest.raises(R2RUserError, match="'meta' device"):
        run("R2RClearVAEEncode", vae, img.to("meta"), mask, 64, False, "fit")
    with pytest.raises(R2RUserError, match="'meta' device"):
        run("R2RClearVAEEncode", vae, img, mask.to("meta"), 64, False, "fit")
    with pytest.raises(R2RUserError, match="empty"):
        run("R2RClearVAEEncode", vae, img[:0], mask[:0], 64, False, "fit")


def test_python_api_refuses_empty_meta_and_swapped_networks(tiny_components):
    pipe = R2RPipeline(tiny_components)
    comp = torch.rand(1, 3, 64, 64)
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1
    for c, m, words in ((comp[:0], mask[:0], "empty"), (comp.to("meta"), mask, "'meta' device"),
                        (comp, mask.to("meta"), "'meta' device"),
                        (np.zeros((0, 64, 3), np.uint8), np.zeros((0, 64), np.uint8), "empty")):
        with pytest.raises(CoreUserError, match=words):
            pipe(c, m, num_inference_steps=1, max_side=64)
    swapped = dataclasses.replace(tiny_components, clear_vae=tiny_components.controller)
    with pytest.raises(CoreUserError, match="components.clear_vae must be the Clear-VAE.*got the Harmony Controller"):
        R2RPipeline(swapped)
    with pytest.raises(CoreUserError, match="needs the clear_vae loaded"):
        R2RPipeline(dataclasses.replace(tiny_components, clear_vae=None))
    with pytest.raises(CoreUserError, match="R2RComponents"):
        R2RPipeline(object())
