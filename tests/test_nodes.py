"""Every node's execute path through the V3 classes, without a ComfyUI server, on the tiny
official-layout release.

The pack root is imported as a package the way ComfyUI does (tests/comfy_pack.py puts the
ComfyUI source tree on sys.path for ``comfy_api``), so the pack's ``r2r`` is its own copy: errors
are checked against the pack's classes. The host layer runs in plain mode here (no
``comfy.model_management``); test_comfyui_integration.py runs the same nodes in a real ComfyUI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from comfy_pack import PACK_ROOT, load_pack, node_classes, pack_module
from comfy_pack import run_node as run

pack = load_pack()
NODES = node_classes()
errors = pack_module("r2r.errors")
R2RUserError = errors.R2RUserError
host = pack_module("nodes._host")


def options(node_id, name):  # a combo's current choices as /object_info lists them
    typ, opts = NODES[node_id].INPUT_TYPES()["required"][name]
    assert typ == "COMBO"
    return opts["options"]


# ----------------------------------------------------------------------------- fixtures


def _scene(b=1, h=80, w=112, seed=0):
    """A composite IMAGE [B,H,W,3] with a smooth background and a colour-shifted box, and its MASK."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = torch.stack([0.3 + 0.4 * xx, 0.2 + 0.5 * yy, 0.6 - 0.3 * xx], -1)
    img = base[None].repeat(b, 1, 1, 1) + 0.05 * torch.rand(b, h, w, 3, generator=g)
    mask = torch.zeros(b, h, w)
    mask[:, h // 4 : h // 4 + h // 2, w // 3 : w // 3 + w // 3] = 1.0
    img = torch.where(mask[..., None] > 0, img * torch.tensor([1.3, 0.7, 0.6]), img)
    return img.clamp(0, 1), mask


# ----------------------------------------------------------------------------- registry


def test_registry_ids_categories_tooltips():
    assert len(NODES) >= 13
    for node_id, cls in NODES.items():
        assert issubclass(cls, pack.nodes._schema.R2RNode), node_id  # V3 (comfy_api.v0_0_2) classes
        info = cls.GET_NODE_INFO_V1()  # what /object_info shows
        assert node_id.startswith("R2R") and node_id.isidentifier() and info["name"] == node_id
        assert info["display_name"].startswith("R2R ")
        assert info["category"] == "R2R" or info["category"].startswith("R2R/")
        assert len(info["description"]) > 40
        assert all(isinstance(a, str) and a for a in info["search_aliases"])
        assert info["search_aliases"] or info["deprecated"], node_id  # deprecated nodes are hidden from search
        for section in ("required", "optional"):
            for name, (typ, opts) in info["input"].get(section, {}).items():
                assert opts.get("tooltip"), f"{node_id}.{name} has no tooltip"
                if typ in ("INT", "FLOAT"):
                    for key in ("min", "max", "step", "default"):
                        assert key in opts, f"{node_id}.{name} lacks {key}"
                    assert opts["min"] <= opts["default"] <= opts["max"]
                if name in ("seed", "noise_seed"):  # explicit (R2R Conditioning's follows KSampler's seed)
                    assert opts.get("control_after_generate") in (True, False), f"{node_id}.{name}"
                if typ == "COMBO":
                    assert opts.get("default", opts["options"][0]) in opts["options"], f"{node_id}.{name}"
        assert len(info["output"]) == len(info["output_name"]) == len(info["output_tooltips"])
        assert all(info["output_tooltips"]), node_id


def test_the_catalog_names_every_node_once():
    """One row per node in nodes/_catalog.py, none without a node; descriptions read as one paragraph."""
    cards = pack_module("nodes._catalog").CARDS
    assert set(cards) == set(NODES)
    for node_id, cls in NODES.items():
        info = cls.GET_NODE_INFO_V1()
        assert (info["display_name"], info["category"], tuple(info["search_aliases"]), info["deprecated"]) == cards[node_id]
        assert "\n" not in info["description"] and "  " not in info["description"], node_id


def test_extension_entry_point_and_comfy_free_root():
    """The pack root has only the V3 entry point (no NODE_CLASS_MAPPINGS, which would hide it) and
    importing it loads neither ComfyUI nor torch; the entry point lists every node module's classes."""
    assert not hasattr(pack, "NODE_CLASS_MAPPINGS") and callable(pack.comfy_entrypoint)
    expected = {c.GET_SCHEMA().node_id for mod in ("loaders", "examples", "chain", "harmonize", "data")
                for c in pack_module(f"nodes.{mod}").NODES}
    assert expected <= set(NODES)
    assert {"R2RExampleImage", "R2RHarmonize", "R2RClearVAEDecode"} <= set(NODES)
    code = (
        "import sys, importlib.util; "
        "spec = importlib.util.spec_from_file_location('pk', '__init__.py', submodule_search_locations=['.']); "
        "m = importlib.util.module_from_spec(spec); sys.modules['pk'] = m; spec.loader.exec_module(m); "
        "bad = [x for x in ('torch', 'diffusers', 'cv2', 'comfy', 'comfy_api', 'folder_paths') if x in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=PACK_ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_no_absolute_imports_of_r2r_in_nodes():
    for fn in os.listdir(os.path.join(PACK_ROOT, "nodes")):
        if fn.endswith(".py"):
            src = open(os.path.join(PACK_ROOT, "nodes", fn), encoding="utf-8").read()
            assert "\nimport r2r" not in src and "\nfrom r2r" not in src, fn
            assert "import comfy" not in src.split('"""', 2)[-1].split("def ", 1)[0], fn  # not at module top


# ----------------------------------------------------------------------------- loaders


def test_checkpoint_loader_lists_and_loads(models_dir, loaded):
    choices = options("R2RCheckpointLoader", "checkpoint")
    assert choices[0] == "region2region"
    model, vae, ctrl = loaded
    assert model.prompt_embeds.ndim == 3 and model.scheduler_config
    assert vae.model.__class__.__name__ == "ClearVAE"
    assert ctrl.model.__class__.__name__ == "HarmonyController"
    assert next(vae.model.parameters()).dtype == torch.float32

    vae_choices = options("R2RClearVAELoader", "name")
    assert "region2region/clear_vae" in vae_choices
    (vae2,) = run("R2RClearVAELoader", "region2region/clear_vae", "fp32")
    sd1, sd2 = vae.model.state_dict(), vae2.model.state_dict()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    ctrl_name = "region2region/stable-diffusion-inpainting/controlnet"
    assert ctrl_name in options("R2RControllerLoader", "name")
    (ctrl2,) = run("R2RControllerLoader", ctrl_name, "fp32")
    assert ctrl2.model.__class__.__name__ == "HarmonyController"
    unet_name = "region2region/stable-diffusion-inpainting/unet"
    assert unet_name in options("R2RUNetLoader", "name")
    assert unet_name not in options("R2RClearVAELoader", "name")
    (model2,) = run("R2RUNetLoader", unet_name, "fp32", "region2region")
    assert torch.equal(model2.prompt_embeds, model.prompt_embeds)
    assert model2.scheduler_config == model.scheduler_config
    u1, u2 = model.unet.model.state_dict(), model2.unet.model.state_dict()
    assert all(torch.equal(u1[k], u2[k]) for k in u1)
    assert isinstance(NODES["R2RUNetLoader"].validate_inputs(unet_name, "nope"), str)


def test_loader_missing_release_is_actionable(models_dir, tmp_path, monkeypatch):
    cls = NODES["R2RCheckpointLoader"]
    msg = cls.validate_inputs("nope")
    assert isinstance(msg, str) and "models/r2r" in msg
    empty = tmp_path / "empty_models"
    empty.mkdir()
    monkeypatch.setenv("R2R_MODELS_DIR", str(empty))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(errors.R2RWeightsNotFound) as exc:
        cls.execute("region2region", "auto", False)
    assert str(empty) in str(exc.value) and "download_if_missing" in str(exc.value)
    # offline download: names the files and the target folder, writes nothing half-done
    with pytest.raises(errors.R2RWeightsNotFound) as exc:
        cls.execute("region2region", "auto", True)
    text = str(exc.value)
    assert str(empty / "region2region") in text and "clear_vae" in text and "unet" in text
    with pytest.raises(errors.R2RWeightsNotFound):
        run("R2RClearVAELoader", "missing.safetensors", "auto")


def test_model_folder_registration_merges(monkeypatch, tmp_path):
    """Inside ComfyUI the pack merges models/r2r into an existing folder_paths entry."""
    import types

    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(tmp_path / "models")
    fp.folder_names_and_paths = {"r2r": (["/elsewhere/r2r"], {".gguf"})}
    fp.get_folder_paths = lambda name: list(fp.folder_names_and_paths[name][0])
    monkeypatch.setitem(sys.modules, "folder_paths", fp)
    monkeypatch.setitem(sys.modules, "comfy.model_management", types.ModuleType("comfy.model_management"))
    monkeypatch.delenv("R2R_HOST", raising=False)
    host.register_model_folder()
    paths, exts = fp.folder_names_and_paths["r2r"]
    assert paths == ["/elsewhere/r2r", str(tmp_path / "models" / "r2r")]
    assert {".gguf", ".safetensors", ".ckpt"} <= exts
    host.register_model_folder()  # idempotent
    assert len(fp.folder_names_and_paths["r2r"][0]) == 2
    assert host.model_dirs() == paths
    fp.folder_names_and_paths = {}
    host.register_model_folder()
    assert fp.folder_names_and_paths["r2r"][0] == [str(tmp_path / "models" / "r2r")]


# ----------------------------------------------------------------------------- diffusion nodes


def _graph(loaded, image, mask, seed=3, steps=2, reference_mask=None, strength=1.0, max_side=128, paste_back=True,
           feather=-1, sampler="euler_ancestral", fullres="upsample"):
    model, vae, ctrl = loaded
    (latent,) = run("R2RClearVAEEncode", vae, image, mask, max_side, False, "fit")
    (cmodel,) = run("R2RMACAControllerApply", model, ctrl, strength, reference_mask=reference_mask)
    (sampled,) = run("R2RSampler", cmodel, latent, seed, steps, sampler)
    (out,) = run("R2RClearVAEDecode", vae, sampled, paste_back=paste_back, feather=feather, fullres_mode=fullres)
    return latent, sampled, out


def test_graph_equals_harmonize_node_and_pipeline(loaded, tiny_components):
    image, mask = _scene(b=2)
    latent, sampled, out = _graph(loaded, image, mask)
    assert latent["samples"].shape == (2, 4, 8, 16)  # 80x112 at max_side 128 -> 64x128 working
    assert sampled["samples"].shape == (2, 4, 8, 16) and sampled["r2r"].key == latent["r2r"].key
    assert out.shape == image.shape and out.dtype == torch.float32
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    # background outside the feather band is the original, bit for bit
    far = torch.nn.functional.max_pool2d(mask[:, None], 41, 1, 20)[:, 0] == 0
    assert torch.equal(out[far], image[far])
    assert not torch.allclose(out[mask > 0], image[mask > 0], atol=1e-3)

    model, vae, ctrl = loaded
    (one,) = run("R2RHarmonize", model, vae, ctrl, image, mask, seed=3, steps=2, max_side=128, fullres_mode="upsample")
    assert torch.equal(one, out)

    from r2r.pipeline import R2RPipeline

    pipe = R2RPipeline(tiny_components)
    ref = pipe(image.permute(0, 3, 1, 2), mask[:, None], num_inference_steps=2, generator=3, max_side=128)
    assert torch.allclose(ref.images.permute(0, 2, 3, 1), out, atol=2e-5), float(
        (ref.images.permute(0, 2, 3, 1) - out).abs().max())


def test_seed_steps_sampler_reference_and_paste_back(loaded):
    image, mask = _scene()
    _, s1, out1 = _graph(loaded, image, mask, seed=1)
    _, s2, out2 = _graph(loaded, image, mask, seed=1)
    assert torch.equal(out1, out2)
    _, s3, _ = _graph(loaded, image, mask, seed=2)
    assert not torch.equal(s1["samples"], s3["samples"])
    ref = torch.zeros_like(mask)
    ref[:, :, :30] = 1.0
    _, s4, _ = _graph(loaded, image, mask, seed=1, reference_mask=ref)
    assert not torch.equal(s1["samples"], s4["samples"])
    _, s5, _ = _graph(loaded, image, mask, seed=1, strength=0.5)
    assert not torch.equal(s1["samples"], s5["samples"])
    _, _, raw = _graph(loaded, image, mask, seed=1, paste_back=False)
    assert not torch.equal(raw[mask == 0], image[mask == 0])
    _, _, hard = _graph(loaded, image, mask, seed=1, feather=0)
    assert torch.equal(hard[mask == 0], image[mask == 0])
    _, s6, _ = _graph(loaded, image, mask, seed=1, sampler="euler", steps=3)
    assert s6["samples"].shape == s1["samples"].shape
    # full-resolution colour transform: original size, background kept, foreground differs from upsampling
    big_image, big_mask = _scene(h=200, w=280, seed=4)
    _, _, up = _graph(loaded, big_image, big_mask, seed=1, feather=0)
    _, _, ct = _graph(loaded, big_image, big_mask, seed=1, feather=0, fullres="color_transform")
    assert ct.shape == big_image.shape
    assert torch.equal(ct[big_mask == 0], big_image[big_mask == 0])
    assert not torch.equal(ct[big_mask == 1], up[big_mask == 1])


def test_sampler_progress_and_interrupt(loaded, monkeypatch):
    image, mask = _scene()
    model, vae, ctrl = loaded
    (latent,) = run("R2RClearVAEEncode", vae, image, mask, 64, False, "fit")
    (cmodel,) = run("R2RMACAControllerApply", model, ctrl, 1.0)
    seen, previews = [], []
    orig_update = host.Progress.update

    def spy(self, n=1, preview_latent=None):
        seen.append(self.total)
        if preview_latent is not None:
            previews.append(tuple(preview_latent.shape))
        if len(seen) == 7:
            host.request_interrupt()
        orig_update(self, n, preview_latent)

    monkeypatch.setattr(host.Progress, "update", spy)
    with pytest.raises(InterruptedError):
        run("R2RSampler", cmodel, latent, 0, 5, "euler_ancestral")
    # the controller phase counts on its own (5), then the bar counts the 5 denoising steps; interrupted in step 2
    assert seen == [5] * 7
    # the denoising steps send the predicted clean latent for ComfyUI's preview
    assert previews and all(p == tuple(latent["samples"].shape) for p in previews)
    host.request_interrupt(False)


def test_diffusion_node_errors(loaded):
    model, vae, ctrl = loaded
    image, mask = _scene()
    enc = NODES["R2RClearVAEEncode"]
    with pytest.raises(R2RUserError, match="no alpha"):
        enc.execute(vae, image, torch.zeros(1, 64, 64), 64, False, "fit")
    with pytest.raises(R2RUserError, match="invert_mask"):
        enc.execute(vae, image, torch.zeros_like(mask), 64, False, "fit")
    with pytest.raises(R2RUserError, match="switch it off"):
        enc.execute(vae, image, mask * 0 + 1, 64, True, "fit")
    with pytest.raises(R2RUserError, match="Batch sizes"):
        enc.execute(vae, image.repeat(3, 1, 1, 1), mask.repeat(2, 1, 1), 64, False, "fit")
    with pytest.raises(R2RUserError, match="aspect ratio"):
        enc.execute(vae, image, torch.ones(1, 80, 80), 64, False, "fit")
    with pytest.raises(R2RUserError, match="IMAGE"):
        enc.execute(vae, mask, mask, 64, False, "fit")
    # a half-size mask with the same aspect ratio is resized, and a batch of 1 mask broadcasts
    small = torch.nn.functional.interpolate(mask[:, None], size=(40, 56))[:, 0]
    (lat,) = enc.execute(vae, image.repeat(2, 1, 1, 1), small, 64, False, "fit")
    assert lat["samples"].shape[0] == 2

    (latent,) = enc.execute(vae, image, mask, 64, False, "fit")
    changed = {"samples": latent["samples"][..., :4], "r2r": latent["r2r"]}
    with pytest.raises(R2RUserError, match="changed after"):
        run("R2RSampler", model, changed, 0, 2, "euler_ancestral")
    with pytest.raises(R2RUserError, match="did not come from"):
        run("R2RSampler", model, {"samples": latent["samples"]}, 0, 2, "euler_ancestral")
    (sampled,) = run("R2RSampler", model, latent, 0, 2, "euler_ancestral")  # no controller: U-Net only
    with pytest.raises(R2RUserError, match="already sampled"):
        run("R2RSampler", model, sampled, 0, 2, "euler_ancestral")
    ref = torch.zeros_like(mask)
    ref[:, 0, 0] = 1.0
    (cm,) = run("R2RMACAControllerApply", model, ctrl, 1.0, reference_mask=ref)
    with pytest.raises(R2RUserError, match="reference_mask"):
        run("R2RSampler", cm, latent, 0, 2, "euler_ancestral")


def test_legacy_inputs_are_ignored(loaded):
    """V1-era graphs wired image/mask/invert_mask into Controller Apply and Decode: still accepted, and
    the result is the one of the LATENT (masks are read once, by Encode). A different picture wired into
    Decode's old 'image' input is refused (it would otherwise be silently ignored)."""
    model, vae, ctrl = loaded
    image, mask = _scene()
    latent, sampled, out = _graph(loaded, image, mask, seed=5, max_side=64)
    (cm,) = run("R2RMACAControllerApply", model, ctrl, 1.0, torch.flip(image, [2]), 1 - mask, True)
    (s2,) = run("R2RSampler", cm, latent, 5, 2, "euler_ancestral")
    assert torch.equal(s2["samples"], sampled["samples"])
    (out2,) = run("R2RClearVAEDecode", vae, s2, image, 1 - mask, True, True, -1, "upsample")
    assert torch.equal(out2, out)
    with pytest.raises(R2RUserError, match="not the composite this LATENT carries"):
        run("R2RClearVAEDecode", vae, s2, torch.flip(image, [2]), mask, False, True, -1, "upsample")
    info = NODES["R2RClearVAEDecode"].GET_NODE_INFO_V1()
    assert "LATENT from Clear-VAE Encode" in info["input"]["optional"]["invert_mask"][1]["tooltip"]


def test_models_are_loaded_with_a_memory_estimate(loaded, monkeypatch):
    """Every network load asks for room for its activations besides the weights."""
    model, vae, ctrl = loaded
    image, mask = _scene()
    calls = []
    orig = host.ManagedModel.load

    def spy(self, memory_required=None):
        calls.append((self.name, memory_required))
        return orig(self, memory_required)

    monkeypatch.setattr(host.ManagedModel, "load", spy)
    _graph(loaded, image, mask, seed=9, max_side=64)
    names = {n for n, _ in calls}
    assert {"unet", "clear_vae", "controller"} <= names, calls
    assert all(isinstance(m, int) and m > 0 for _, m in calls), calls


def test_host_loads_through_comfyui_with_memory_required(monkeypatch):
    """Inside ComfyUI: load_models_gpu(..., memory_required=..., force_full_load=True); when ComfyUI left
    the weights off the device (--novram loads 0 bytes of non-comfy.ops layers), the whole model is
    loaded through the patcher (accounted) instead of failing later with a device mismatch."""
    import types

    mm = types.ModuleType("comfy.model_management")
    calls = []

    class Patcher:
        load_device = torch.device("cpu")

        def __init__(self, loaded):
            self.loaded = loaded
            self.partial = []

        def model_size(self):
            return 1000

        def loaded_size(self):
            return self.loaded

        def partially_load(self, device, extra_memory=0):
            self.partial.append((device, extra_memory))

    mm.load_models_gpu = lambda models, memory_required=0, force_full_load=False: calls.append((models, memory_required, force_full_load))  # noqa: E501
    monkeypatch.setitem(sys.modules, "comfy.model_management", mm)
    if "comfy" in sys.modules:  # the real package (imported by another test module): `import comfy.x as y` reads it
        monkeypatch.setattr(sys.modules["comfy"], "model_management", mm, raising=False)
    monkeypatch.setitem(sys.modules, "folder_paths", types.ModuleType("folder_paths"))
    monkeypatch.delenv("R2R_HOST", raising=False)
    lin = torch.nn.Linear(2, 2)
    managed = host.ManagedModel(lin, "toy")
    managed._patcher = Patcher(1000)
    assert managed.load(memory_required=12345) is lin
    assert calls == [([managed._patcher], 12345, True)] and managed._patcher.partial == []
    managed._patcher.loaded = 0  # what ComfyUI's NO_VRAM loading leaves of a non-comfy.ops model
    managed.load()
    assert calls[-1][1] == 0 and managed._patcher.partial == [(torch.device("cpu"), 1001)]


# ----------------------------------------------------------------------------- weight-free nodes


def test_random_poisson_blend_batch():
    image, mask = _scene(b=3, h=64, w=80)
    node = NODES["R2RRandomPoissonBlend"]
    comp, m, real = node.execute(image, mask, 5, 0.75, False, None, None)
    assert comp.shape == image.shape and m.shape == mask.shape and real.shape == image.shape
    assert torch.equal(real, image.clamp(0, 1)) and torch.equal(m, mask)
    assert not torch.allclose(comp[mask > 0], image[mask > 0], atol=1e-3)
    again, _, _ = node.execute(image, mask, 5, 0.75, False, None, None)
    assert torch.equal(comp, again)
    # item i uses seed + i: item 1 of seed 5 == item 0 of seed 6
    shifted, _, _ = node.execute(image[1:2], mask[1:2], 6, 0.75, False, None, None)
    assert torch.equal(shifted[0], comp[1])
    none, _, _ = node.execute(image, mask, 5, 0.0, False, None, None)
    assert torch.allclose(none, image, atol=1 / 255)
    ref = torch.zeros_like(mask[:1])
    ref[:, :, :20] = 1
    withref, _, _ = node.execute(image, mask, 5, 0.75, False, image[:1], ref)
    assert withref.shape == image.shape
    other = torch.rand(1, 48, 40, 3, generator=torch.Generator().manual_seed(1))
    small_ref = torch.zeros(1, 48, 40)
    small_ref[:, :, :20] = 1
    from_other, _, _ = node.execute(image, mask, 5, 0.75, False, other, small_ref)  # any size: resized
    assert from_other.shape == image.shape and not torch.equal(from_other, comp)
    with pytest.raises(R2RUserError, match="aspect ratio"):
        node.execute(image, mask, 5, 0.75, False, other, torch.ones(1, 64, 80))


def test_weight_free_harmonize():
    image, mask = _scene(b=2)
    node = NODES["R2RWeightFreeHarmonize"]
    (out,) = node.execute(image, mask, 1.0, False, None)
    assert out.shape == image.shape
    assert torch.allclose(out[mask == 0], image[mask == 0], atol=1 / 255)
    fg_before = (image[mask > 0].mean(0) - image[mask == 0].mean(0)).abs().sum()
    fg_after = (out[mask > 0].mean(0) - out[mask == 0].mean(0)).abs().sum()
    assert fg_after < fg_before
    (zero,) = node.execute(image, mask, 0.0, False, None)
    assert torch.allclose(zero, image, atol=1 / 255)
    with pytest.raises(R2RUserError, match="invert_mask"):
        node.execute(image, torch.zeros_like(mask), 1.0, False, None)


def test_save_harmonization_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("R2R_OUTPUT_DIR", str(tmp_path))
    image, mask = _scene(b=2, h=64, w=64)
    comp, m, real = run("R2RRandomPoissonBlend", image, mask, 0, 0.75, False, None, None)
    node = NODES["R2RSaveHarmonizationDataset"]
    res = node.execute(comp, m, real, "ds/MyHarmony", "R-Test", "train", "png")
    assert res.args == () and "saved 2" in res.ui["text"][0]
    # the confirmation shown on the node: the saved composites, as files of the output folder
    shown = res.ui["images"]
    assert len(shown) == 2 and all(im["type"] == "output" for im in shown)
    assert all((tmp_path / im["subfolder"] / im["filename"]).is_file() for im in shown)
    node.execute(comp[:1], m[:1], real[:1], "ds/MyHarmony", "R-Test", "test", "png")
    root = tmp_path / "ds" / "MyHarmony"
    train = [json.loads(line)["file_name"] for line in (root / "train.jsonl").read_text().splitlines()]
    assert train == (root / "train.txt").read_text().split()
    assert len(train) == 2 and len((root / "test.txt").read_text().split()) == 1
    for name in train:
        assert (root / name).is_file()
        assert name.startswith("R-Test/composite_images/")
    saved = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(root / train[0]))
    assert saved.shape == (64, 64, 3)
    assert not [p for p in root.rglob("*") if ".tmp-" in p.name]
    with pytest.raises(R2RUserError, match="outside the output folder"):
        node.execute(comp, m, real, "../escape", "R-Test", "train", "png")
    with pytest.raises(R2RUserError):
        node.execute(comp, m, real, "ds/MyHarmony", "bad/subset", "train", "png")


def test_loader_listing_kinds(tmp_path, monkeypatch, tiny_release):
    """Release folders, component folders (by their config) and single files are told apart."""
    import shutil

    root = tmp_path / "r2r"
    shutil.copytree(tiny_release / "clear_vae", root / "my_vae")
    shutil.copytree(tiny_release / "stable-diffusion-inpainting" / "controlnet", root / "ctrl" / "controlnet")
    (root / "single").mkdir()
    (root / "single" / "clear_vae.ckpt").write_bytes(b"")
    (root / "r2r_empty_prompt.safetensors").write_bytes(b"")
    os.symlink(tiny_release, root / "rel")
    monkeypatch.setenv("R2R_MODELS_DIR", str(root))
    found = pack_module("nodes._files").scan()
    assert found["release"] == ["rel"]
    assert "my_vae" in found["clear_vae"] and "rel/clear_vae" in found["clear_vae"]
    assert "ctrl/controlnet" in found["controller"] and "my_vae" not in found["controller"]
    assert found["file"] == ["single/clear_vae.ckpt"]
    vae_names = options("R2RClearVAELoader", "name")
    assert "my_vae" in vae_names and "ctrl/controlnet" not in vae_names
    (vae,) = run("R2RClearVAELoader", "my_vae", "fp32")
    assert vae.model.__class__.__name__ == "ClearVAE"
    with pytest.raises(R2RUserError):
        run("R2RClearVAELoader", "single/clear_vae.ckpt", "fp32")  # an empty file: clear error
