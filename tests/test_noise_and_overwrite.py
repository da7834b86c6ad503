"""Issue "Same seed as the official script": where the seed's generator draws follows ``noise_device`` on
every surface (Python API, CLI, R2R Sampler, R2R Harmonize); on a CPU both choices give the same image.
Issue "Never overwrite": ``harmonize`` / ``demo`` replace only their own earlier results without
``--overwrite``."""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
import pytest
import torch
from comfy_pack import load_pack, node_classes, pack_module

from r2r.cli import main
from r2r.pipeline import R2RPipeline

load_pack()
NODES = node_classes()


@pytest.fixture()
def draws(monkeypatch):
    """Every generator a noise source makes: ("cpu" | "device") per draw site, for r2r and for the pack."""
    seen = []
    for noise in (pack_module("r2r.pipeline.noise"), __import__("r2r.pipeline.noise", fromlist=["_generator"])):
        orig = noise._generator

        def spy(seed, device, compute_device, _orig=orig):
            seen.append(device)
            return _orig(seed, device, compute_device)

        monkeypatch.setattr(noise, "_generator", spy)
    return seen


def _scene(h=64, w=96):
    rng = np.random.default_rng(1)
    comp = (rng.random((h, w, 3)) * 200 + 20).astype(np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[16:48, 24:64] = 255
    return comp, mask


def test_python_api_follows_noise_device(tiny_components, draws):
    pipe = R2RPipeline(tiny_components)
    comp, mask = _scene()
    a = pipe(comp, mask, num_inference_steps=2, generator=4, max_side=64, noise_device="cpu")
    assert set(draws) == {"cpu"}
    draws.clear()
    b = pipe(comp, mask, num_inference_steps=2, generator=4, max_side=64, noise_device="device")
    assert set(draws) == {"device"}
    assert torch.equal(a.images, b.images)  # on a CPU the compute device is the CPU: the same generator
    draws.clear()
    pipe.variations(comp, mask, seeds=[1, 2], num_inference_steps=1, max_side=64, noise_device="device")
    assert draws and set(draws) == {"device"}


def test_cli_follows_noise_device(tiny_release, tmp_path, draws):
    comp, mask = _scene()
    cp, mp = tmp_path / "c.png", tmp_path / "m.png"
    cv2.imwrite(str(cp), comp[..., ::-1])
    cv2.imwrite(str(mp), mask)
    outs = []
    for choice in ("cpu", "device"):
        draws.clear()
        out = tmp_path / f"{choice}.png"
        assert main(["harmonize", "--composite", str(cp), "--mask", str(mp), "--out", str(out), "--weights",
                     str(tiny_release), "--steps", "1", "--max-side", "64", "--noise-device", choice]) == 0
        assert draws and set(draws) == {choice}
        outs.append(cv2.imread(str(out)))
    assert np.array_equal(*outs)
    assert main(["harmonize", "--composite", str(cp), "--mask", str(mp), "--out", str(tmp_path / "x.png"),
                 "--noise-device", "gpu"]) == 2


def test_nodes_follow_noise_device(models_dir, draws):
    model, vae, ctrl = NODES["R2RCheckpointLoader"].execute("region2region", "fp32", False).args
    comp, mask = _scene()
    image = torch.from_numpy(comp).float()[None] / 255
    m = torch.from_numpy(mask).float()[None] / 255
    (latent,) = NODES["R2RClearVAEEncode"].execute(vae, image, m, 64, False, "fit").args
    results = []
    for choice in ("cpu", "device"):
        draws.clear()
        (s,) = NODES["R2RSampler"].execute(model, latent, 5, 1, "euler_ancestral", choice).args
        assert draws and set(draws) == {choice}
        results.append(s["samples"])
    assert torch.equal(*results)
    draws.clear()
    NODES["R2RHarmonize"].execute(model, vae, ctrl, image, m, seed=5, steps=1, max_side=64, noise_device="device")
    assert draws and set(draws) == {"device"}


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_harmonize_replaces_only_its_own_earlier_result(tmp_path):
    comp, mask = _scene(96, 128)
    cp, mp = tmp_path / "c.png", tmp_path / "m.png"
    cv2.imwrite(str(cp), comp[..., ::-1])
    cv2.imwrite(str(mp), mask)
    out = tmp_path / "out.png"
    argv = ["harmonize", "--composite", str(cp), "--mask", str(mp), "--out", str(out), "--method", "statistics"]
    assert main(argv) == 0
    first = out.read_bytes()
    assert main(argv + ["--strength", "0.5"]) == 0 and out.read_bytes() != first  # its own result: replaced
    foreign = tmp_path / "photo.png"
    cv2.imwrite(str(foreign), comp)  # the user's file, not written by r2r
    before = _digest(tmp_path)
    argv[argv.index(str(out))] = str(foreign)
    assert main(argv) == 2
    assert _digest(tmp_path) == before, "a refused run changes nothing"
    assert main(argv + ["--overwrite"]) == 0 and foreign.read_bytes() != before["photo.png"]


def test_demo_replaces_only_its_own_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("R2R_WEIGHTS", raising=False)
    out = tmp_path / "d"
    assert main(["demo", "--out", str(out), "--method", "statistics"]) == 0
    assert main(["demo", "--out", str(out), "--method", "statistics"]) == 0  # a second `make demo` works
    sheet = out / "contact_sheet.png"
    cv2.imwrite(str(sheet), np.zeros((8, 8, 3), np.uint8))  # replaced by the user's own picture
    before = _digest(out)
    assert main(["demo", "--out", str(out), "--method", "statistics"]) == 2
    assert _digest(out) == before
    assert main(["demo", "--out", str(out), "--method", "statistics", "--overwrite"]) == 0
