"""Weights are checked when they are loaded (issue 22): a tensor with NaN / infinite values, a tensor
stored as integers (or bools) where the network needs floats, and values too large for the dtype they are
loaded in are clear R2RUserErrors naming the file and the tensor -- never a black image with exit 0 or an
"unexpected RuntimeError". Checked through the Python API, ``python -m r2r harmonize`` (exit 2, no output)
and every file kind (diffusers safetensors streamed tensor by tensor, SD-format checkpoints, the text
encoder, the cached empty-prompt embedding).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from r2r.cli import main
from r2r.errors import R2RUserError
from r2r.weights import load_clear_vae, load_components, load_controller, load_unet, prompt

SD = "stable-diffusion-inpainting"
FILES = {"clear_vae": "clear_vae/diffusion_pytorch_model.safetensors",
         "controller": f"{SD}/controlnet/diffusion_pytorch_model.safetensors",
         "unet": f"{SD}/unet/diffusion_pytorch_model.safetensors",
         "text_encoder": f"{SD}/text_encoder/model.safetensors"}


def digest(folder: Path) -> dict:
    return {str(p): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.fixture()
def release(tiny_release, tmp_path):
    dst = tmp_path / "release"
    shutil.copytree(tiny_release, dst)
    return dst


def damage(file: Path, how: str) -> str:
    """Rewrite one floating-point tensor of ``file``; returns its name."""
    state = load_file(str(file))
    key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 4 and "weight" in k)
    t = state[key].clone()
    if how == "nan":
        t.view(-1)[3] = float("nan")
    elif how == "inf":
        t.view(-1)[0] = float("-inf")
    elif how == "int":
        t = (t * 100).round().to(torch.int32)
    elif how == "bool":
        t = t > 0
    elif how == "huge":
        t = t.float()
        t.view(-1)[1] = 1e6  # finite in fp32, infinite in fp16
    state[key] = t
    save_file(state, str(file))
    return key


LOADERS = {"clear_vae": load_clear_vae, "controller": load_controller, "unet": load_unet}


@pytest.mark.parametrize("kind", ["clear_vae", "controller", "unet"])
@pytest.mark.parametrize("how, words", [("nan", ["NaN or infinite value(s)", "black or garbage image",
                                                 "download it again"]),
                                        ("inf", ["NaN or infinite value(s)"]),
                                        ("int", ["is stored as int32", "needs floating-point weights"]),
                                        ("bool", ["is stored as bool", "needs floating-point weights"])])
def test_bad_tensor_in_a_component_names_file_and_tensor(release, kind, how, words):
    file = release / FILES[kind]
    key = damage(file, how)
    before = digest(release)
    folder = file.parent
    for call in (lambda: LOADERS[kind](folder, torch_dtype="fp32"),
                 lambda: load_components(release, torch_dtype="fp32", components=(kind,))):
        with pytest.raises(R2RUserError) as exc:
            call()
        text = str(exc.value)
        assert str(file) in text and key in text, text
        for w in words:
            assert w in text, (w, text)
    assert digest(release) == before


def test_values_too_large_for_fp16_are_named(release):
    file = release / FILES["controller"]
    key = damage(file, "huge")
    with pytest.raises(R2RUserError, match="too large for float16") as exc:
        load_controller(file.parent, torch_dtype="fp16")
    assert key in str(exc.value) and "fp32 or bf16" in str(exc.value)
    model = load_controller(file.parent, torch_dtype="fp32")  # fine in fp32
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_sd_format_checkpoint_with_nan(release, tmp_path):
    """An SD-format .ckpt (read whole, not streamed): the same check."""
    from r2r.weights import convert

    state = load_file(str(release / FILES["clear_vae"]))
    sd_state = convert.clear_vae_to_sd(state, prefix="first_stage_model.")
    name = next(k for k, v in sd_state.items() if v.is_floating_point() and v.numel() > 4)
    sd_state[name] = sd_state[name].clone()
    sd_state[name].view(-1)[0] = float("nan")
    ckpt = tmp_path / "clear_vae.ckpt"
    torch.save({"state_dict": sd_state}, ckpt)
    with pytest.raises(R2RUserError, match="NaN or infinite") as exc:
        load_clear_vae(ckpt, config=release / "clear_vae" / "config.json")
    assert str(ckpt) in str(exc.value)


def test_pytorch_checkpoint_with_integer_weights(release, tmp_path):
    state = {k: v.float() for k, v in load_file(str(release / FILES["clear_vae"])).items()}
    key = next(k for k, v in state.items() if v.numel() > 4 and "weight" in k)
    state[key] = state[key].round().to(torch.int64)
    ckpt = tmp_path / "vae.pt"
    torch.save(state, ckpt)
    with pytest.raises(R2RUserError, match="stored as int64") as exc:
        load_clear_vae(ckpt, config=release / "clear_vae" / "config.json")
    assert key in str(exc.value)


def test_text_encoder_with_nan_and_damaged_prompt_cache(release, tmp_path, monkeypatch):
    monkeypatch.setenv("R2R_CACHE_DIR", str(tmp_path / "cache"))
    cache = release / prompt.CACHE_NAME
    good = load_components(release, torch_dtype="fp32", components=()).prompt_embeds.clone()
    assert torch.isfinite(good).all()
    # a cache with NaN is r2r's own damaged file: recomputed from the text encoder (and rewritten)
    data = load_file(str(cache))
    bad = data["prompt_embeds"].clone()
    bad[0, 0, 0] = float("nan")
    from safetensors import safe_open

    with safe_open(str(cache), framework="pt") as f:
        meta = f.metadata()
    save_file({"prompt_embeds": bad}, str(cache), metadata=meta)
    again = load_components(release, torch_dtype="fp32", components=()).prompt_embeds
    assert torch.equal(again, good) and torch.isfinite(load_file(str(cache))["prompt_embeds"]).all()
    # the same cache given explicitly (a dict source): refused, naming the file and the tensor
    save_file({"prompt_embeds": bad}, str(tmp_path / "given.safetensors"), metadata=meta)
    with pytest.raises(R2RUserError, match="prompt_embeds") as exc:
        prompt.prompt_embeds_from_files(prompt_embeds=tmp_path / "given.safetensors")
    assert "NaN or infinite" in str(exc.value) and "given.safetensors" in str(exc.value)
    # a text encoder with NaN weights (no cache any more): refused, naming its file and tensor
    cache.unlink()
    te = release / FILES["text_encoder"]
    key = damage(te, "nan")
    with pytest.raises(R2RUserError, match="NaN or infinite") as exc:
        load_components(release, torch_dtype="fp32", components=())
    assert str(te) in str(exc.value) and key.removeprefix("text_model.") in str(exc.value)


def test_harmonize_cli_refuses_nan_weights_instead_of_a_black_image(release, tmp_path, capsys):
    key = damage(release / FILES["unet"], "nan")
    rng = np.random.default_rng(0)
    comp = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    cv2.imwrite(str(tmp_path / "c.png"), comp)
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    out = tmp_path / "out.png"
    rc = main(["harmonize", "--composite", str(tmp_path / "c.png"), "--mask", str(tmp_path / "m.png"), "--out",
               str(out), "--weights", str(release), "--steps", "1", "--max-side", "64", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and key in err and "NaN or infinite" in err and "Traceback" not in err, err
    assert not out.exists()
