"""r2r.weights.convert: the SD <-> diffusers key rules against the official converters' key maps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from r2r.weights import convert

MANIFESTS = Path(__file__).resolve().parent / "data" / "manifests"


def _json(name):
    return json.loads((MANIFESTS / name).read_text())


def _up_attention_levels(keys):
    return {int(k.split(".")[1]) for k in keys if k.startswith("up_blocks.") and ".attentions." in k}


@pytest.mark.parametrize("name", ["clear_vae", "unet", "controlnet"])
def test_rules_reproduce_the_official_key_maps(name):
    key_map = _json(f"{name}.key_map.json")
    diff_keys = [d for d, _, _ in key_map]
    levels = _up_attention_levels(diff_keys)
    fwd = {
        "clear_vae": convert.vae_key_to_diffusers,
        "unet": convert.unet_key_to_diffusers,
        "controlnet": convert.controller_key_to_diffusers,
    }[name]
    inv = {
        "clear_vae": convert.vae_key_to_sd,
        "unet": lambda k: convert.unet_key_to_sd(k, 2, levels),
        "controlnet": convert.controller_key_to_sd,
    }[name]
    for d, s, _note in key_map:
        assert fwd(s) == d, s
        assert inv(d) == s, d
    # the maps cover every tensor of both layouts
    assert sorted(s for _, s, _ in key_map) == sorted(k for k, _, _ in _json(f"{name}.sd_format.keys.json"))
    assert sorted(diff_keys) == sorted(k for k, _, _ in _json(f"{name}.keys.json"))


@pytest.mark.parametrize("name", ["clear_vae", "unet", "controlnet"])
def test_converted_official_sd_shapes_equal_the_diffusers_manifest(name):
    sd = {k: torch.empty(s, dtype=getattr(torch, d), device="meta") for k, s, d in _json(f"{name}.sd_format.keys.json")}
    if name == "clear_vae":
        out, unmatched = convert.clear_vae_to_diffusers(sd)
    elif name == "unet":
        out, unmatched = convert.unet_to_diffusers(sd, prefix="")
    else:
        out, unmatched = convert.controller_to_diffusers(sd, prefix="")
    assert unmatched == []
    manifest = {k: (s, d) for k, s, d in _json(f"{name}.keys.json")}
    assert {k: (list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in out.items()} == {
        k: (s, d) for k, (s, d) in manifest.items()
    }
    reshaped = [d for d, _, note in _json(f"{name}.key_map.json") if note == "reshape"]
    assert len(reshaped) == (8 if name == "clear_vae" else 0)


@pytest.mark.parametrize("prefix", ["", "first_stage_model.", "model."])
def test_clear_vae_round_trip_all_prefix_layouts(tiny_components, prefix):
    sd = tiny_components.clear_vae.state_dict()
    sd_format = convert.clear_vae_to_sd(sd, prefix=prefix)
    assert convert.detect_vae_prefix(sd_format) == prefix
    assert f"{prefix}decoder.up.3.block.0.lora.conv.weight" in sd_format
    assert sd_format[f"{prefix}encoder.mid.attn_1.q.weight"].ndim == 4
    extra = {"cr_loss.vgg.0.weight": torch.zeros(1)} if prefix == "model." else {}
    back, unmatched = convert.clear_vae_to_diffusers({**sd_format, **extra})
    assert unmatched == []
    assert back.keys() == sd.keys()
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_unet_and_controller_round_trip(tiny_components):
    for model, to_sd, to_diff, prefix in (
        (tiny_components.unet, convert.unet_to_sd, convert.unet_to_diffusers, convert.UNET_PREFIX),
        (tiny_components.controller, convert.controller_to_sd, convert.controller_to_diffusers, convert.CONTROLLER_PREFIX),
    ):
        sd = model.state_dict()
        ldm = to_sd(sd)
        assert all(k.startswith(prefix) for k in ldm)
        back, unmatched = to_diff({**ldm, "cond_stage_model.transformer.x": torch.zeros(1)})
        assert unmatched == []
        assert back.keys() == sd.keys() and all(back[k] is sd[k] for k in sd)


def test_unknown_keys_are_reported_not_dropped():
    out, unmatched = convert.clear_vae_to_diffusers({"encoder.down.0.block.0.norm1.weight": torch.zeros(2),
                                                     "encoder.bogus.weight": torch.zeros(1)})
    assert unmatched == ["encoder.bogus.weight"]
    assert convert.unet_key_to_diffusers("input_blocks.1.0.weird.weight") is None
    assert convert.controller_key_to_diffusers("input_hint_block.1.weight") is None  # SiLU slots hold no weights
    with pytest.raises(KeyError):
        convert.unet_to_sd({"nonsense.weight": torch.zeros(1)})


def test_text_encoder_keys_and_descriptions():
    sd = {
        "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(3),
        "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.ones(2),
        "model.diffusion_model.out.0.weight": torch.ones(2),
    }
    assert list(convert.text_encoder_sd_to_transformers(sd)) == ["text_model.final_layer_norm.weight"]
    text = convert.describe_sd_keys(sd)
    assert "U-Net (model.diffusion_model.*): 1 tensors" in text and "CLIP text encoder" in text
    assert "WITHOUT the Clear-VAE" in convert.describe_sd_keys(["encoder.conv_in.weight", "decoder.conv_in.weight"])
    assert "a ControlNet" in convert.describe_sd_keys(["down_blocks.0.x", "controlnet_cond_embedding.conv_in.weight"])
