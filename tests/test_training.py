"""Trainer unit tests (losses, VGG loading, config, data/augmentation, sampling plan) + shared helpers.

The helpers (``make_tiny_dataset``, ``tiny_config``, ``single_thread``) are imported by the other
tests/test_training_*.py modules. Datasets are generated with Random Poisson Blending from
scikit-image's bundled pictures, at 64-px training resolution.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from r2r.errors import R2RUserError

# --------------------------------------------------------------------------------------- helpers
_PICTURES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "colorwheel")


def make_tiny_dataset(root: Path, n_train: int = 4, n_test: int = 2, size=(88, 72)) -> dict:
    """Write (a) an RPHarmony-layout dataset (composites made with RPB, train/test lists) and (b) a
    folder of real images + masks (composites made on the fly). Returns their paths."""
    import cv2
    import skimage.data

    from r2r.blending import random_poisson_blend
    from r2r.dataset.writer import HarmonizationDatasetWriter

    root = Path(root)
    writer = HarmonizationDatasetWriter(root / "layout", "R-Tiny", image_format="png")
    folder = root / "folder"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    w, h = size
    for i, name in enumerate(_PICTURES[: n_train + n_test]):
        img = getattr(skimage.data, name)()
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        mask = np.zeros((h, w), np.uint8)
        cv2.ellipse(mask, (w // 2 + 4 * i - 8, h // 2), (w // 4, h // 4), 15 * i, 0, 360, 255, -1)
        comp = random_poisson_blend(img, mask > 0, 100 + i).composite
        split = "train" if i < n_train else "test"
        writer.add(np.asarray(comp), mask > 0, img, name=f"{name}", split=split)
        if i < n_train:
            cv2.imwrite(str(folder / "images" / f"{name}.png"), img[..., ::-1])
            cv2.imwrite(str(folder / "masks" / f"{name}.png"), mask)
    return {"layout": str(root / "layout"), "images": str(folder / "images"), "masks": str(folder / "masks")}


def tiny_config(stage: str, data: dict, out: Path, *, release=None, weights=None, **sections) -> dict:
    """A tiny config dict (64 px, batch 2, a few steps) for ``training.config`` (``--set``-style sections merge)."""
    cfg = {
        "stage": stage,
        "seed": 0,
        "init": {"release": str(release) if release else None, "weights": str(weights) if weights else None},
        "data": {
            "train": [{"type": "layout", "root": data["layout"], "split": "train"}],
            "val": [{"type": "layout", "root": data["layout"], "split": "test"}],
            "resolution": 64,
            "num_workers": 0,
        },
        "train": {"batch_size": 2, "gradient_accumulation_steps": 1, "max_steps": 2, "learning_rate": 1e-3},
        "loss": {"cr_weight": 0.3, "vgg16": "random-weights-for-tests"},
        "log": {"every": 1, "checkpoint_every": 0, "sample_every": 0, "validate_every": 0, "inference_steps": 2,
                "progress_bar": False},
        "output": {"dir": str(out)},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            cfg.setdefault(section, {}).update(values)
        else:
            cfg[section] = values
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    return path


def load_cfg(cfg: dict, tmp_path: Path, name="cfg.yaml"):
    from training.config import load_config

    return load_config(write_config(tmp_path / name, cfg), stage=cfg["stage"])


def reset_accelerate():
    """Each in-process run builds its own Accelerator; forget the previous run's singleton state."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture
def single_thread(monkeypatch):
    """One torch thread (the CI box has 2 cores shared by many jobs) and random VGG allowed."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("R2R_ALLOW_RANDOM_VGG", "1")
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny_dataset"))


# --------------------------------------------------------------------------------------- losses
def test_masked_epsilon_loss_matches_formula():
    from training.losses import masked_epsilon_loss

    g = torch.Generator().manual_seed(0)
    eps_pred, eps = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    mask = torch.zeros(3, 1, 8, 8)
    mask[0, :, :4, :4] = 1  # 16/64 -> weight 4
    mask[1] = 1  # full -> weight 1
    mask[2, :, :1, :2] = 1  # 2/64 -> 32, clamped to 5
    got = masked_epsilon_loss(eps_pred, eps, mask)
    expected = 0.0
    for b, wgt in enumerate((4.0, 1.0, 5.0)):
        for c in range(4):
            d = (mask[b, 0] * eps_pred[b, c] - mask[b, 0] * eps[b, c]) ** 2
            expected += d.mean().item() * wgt
    assert got.item() == pytest.approx(expected / 12, rel=1e-5)
    # background errors do not count
    eps_pred2 = eps_pred.clone()
    eps_pred2[0, :, 5:, 5:] += 100
    assert masked_epsilon_loss(eps_pred2[:1], eps[:1], mask[:1]).item() == pytest.approx(
        masked_epsilon_loss(eps_pred[:1], eps[:1], mask[:1]).item())
    with pytest.raises(R2RUserError, match="same size"):
        masked_epsilon_loss(eps_pred, eps, mask[:, :, :4])


def _torchvision_like_state(seed=0):
    """A state dict with torchvision vgg16 key names (features.* + classifier.*)."""
    from training.losses import VGG16Features

    net = VGG16Features()
    g = torch.Generator().manual_seed(seed)
    state = {f"features.{k}": torch.randn(v.shape, generator=g) * 0.05 for k, v in net.vgg_state_dict().items()}
    state["features.28.weight"] = torch.zeros(512, 512, 3, 3)  # conv5_3: beyond features[:23], ignored
    state["classifier.0.weight"] = torch.zeros(4, 4)  # ignored
    return state


def test_vgg16_loads_torchvision_keys_pth_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    from training.losses import load_vgg16_features

    state = _torchvision_like_state()
    pth = tmp_path / "vgg16-397923af.pth"
    torch.save(state, pth)
    st = tmp_path / "vgg16.safetensors"
    save_file(state, str(st))
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    outs = []
    for path in (pth, st):
        net = load_vgg16_features(str(path))
        assert not net.is_random
        assert len(net.layers) == 23 and isinstance(net.layers[22], torch.nn.ReLU)  # ends at relu4_3
        assert torch.equal(net.layers[21].weight, state["features.21.weight"])
        outs.append(net(x))
    assert outs[0].shape == (1, 512, 4, 4)
    assert torch.equal(outs[0], outs[1])


def test_vgg16_errors(tmp_path, monkeypatch):
    from training.losses import RANDOM_VGG, VGG16_URL, load_vgg16_features

    with pytest.raises(R2RUserError, match="vgg16-397923af.pth"):
        load_vgg16_features(str(tmp_path / "missing.pth"))
    with pytest.raises(R2RUserError, match="loss.vgg16 is not set"):
        load_vgg16_features(None)
    state = _torchvision_like_state()
    state.pop("features.10.weight")
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(R2RUserError, match="missing"):
        load_vgg16_features(str(tmp_path / "partial.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(R2RUserError, match="re-download"):
        load_vgg16_features(str(tmp_path / "junk.pth"))
    monkeypatch.delenv("R2R_ALLOW_RANDOM_VGG", raising=False)
    with pytest.raises(R2RUserError, match="only for tests") as exc:
        load_vgg16_features(RANDOM_VGG)
    assert VGG16_URL in str(exc.value)
    monkeypatch.setenv("R2R_ALLOW_RANDOM_VGG", "1")
    assert load_vgg16_features(RANDOM_VGG).is_random


def test_contrastive_regularization_prefers_the_real_foreground(monkeypatch):
    from training.losses import RANDOM_VGG, ContrastiveRegularization, load_vgg16_features

    monkeypatch.setenv("R2R_ALLOW_RANDOM_VGG", "1")
    cr = ContrastiveRegularization(load_vgg16_features(RANDOM_VGG))
    g = torch.Generator().manual_seed(1)
    real = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    comp = real.clone()
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 8:24, 8:24] = 1
    comp = torch.where(mask > 0, (comp * 0.5 + 0.4).clamp(-1, 1), comp)
    near_real = cr(real + 0.01, real, comp, mask)
    near_comp = cr(comp + 0.01, real, comp, mask)
    assert 0 <= near_real.item() < 0.2 and near_comp.item() > 0.8
    pred = comp.clone().requires_grad_(True)
    cr(pred, real, comp, mask).backward()
    assert pred.grad.abs().sum() > 0 and not any(p.requires_grad for p in cr.vgg.parameters())


# --------------------------------------------------------------------------------------- config
def test_config_validation_and_overrides(tmp_path, tiny_dataset):
    from training.config import load_config

    cfg = tiny_config("unet", tiny_dataset, tmp_path / "out", release=tmp_path)
    path = write_config(tmp_path / "c.yaml", cfg)
    c = load_config(path, stage="unet", overrides=["train.max_steps=7", "train.learning_rate=2e-5"])
    assert c.train.max_steps == 7 and c.train.learning_rate == 2e-5 and c.data.resolution == 64
    with pytest.raises(R2RUserError, match="is for stage 'unet'"):
        load_config(path, stage="controller")
    with pytest.raises(R2RUserError, match=r"unknown key\(s\) \['learnin_rate'\]"):
        load_config(path, stage="unet", overrides=["train.learnin_rate=1"])
    with pytest.raises(R2RUserError, match="multiple of 64"):
        load_config(path, stage="unet", overrides=["data.resolution=100"])
    assert load_config(path, stage="unet", overrides=["train.mixed_precision=no"]).train.mixed_precision == "no"
    with pytest.raises(R2RUserError, match="'no', 'fp16' or 'bf16'"):
        load_config(path, stage="unet", overrides=["train.mixed_precision=fp8"])
    with pytest.raises(R2RUserError, match="expected an integer"):
        load_config(path, stage="unet", overrides=["train.batch_size=two"])
    with pytest.raises(R2RUserError, match="init.release"):
        load_config(path, stage="unet", overrides=["init.release=null"])
    with pytest.raises(R2RUserError, match="data.train is empty"):
        load_config(path, stage="unet", overrides=["data.train=[]"])
    with pytest.raises(R2RUserError, match="not found"):
        load_config(tmp_path / "nope.yaml", stage="unet")


def test_shipped_configs_parse():
    from training.config import load_config

    root = Path(__file__).resolve().parents[1] / "training" / "configs"
    names = sorted(p.name for p in root.glob("*.yaml"))
    assert {"clear_vae.yaml", "unet.yaml", "controller.yaml"} <= set(names)
    for stage in ("clear_vae", "unet", "controller"):
        c = load_config(root / f"{stage}.yaml", stage=stage)
        assert c.stage == stage and c.data.resolution in (256, 512)
        assert (c.train.mixed_precision, c.train.gradient_checkpointing, c.train.compile) == ("auto", "auto", False)
    assert load_config(root / "clear_vae.yaml", stage="clear_vae").loss.cr_weight == 0.3


# --------------------------------------------------------------------------------------- data
def test_dataset_items_are_deterministic_and_augmented(tiny_dataset):
    from training.config import CropConfig, SourceConfig
    from training.data import HarmonizationDataset, list_records

    recs = list_records(SourceConfig(type="layout", root=tiny_dataset["layout"], split="train"))
    assert len(recs) == 4 and all(r.composite for r in recs)
    ds = HarmonizationDataset(recs, resolution=64, seed=3, crop_cfg=CropConfig(), need_hint=True)
    a, b = ds[(1, 0)], ds[(1, 0)]
    for k in a:
        assert torch.equal(a[k], b[k])
    assert a["real"].shape == (3, 64, 64) and a["hint"].shape == (7, 64, 64) and a["mask"].shape == (1, 64, 64)
    assert set(torch.unique(a["mask"]).tolist()) <= {0.0, 1.0}
    assert torch.equal(a["hint"][3:6], a["composite"]) and torch.equal(a["hint"][6:], a["mask"])
    assert a["real"].min() >= -1 and a["real"].max() <= 1
    epochs = [ds[(1, e)] for e in range(6)]
    assert any(not torch.equal(epochs[0]["real"], e["real"]) for e in epochs[1:])  # flips/crops vary per epoch
    assert all(e["mask"].mean() >= 0.01 for e in epochs)  # crops keep >= 1 % foreground here
    plain = HarmonizationDataset(recs, resolution=64, seed=3, crop_cfg=None, augment=False, need_hint=False)
    assert "hint" not in plain[(0, 0)]


def test_crop_keeps_foreground():
    from training.config import CropConfig
    from training.data import choose_crop

    mask = np.zeros((200, 200), bool)
    mask[170:, 170:] = True  # small corner object: many random crops miss it
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(50):
        t, left, h, w = choose_crop(rng, mask, CropConfig(tries=5))
        assert 0 <= t and t + h <= 200 and 0 <= left and left + w <= 200
        hits += mask[t:t + h, left:left + w].mean() >= 0.01
    rng = np.random.default_rng(0)
    single = sum(mask[t:t + h, left:left + w].mean() >= 0.01
                 for t, left, h, w in (choose_crop(rng, mask, CropConfig(tries=1)) for _ in range(50)))
    assert hits > single


def test_folder_source_makes_rpb_composites(tiny_dataset):
    from training.config import SourceConfig
    from training.data import HarmonizationDataset, list_records

    recs = list_records(SourceConfig(type="folder", root=tiny_dataset["images"], masks=tiny_dataset["masks"]))
    assert len(recs) == 4 and all(r.composite is None for r in recs)
    ds = HarmonizationDataset(recs, resolution=64, seed=0, crop_cfg=None, augment=False, need_hint=False)
    item = ds[(0, 0)]
    fg = item["mask"][0] > 0
    diff = (item["composite"] - item["real"]).abs().mean(0)
    assert diff[fg].mean() > 0.01  # foreground changed by RPB
    assert diff[~fg].mean() < 0.02  # background (almost) untouched
    assert not torch.equal(ds[(0, 1)]["composite"], item["composite"])  # a new composite every epoch
    with pytest.raises(R2RUserError, match="mask folder"):
        list_records(SourceConfig(type="folder", root=tiny_dataset["images"], masks="/nonexistent/masks"))


def test_epoch_plan_shards_and_mixtures():
    from training.data import EpochPlan

    one = EpochPlan([1.0] * 10, batch_size=2, seed=0)
    two = [EpochPlan([1.0] * 10, batch_size=2, seed=0, num_processes=2, process_index=p) for p in (0, 1)]
    assert one.batches_per_epoch == 5 and two[0].batches_per_epoch == 2
    seen = [i for p in two for _, b in p.batches(0) for i, _, _ in b]
    assert len(seen) == len(set(seen)) == 8  # disjoint shards, last incomplete global batch dropped
    # positions in the epoch order are global: 2 processes x batch 1 see what 1 process x batch 2 sees
    one_b2 = [key for _, b in EpochPlan([1.0] * 10, batch_size=2, seed=0).batches(0) for key in b]
    two_b1 = [EpochPlan([1.0] * 10, batch_size=1, seed=0, num_processes=2, process_index=p) for p in (0, 1)]
    merged = sorted((key for p in two_b1 for _, b in p.batches(0) for key in b), key=lambda k: k[2])
    assert merged == one_b2
    assert list(one.batches(1, start=3)) == list(one.batches(1))[3:]  # resume mid-epoch
    assert not np.array_equal(one.order(0), one.order(1))
    mix = EpochPlan([2.0] * 3 + [0.5] * 4, batch_size=1, seed=0)
    order = mix.order(0)
    assert len(order) == 8 and all((order == i).sum() == 2 for i in range(3))
    with pytest.raises(R2RUserError, match="fewer than one global batch"):
        EpochPlan([1.0] * 3, batch_size=2, seed=0, num_processes=2)


def test_loss_curve_and_sample_sheet(tmp_path):
    import cv2

    from training.pictures import draw_loss_curve, sample_sheet, write_png

    draw_loss_curve(str(tmp_path / "c.png"), list(range(1, 51)), [1 / s for s in range(1, 51)])
    img = cv2.imread(str(tmp_path / "c.png"))
    assert img.shape == (400, 800, 3) and (img < 200).any()
    sheet = sample_sheet([[np.zeros((64, 64, 3), np.uint8)] * 3, [np.full((64, 64), 255, np.uint8)] * 3],
                         ["a", "b", "c"], tile=128)
    assert sheet.shape == (24 + 256, 384, 3)
    write_png(str(tmp_path / "s.png"), sheet)
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_cli_reports_user_errors(tmp_path, capsys):
    from training.__main__ import main

    assert main(["unet", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text(json.dumps({"train": {"batch_size": 0}}))
    assert main(["unet", "--config", str(tmp_path / "bad.yaml")]) == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize("stage", ["clear_vae", "unet", "controller"])
def test_gradient_checkpointing_gives_the_same_gradients(stage, tiny_release, tiny_dataset, tmp_path, single_thread):
    from training.data import build_dataset, collate
    from training.stages import build_stage

    results = []
    for gc in (False, True):
        cfg = tiny_config(stage, tiny_dataset, tmp_path / "o", release=tiny_release, train={"gradient_checkpointing": gc})
        cfg["loss"]["cr_weight"] = 0.0
        c = load_cfg(cfg, tmp_path, f"gc{gc}.yaml")
        module, _ = build_stage(c, torch.device("cpu"), torch.float32)
        module.train()
        if gc and stage != "clear_vae":
            assert module.net.is_gradient_checkpointing
        elif gc:
            assert "checkpoint" in repr(module.net.decoder.up_blocks[0].resnets[0].forward)
        for m in module.net.modules():  # no dropout: compare exactly
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        ds, _ = build_dataset(c.data.train, c.data, seed=0, need_hint=stage == "controller", augment=False)
        loss, _ = module(collate([ds.load(0, 0), ds.load(1, 0)]), torch.Generator().manual_seed(0))
        loss.backward()
        grads = [p.grad.clone() for p in module.net.parameters() if p.grad is not None]
        results.append((loss.item(), grads))
    (l0, g0), (l1, g1) = results
    assert l0 == pytest.approx(l1, rel=1e-5) and len(g0) == len(g1) > 0
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(g0, g1))


def test_bf16_mixed_precision_step_on_cpu(tiny_release, tiny_dataset, tmp_path, single_thread):
    from training.trainer import run_training

    reset_accelerate()
    cfg = tiny_config("unet", tiny_dataset, tmp_path / "o", release=tiny_release,
                      train={"max_steps": 1, "mixed_precision": "bf16"})
    cfg["data"]["val"] = []
    res = run_training(load_cfg(cfg, tmp_path))
    reset_accelerate()
    assert res["finished"] and np.isfinite(res["history"][0][1])
