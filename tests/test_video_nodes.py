"""Clips in the nodes (issue 20): R2R Example Clip; R2R Harmonize and R2R Color Match (weight-free) with
temporal modes give what r2r.video gives; the four-node chain's Sampler (shared noise) + Clear-VAE Decode
(smoothed / keyframes at restore); the clip inputs come last and are optional; bad clips are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from comfy_pack import load_pack, node_classes, pack_module
from comfy_pack import run_node as run

load_pack()
NODES = node_classes()
R2RUserError = pack_module("r2r.errors").R2RUserError
video = pack_module("r2r.video")
harmonize = pack_module("nodes.harmonize")


@pytest.fixture(scope="module")
def example():
    frames, masks, fps = run("R2RExampleClip", "drifting_astronaut")
    return frames, masks, fps


def test_example_clip(example):
    frames, masks, fps = example
    assert frames.shape == (24, 256, 256, 3) and frames.dtype == torch.float32 and 0 <= frames.min() <= frames.max() <= 1
    assert masks.shape == (24, 256, 256) and set(torch.unique(masks).tolist()) == {0.0, 1.0}
    assert fps == 12.0
    centres = [float(torch.nonzero(masks[i])[:, 1].float().mean()) for i in (0, 12, 23)]
    assert centres[0] < centres[1] < centres[2]  # the object moves left to right
    import os

    root = os.path.join(os.path.dirname(os.path.dirname(__file__)), "r2r", "assets", "clips")
    assert sum(os.path.getsize(os.path.join(root, f)) for f in os.listdir(root)) < 1_000_000


@pytest.mark.parametrize("node_id", ["R2RHarmonize", "R2RWeightFreeHarmonize"])
def test_clip_inputs_come_last_and_are_optional(node_id):
    info = NODES[node_id].GET_NODE_INFO_V1()
    assert info["input_order"]["optional"][-3:] == ["temporal", "keyframe_interval", "empty_frames"]
    assert info["input"]["optional"]["temporal"][1]["default"] == "independent"
    sampler = NODES["R2RSampler"].GET_NODE_INFO_V1()
    assert sampler["input_order"]["optional"][-1] == "temporal"
    decode = NODES["R2RClearVAEDecodeV2"].GET_NODE_INFO_V1()
    assert decode["input_order"]["optional"][-2:] == ["temporal", "keyframe_interval"]


def _small(example, n=8, size=96):
    frames, masks, _ = example
    f = torch.nn.functional.interpolate(frames[:n].permute(0, 3, 1, 2), size=(size, size), mode="area")
    m = torch.nn.functional.interpolate(masks[:n, None], size=(size, size), mode="nearest")[:, 0]
    return f.permute(0, 2, 3, 1).contiguous(), m


def test_weight_free_node_clip_modes_equal_the_library(example):
    frames, masks, _ = example
    for mode in ("smoothed", "keyframes"):
        (out,) = run("R2RWeightFreeHarmonize", frames, masks, 1.0, False, None, None, None, mode, 8, "skip")
        clip = video.Clip(video.ArrayFrames(frames.numpy()), video.ArrayMasks(masks.numpy()))
        ref = video.harmonize_frames(clip, video.StatisticsEngine(), temporal=mode)
        assert out.shape == frames.shape and np.array_equal(out.numpy(), ref)
    (same,) = run("R2RWeightFreeHarmonize", frames[:3], masks[:3], 1.0, False)
    (ind,) = run("R2RWeightFreeHarmonize", frames[:3], masks[:3], 1.0, False, None, None, None, "independent")
    assert torch.equal(same, ind)  # the default is the per-picture path of before


def test_empty_frames_and_bad_clips_in_the_nodes(example):
    frames, masks, _ = example
    holes = masks[:6].clone()
    holes[2] = 0
    (out,) = run("R2RWeightFreeHarmonize", frames[:6], holes, 1.0, False, None, None, None, "smoothed", 8, "skip")
    assert torch.equal(out[2], frames[2]) and not torch.equal(out[1], frames[1])
    with pytest.raises(R2RUserError, match="empty_frames"):
        run("R2RWeightFreeHarmonize", frames[:6], holes, 1.0, False, None, None, None, "smoothed", 8, "stop")
    with pytest.raises(R2RUserError, match="6 frames but 4 masks"):
        run("R2RWeightFreeHarmonize", frames[:6], masks[:4], 1.0, False, None, None, None, "keyframes")
    with pytest.raises(R2RUserError, match="keyframe_interval"):
        run("R2RWeightFreeHarmonize", frames[:6], masks[:6], 1.0, False, None, None, None, "keyframes", 0)
    (one_mask,) = run("R2RWeightFreeHarmonize", frames[:4], masks[:1], 1.0, False, None, None, None, "smoothed")
    assert one_mask.shape == (4, 256, 256, 3)


def _settings(**kw):
    base = dict(seed=3, steps=2, sampler="euler_ancestral", max_side=64, strength=1.0, invert_mask=False,
                paste_back=True, feather=-1, resize_mode="fit", fullres_mode="auto", noise_device="cpu")
    base.update(kw)
    return base


def harmonize_node(loaded, frames, masks, temporal, **kw):
    model, vae, ctrl = loaded
    s = _settings(**kw)
    return run("R2RHarmonize", model, vae, ctrl, frames, masks, s["seed"], s["steps"], s["sampler"], s["max_side"],
               s["strength"], False, True, -1, "fit", s["fullres_mode"], None, None, None, "cpu", "together", "none",
               2.0, temporal, 8, "skip")[0]


def test_harmonize_node_clip_modes_equal_the_library(loaded, example, tiny_components):
    frames, masks = _small(example, 10)
    pipe = pack_module("r2r.pipeline").R2RPipeline(tiny_components)
    for mode in ("shared_noise", "keyframes"):
        out = harmonize_node(loaded, frames, masks, mode)
        clip = video.Clip(video.ArrayFrames(frames.numpy()), video.ArrayMasks(masks.numpy()))
        engine = video.R2REngine(pipe, steps=2, seed=3, max_side=64)
        ref = video.harmonize_frames(clip, engine, temporal=mode)
        assert out.shape == (10, 96, 96, 3)
        assert np.allclose(out.numpy(), ref, atol=2e-3), (mode, np.abs(out.numpy() - ref).max())
    same = harmonize_node(loaded, frames[:1].repeat(3, 1, 1, 1), masks[:1], "shared_noise")
    assert torch.equal(same[0], same[1]) and torch.equal(same[0], same[2])


def test_harmonize_node_refuses_objects_with_a_clip_mode(loaded, example):
    frames, masks = _small(example, 3)
    model, vae, ctrl = loaded
    with pytest.raises(R2RUserError, match="objects 'together'"):
        run("R2RHarmonize", model, vae, ctrl, frames, masks, 0, 2, "euler_ancestral", 64, 1.0, False, True, -1, "fit",
            "auto", None, None, None, "cpu", "each", "none", 2.0, "smoothed", 8, "skip")


def test_four_node_chain_clip(loaded, example):
    frames, masks = _small(example, 6)
    model, vae, ctrl = loaded
    (latent,) = run("R2RClearVAEEncode", vae, frames, masks, 64, False, "fit")
    (controlled,) = run("R2RMACAControllerApplyV2", model, ctrl, 1.0)
    (shared,) = run("R2RSampler", controlled, latent, 5, 2, "euler_ancestral", "cpu", 1, "smoothed")
    (plain,) = run("R2RSampler", controlled, latent, 5, 2, "euler_ancestral", "cpu", 1, "independent")
    z = shared["samples"]
    assert not torch.equal(z[0], z[1])  # different frames, different latents ...
    (twice,) = run("R2RClearVAEEncode", vae, frames[:1].repeat(2, 1, 1, 1), masks[:1], 64, False, "fit")
    (same,) = run("R2RSampler", controlled, twice, 5, 2, "euler_ancestral", "cpu", 1, "shared_noise")
    assert torch.allclose(same["samples"][0], same["samples"][1], atol=1e-5)  # ... identical frames, the same
    (smoothed,) = run("R2RClearVAEDecodeV2", vae, shared, True, -1, "auto", "smoothed", 8)
    (each,) = run("R2RClearVAEDecodeV2", vae, plain, True, -1, "auto", "independent", 8)
    assert smoothed.shape == each.shape == (6, 96, 96, 3)
    bg = masks[0] < 0.5
    bg = bg & (torch.nn.functional.max_pool2d(masks[:1, None], 29, 1, 14)[0, 0] < 0.5)  # outside the feather
    assert torch.equal(smoothed[0][bg], frames[0][bg])
    with pytest.raises(R2RUserError, match="batch_size"):
        run("R2RSampler", controlled, latent, 5, 2, "euler_ancestral", "cpu", 2, "shared_noise")
    with pytest.raises(R2RUserError, match="paste_back"):
        run("R2RClearVAEDecodeV2", vae, shared, False, -1, "auto", "keyframes", 8)
