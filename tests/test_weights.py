"""r2r.weights / r2r.weights.prompt / python -m r2r download: every loading path and every error path (offline)."""

from __future__ import annotations

import fnmatch
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from r2r import weights
from r2r.errors import R2RUserError, R2RWeightsNotFound
from r2r.models import ClearVAE, HarmonyController
from r2r.weights import convert, prompt

SD = "stable-diffusion-inpainting"


def _state_equal(model, reference: dict, dtype=torch.float32):
    sd = model.state_dict()
    assert sd.keys() == reference.keys()
    for k, v in reference.items():
        assert torch.equal(sd[k], v.to(dtype)), k


def _cfg(release: Path, rel: str) -> dict:
    return json.loads((release / rel / "config.json").read_text())


@pytest.fixture
def release_copy(tiny_release, tmp_path):
    """A private copy of the tiny release (tests may break it)."""
    dst = tmp_path / "release"
    shutil.copytree(tiny_release, dst, ignore=shutil.ignore_patterns(prompt.CACHE_NAME))
    return dst


# ---------------------------------------------------------------------------- folder
def test_load_components_from_release_folder(tiny_release, tiny_components):
    c = tiny_components
    assert isinstance(c.clear_vae, ClearVAE) and isinstance(c.controller, HarmonyController)
    assert type(c.unet).__name__ == "UNet2DConditionModel" and c.unet.config.in_channels == 9
    for m in (c.unet, c.controller, c.clear_vae):
        assert {p.dtype for p in m.state_dict().values()} == {torch.float32}  # fp16 filter kernels cast too
        assert not m.training
    assert tuple(c.prompt_embeds.shape) == (1, 77, 32) and c.prompt_embeds.dtype == torch.float32
    assert c.scheduler_config["_class_name"] == "DDIMScheduler"
    assert c.source == str(tiny_release)
    # the weights are the file's (the release stores the Clear-VAE in float16, like the official one)
    _state_equal(c.clear_vae, load_file(tiny_release / "clear_vae" / "diffusion_pytorch_model.safetensors"))
    _state_equal(c.controller, load_file(tiny_release / SD / "controlnet" / "diffusion_pytorch_model.safetensors"))
    assert not c.clear_vae.filters[0].Sobel_x.requires_grad


def test_empty_prompt_is_cached_and_text_encoder_not_loaded_again(tiny_release, tiny_components, monkeypatch):
    cache = tiny_release / prompt.CACHE_NAME
    assert cache.is_file()
    # equals a fresh computation with the tokenizer padded to 77 and last_hidden_state
    from transformers import CLIPTextModel, CLIPTokenizer

    te = CLIPTextModel.from_pretrained(tiny_release / SD / "text_encoder").eval()
    tok = CLIPTokenizer.from_pretrained(tiny_release / SD / "tokenizer")
    ids = tok([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        ref = te(ids).last_hidden_state
    torch.testing.assert_close(tiny_components.prompt_embeds, ref)

    def boom(*a, **k):
        raise AssertionError("text encoder loaded although the prompt is cached")

    monkeypatch.setattr(prompt, "load_text_encoder", boom)
    c = weights.load_components(tiny_release, components=("clear_vae",))
    assert c.unet is None and c.controller is None
    torch.testing.assert_close(c.prompt_embeds, ref)
    # a custom prompt still works (loads the encoder)
    monkeypatch.undo()
    emb = prompt.encode_prompt(tiny_release, "a photo")
    assert emb.shape == (1, 77, 32) and not torch.allclose(emb, ref)


def _make_read_only(folder: Path, monkeypatch) -> None:
    """chmod 0o555; as root (where chmod does not stop writes) the cache writer refuses the folder too."""
    import os

    folder.chmod(0o555)
    if os.geteuid() == 0:
        real = prompt.atomic_write_bytes

        def refuse(path, data, **kw):
            if Path(path).parent == folder:
                raise PermissionError(13, "Permission denied", str(path))
            return real(path, data, **kw)

        monkeypatch.setattr(prompt, "atomic_write_bytes", refuse)


def test_prompt_cache_falls_back_to_user_cache_when_release_is_read_only(release_copy, tmp_path, monkeypatch):
    monkeypatch.setenv("R2R_CACHE_DIR", str(tmp_path / "usercache"))
    _make_read_only(release_copy, monkeypatch)
    try:
        c = weights.load_components(release_copy, components=("controller",))
        assert not (release_copy / prompt.CACHE_NAME).exists()
        cached = list((tmp_path / "usercache").glob("*.safetensors"))
        assert len(cached) == 1
        # then the text encoder may disappear
        release_copy.chmod(0o755)
        shutil.rmtree(release_copy / SD / "text_encoder")
        c2 = weights.load_components(release_copy, components=("controller",))
        torch.testing.assert_close(c.prompt_embeds, c2.prompt_embeds)
    finally:
        release_copy.chmod(0o755)


def test_prompt_cache_nowhere_writable_still_loads_with_a_warning(release_copy, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("R2R_CACHE_DIR", str(blocker / "r2r"))
    _make_read_only(release_copy, monkeypatch)
    try:
        with pytest.warns(RuntimeWarning, match="R2R_CACHE_DIR"):
            c = weights.load_components(release_copy, components=("clear_vae",))
    finally:
        release_copy.chmod(0o755)
    assert c.prompt_embeds.shape == (1, 77, 32)
    assert not (release_copy / prompt.CACHE_NAME).exists() and blocker.read_text().startswith("a file")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_one_dtype_after_loading(tiny_release, dtype):
    vae = weights.load_clear_vae(tiny_release / "clear_vae", torch_dtype=dtype)
    assert {t.dtype for t in vae.state_dict().values()} == {dtype}
    with torch.no_grad():
        post, skips = vae.encode_with_skips(torch.zeros(1, 3, 64, 64, dtype=dtype))
        assert vae.decode_with_skips(post.mode(), skips).dtype == dtype


def test_release_given_as_the_sd_folder(tiny_release):
    c = weights.load_components(tiny_release / SD, components=("clear_vae",))  # clear_vae/ found beside it
    assert isinstance(c.clear_vae, ClearVAE)


# ---------------------------------------------------------------------------- single files
def test_single_safetensors_files(tiny_release, tiny_components, tmp_path):
    files = {}
    for kind, rel in (("unet", f"{SD}/unet"), ("controller", f"{SD}/controlnet"), ("clear_vae", "clear_vae")):
        dst = tmp_path / f"{kind}.safetensors"  # no config.json beside it -> config given explicitly
        shutil.copyfile(tiny_release / rel / "diffusion_pytorch_model.safetensors", dst)
        files[kind] = dst
        files[f"{kind}_config"] = _cfg(tiny_release, rel)
    c = weights.load_components(
        {**files, "text_encoder": tiny_release / SD / "text_encoder", "tokenizer": tiny_release / SD / "tokenizer"}
    )
    _state_equal(c.unet, tiny_components.unet.state_dict())
    torch.testing.assert_close(c.prompt_embeds, tiny_components.prompt_embeds)
    # the cached embedding can replace the text encoder
    c2 = weights.load_components(
        {"clear_vae": files["clear_vae"], "clear_vae_config": files["clear_vae_config"],
         "prompt_embeds": tiny_release / prompt.CACHE_NAME},
        components=("clear_vae",),
    )
    torch.testing.assert_close(c2.prompt_embeds, tiny_components.prompt_embeds)
    # a config.json next to the file is used when it fits
    d = tmp_path / "vae_dir"
    d.mkdir()
    shutil.copyfile(files["clear_vae"], d / "clear_vae.safetensors")
    shutil.copyfile(tiny_release / "clear_vae" / "config.json", d / "config.json")
    _state_equal(weights.load_clear_vae(d / "clear_vae.safetensors"), tiny_components.clear_vae.state_dict())


@pytest.mark.parametrize("prefix", ["", "first_stage_model.", "model."])
def test_clear_vae_ckpt_in_all_three_layouts(tiny_release, tiny_components, tmp_path, prefix):
    ref = tiny_components.clear_vae.state_dict()
    sd = convert.clear_vae_to_sd(ref, prefix=prefix)
    if prefix == "model.":  # a Lightning checkpoint: wrapped, with the CR-loss VGG weights beside the model
        obj = {"state_dict": {**sd, "cr_loss.vgg.features.0.weight": torch.zeros(4, 3, 3, 3)}, "epoch": 4}
    elif prefix == "first_stage_model.":  # a full SD checkpoint: other networks too
        obj = {**sd, "model.diffusion_model.out.0.weight": torch.zeros(4), "cond_stage_model.x": torch.zeros(1)}
    else:
        obj = sd
    path = tmp_path / "clear_vae.ckpt"
    torch.save(obj, path)
    vae = weights.load_clear_vae(path, config=_cfg(tiny_release, "clear_vae"))
    _state_equal(vae, ref)
    with torch.no_grad():
        x = torch.rand(1, 3, 64, 64) * 2 - 1
        p1, s1 = vae.encode_with_skips(x)
        p2, s2 = tiny_components.clear_vae.encode_with_skips(x)
        torch.testing.assert_close(vae.decode_with_skips(p1.mean, s1), tiny_components.clear_vae.decode_with_skips(p2.mean, s2))


def test_controlldm_checkpoint(tiny_release, tiny_components, tmp_path):
    unet_sd = tiny_components.unet.state_dict()
    ctrl_sd = tiny_components.controller.state_dict()
    te = prompt.load_text_encoder(tiny_release / SD / "text_encoder")
    ckpt = {
        **convert.unet_to_sd(unet_sd),
        **convert.controller_to_sd(ctrl_sd),
        **{f"cond_stage_model.transformer.text_model.{k}": v for k, v in te.state_dict().items()},  # SD naming
        **{f"first_stage_model.{k}": v for k, v in convert.clear_vae_to_sd(tiny_components.clear_vae.state_dict()).items()},
    }
    path = tmp_path / "diff-base.ckpt"
    torch.save({"state_dict": ckpt}, path)
    _state_equal(weights.load_unet(path, config=_cfg(tiny_release, f"{SD}/unet")), unet_sd)
    _state_equal(weights.load_controller(path, config=_cfg(tiny_release, f"{SD}/controlnet")), ctrl_sd)
    c = weights.load_components({
        "unet": path, "controller": path, "clear_vae": path, "text_encoder": path,
        "unet_config": _cfg(tiny_release, f"{SD}/unet"), "controller_config": _cfg(tiny_release, f"{SD}/controlnet"),
        "clear_vae_config": _cfg(tiny_release, "clear_vae"), "text_encoder_config": _cfg(tiny_release, f"{SD}/text_encoder"),
        "scheduler_config": tiny_release / SD / "scheduler" / "scheduler_config.json",
    })
    te_cfg = _cfg(tiny_release, f"{SD}/text_encoder")
    assert te_cfg["hidden_size"] == c.prompt_embeds.shape[-1]
    torch.testing.assert_close(c.prompt_embeds, tiny_components.prompt_embeds)
    _state_equal(c.clear_vae, tiny_components.clear_vae.state_dict())


# ---------------------------------------------------------------------------- errors
class PickledThing:  # an arbitrary pickled object: r2r must never execute it
    pass


def test_missing_files_name_file_and_folder(release_copy, tmp_path):
    with pytest.raises(R2RWeightsNotFound, match="does not exist"):
        weights.load_components(tmp_path / "nowhere")
    with pytest.raises(R2RWeightsNotFound, match="exists but is not an R2R release folder"):
        weights.load_components(tmp_path)
    (release_copy / "clear_vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(R2RWeightsNotFound, match=r"No R2R Clear-VAE weights in .*clear_vae.*download"):
        weights.load_components(release_copy)
    shutil.rmtree(release_copy / SD / "controlnet")
    with pytest.raises(R2RWeightsNotFound, match=r"Harmony Controller missing: the folder .*controlnet is missing"):
        weights.load_components(release_copy, components=("controller",))
    with pytest.raises(R2RWeightsNotFound, match="R2R U-Net not found at .*unet.safetensors"):
        weights.load_unet(tmp_path / "unet.safetensors")
    with pytest.raises(R2RWeightsNotFound, match="no 'unet' entry"):
        weights.load_components({"controller": "x"})


def test_wrong_component_kind(tiny_release, tmp_path):
    from diffusers import AutoencoderKL

    # a stock SD VAE offered as the Clear-VAE
    cfg = _cfg(tiny_release, "clear_vae")
    stock_cfg = {k: v for k, v in cfg.items() if k not in ("use_skip", "training", "_class_name")}
    stock_cfg.update(down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)
    stock = AutoencoderKL.from_config(stock_cfg)
    save_file(stock.state_dict(), tmp_path / "sd_vae.safetensors")
    with pytest.raises(R2RUserError, match=r"sd_vae.safetensors does not match the R2R Clear-VAE\. It is a stock"):
        weights.load_clear_vae(tmp_path / "sd_vae.safetensors", config=cfg)
    torch.save(convert.clear_vae_to_sd(stock.state_dict()), tmp_path / "sd_vae.ckpt")
    with pytest.raises(R2RUserError, match="no AdaptiveFilters"):
        weights.load_clear_vae(tmp_path / "sd_vae.ckpt", config=cfg)
    # the controller offered as the U-Net and vice versa
    ctrl = tiny_release / SD / "controlnet" / "diffusion_pytorch_model.safetensors"
    with pytest.raises(R2RUserError, match="It is a ControlNet / Harmony Controller, not the U-Net"):
        weights.load_unet(ctrl, config=_cfg(tiny_release, f"{SD}/unet"))
    unet = tiny_release / SD / "unet" / "diffusion_pytorch_model.safetensors"
    with pytest.raises(R2RUserError, match="It is a U-Net, not the Harmony Controller"):
        weights.load_controller(unet, config=_cfg(tiny_release, f"{SD}/controlnet"))
    # a text-to-image (4-channel) U-Net
    t2i = load_file(unet)
    t2i["conv_in.weight"] = t2i["conv_in.weight"][:, :4].contiguous()
    save_file(t2i, tmp_path / "t2i.safetensors")
    with pytest.raises(R2RUserError, match="9-input-channel SD-1.5-inpainting U-Net"):
        weights.load_unet(tmp_path / "t2i.safetensors", config=_cfg(tiny_release, f"{SD}/unet"))


def test_missing_unexpected_and_misshapen_tensors(tiny_release, tmp_path):
    cfg = _cfg(tiny_release, f"{SD}/controlnet")
    sd = load_file(tiny_release / SD / "controlnet" / "diffusion_pytorch_model.safetensors")
    missing = dict(sd)
    del missing["PCCAs.2.mlp.0.bias"]
    save_file(missing, tmp_path / "missing.safetensors")
    with pytest.raises(R2RUserError, match=r"Missing 1 tensors, e\.g\. PCCAs\.2\.mlp\.0\.bias"):
        weights.load_controller(tmp_path / "missing.safetensors", config=cfg)
    extra = {**sd, "bonus.weight": torch.zeros(2)}
    save_file(extra, tmp_path / "extra.safetensors")
    with pytest.raises(R2RUserError, match=r"Unexpected 1 tensors, e\.g\. bonus\.weight"):
        weights.load_controller(tmp_path / "extra.safetensors", config=cfg)
    wide = dict(cfg, block_out_channels=[64, 64, 64, 64])
    with pytest.raises(R2RUserError, match="wrong shape"):
        weights.load_controller(tiny_release / SD / "controlnet" / "diffusion_pytorch_model.safetensors", config=wide)
    sd_extra = convert.controller_to_sd(sd)
    sd_extra["control_model.input_blocks.1.0.mystery.weight"] = torch.zeros(1)
    torch.save(sd_extra, tmp_path / "ctrl.ckpt")
    with pytest.raises(R2RUserError, match=r"Unexpected 1 tensors, e\.g\. control_model\.input_blocks\.1\.0\.mystery"):
        weights.load_controller(tmp_path / "ctrl.ckpt", config=cfg)


def test_unsafe_or_broken_files(tmp_path):
    torch.save({"state_dict": {"a": torch.zeros(1)}, "obj": PickledThing()}, tmp_path / "unsafe.ckpt")
    with pytest.raises(R2RUserError, match="weights_only=True"):
        weights.load_clear_vae(tmp_path / "unsafe.ckpt")
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(R2RUserError, match="truncated"):
        weights.load_clear_vae(tmp_path / "broken.safetensors")
    (tmp_path / "weights.onnx").write_bytes(b"x")
    with pytest.raises(R2RUserError, match="Unsupported weights file"):
        weights.load_clear_vae(tmp_path / "weights.onnx")
    with pytest.raises(R2RUserError, match="Unsupported dtype"):
        weights.load_clear_vae(tmp_path / "weights.onnx", torch_dtype="float8")
    with pytest.raises(R2RUserError, match="Unknown component"):
        weights.load_components(tmp_path, components=("vae",))


# ---------------------------------------------------------------------------- hub (no network, ever)
def test_offline_hub_without_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(R2RWeightsNotFound) as err:
        weights.load_components("1243asdad/region2region", cache_dir=tmp_path / "hfcache")
    msg = str(err.value)
    assert "not available offline" in msg and "clear_vae/diffusion_pytorch_model.safetensors" in msg
    assert "models/r2r/region2region" in msg
    with pytest.raises(R2RWeightsNotFound, match="not available offline"):
        weights.download_release(tmp_path / "dl")


@pytest.fixture
def fake_hub(tiny_release, monkeypatch, tmp_path):
    """huggingface_hub with the tiny release as the remote repo; records the requested patterns."""
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    remote = sorted(
        str(p.relative_to(tiny_release)) for p in tiny_release.rglob("*") if p.is_file() and p.name != prompt.CACHE_NAME
    ) + [f"{SD}/vae/diffusion_pytorch_model.safetensors", f"{SD}/safety_checker/model.safetensors", "RPHarmony.zip"]
    calls = []

    class FakeApi:
        def list_repo_files(self, repo_id, revision=None, **kw):
            assert repo_id == "1243asdad/region2region"
            return list(remote)

    def fake_snapshot(repo_id, *, allow_patterns=None, local_dir=None, cache_dir=None, local_files_only=False, **kw):
        calls.append(list(allow_patterns or []))
        target = Path(local_dir) if local_dir else tmp_path / "hubcache" / "snapshot"
        for f in remote:
            if any(fnmatch.fnmatch(f, p) for p in allow_patterns):
                src = tiny_release / f
                if not src.is_file():
                    raise AssertionError(f"downloaded a file R2R does not need: {f}")
                (target / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, target / f)
        return str(target)

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    return calls


def test_hub_downloads_only_needed_files(fake_hub, tiny_components, tmp_path, monkeypatch):
    monkeypatch.setenv("R2R_CACHE_DIR", str(tmp_path / "usercache"))
    c = weights.load_components("1243asdad/region2region", components=("controller", "clear_vae"))
    patterns = fake_hub[-1]
    assert f"{SD}/unet/config.json" not in patterns  # only the requested components
    assert f"{SD}/controlnet/diffusion_pytorch_model.safetensors" in patterns
    assert f"{SD}/text_encoder/model.safetensors" in patterns  # prompt not cached yet
    assert not any("vae/" in p and not p.startswith("clear_vae") or "safety" in p or "zip" in p for p in patterns)
    assert c.source == "1243asdad/region2region"
    torch.testing.assert_close(c.prompt_embeds, tiny_components.prompt_embeds)
    # second time: the embedding is cached (user cache, never inside the HF cache) -> no text encoder download
    weights.load_components("1243asdad/region2region", components=("clear_vae",))
    assert not any("text_encoder" in p or "tokenizer" in p for p in fake_hub[-1])


def test_download_cli_and_check(fake_hub, tmp_path, capsys, tiny_release):
    from r2r.cli import main

    dest = tmp_path / "models" / "r2r" / "region2region"
    assert main(["download", "--to", str(dest)]) == 0
    out = capsys.readouterr().out
    assert "R2R weights ready" in out and out.count("[ok  ]") == 5
    assert (dest / prompt.CACHE_NAME).is_file() and (dest / "clear_vae" / "config.json").is_file()
    rows = weights.check_release(dest)
    assert all(r["ok"] for r in rows)
    assert [r["tensors"] for r in rows[:3]] == [r["expected"] for r in rows[:3]]
    # --check reports a broken component and fails
    sd = load_file(dest / SD / "unet" / "diffusion_pytorch_model.safetensors")
    sd.pop("conv_out.bias")
    save_file(sd, dest / SD / "unet" / "diffusion_pytorch_model.safetensors")
    assert main(["download", "--check", str(dest)]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] unet" in out and "conv_out.bias" in out
    assert main(["download"]) == 2
    assert "--to DIR" in capsys.readouterr().err
