"""The three training stages on the tiny release: overfitting, exact resume, initialisations, outputs
that load in r2r.weights / R2RPipeline, and a 2-process CPU accelerate (gloo) run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_training import load_cfg, make_tiny_dataset, reset_accelerate, single_thread, tiny_config  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("single_thread")  # one torch thread, random VGG allowed


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny_dataset_stages"))


def _state(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "diffusion_pytorch_model.safetensors"))


def _fixed_batch_loss(trainer, seeds=(0, 1, 2, 3)) -> float:
    """Mean stage loss on the same two items with the same noise/timesteps (eval mode: no dropout)."""
    from training.data import collate

    module = trainer.acc.unwrap_model(trainer.model)
    batch = collate([trainer.train_ds.load(i, 0) for i in (0, 1)])
    was = module.training
    module.eval()
    with torch.no_grad():
        losses = [module(batch, torch.Generator().manual_seed(s))[0].item() for s in seeds]
    module.train(was)
    return sum(losses) / len(losses)


@pytest.mark.parametrize("stage,lr,steps", [("clear_vae", 1e-3, 6), ("unet", 1e-3, 6), ("controller", 1e-2, 8)])
def test_stage_overfits_a_fixed_batch(stage, lr, steps, tiny_release, tiny_dataset, tmp_path):
    from training.trainer import Trainer

    reset_accelerate()
    cfg = tiny_config(stage, tiny_dataset, tmp_path / "out", release=tiny_release,
                      train={"batch_size": 2, "max_steps": steps, "learning_rate": lr})
    cfg["data"].update(flip=False, crop_enabled=False)
    cfg["data"]["train"][0]["limit"] = 2  # the same two items every step
    cfg["data"]["val"] = []
    trainer = Trainer(load_cfg(cfg, tmp_path))
    trainer.setup()
    before = _fixed_batch_loss(trainer)
    result = trainer.train()
    after = _fixed_batch_loss(trainer)
    assert result["finished"] and result["steps"] == steps
    assert after < 0.97 * before, (before, after, result["history"])
    out = Path(result["component_dir"])
    assert (out / "config.json").is_file() and (out / "diffusion_pytorch_model.safetensors").is_file()
    # the trained part changed, the frozen part did not
    init = {"clear_vae": tiny_release / "clear_vae",
            "unet": tiny_release / "stable-diffusion-inpainting" / "unet"}.get(stage)
    if init is not None:
        a, b = _state(init), _state(out)
        changed = {k for k in a if not torch.equal(a[k].float(), b[k].float())}
        if stage == "clear_vae":
            assert changed and all(k.startswith(("decoder.", "filters.")) for k in changed)
            assert any(k.endswith("skip_connect.conv.weight") for k in changed)
            assert not any(k.endswith(("Sobel_x", "Edge")) for k in changed)  # fixed kernels stay fixed
        else:
            assert len(changed) > 0.9 * len(a)


def _run(cfg, tmp_path, name, **kwargs):
    from training.trainer import run_training

    reset_accelerate()
    return run_training(load_cfg(cfg, tmp_path, name), **kwargs)


def test_resume_continues_exactly(tiny_release, tiny_dataset, tmp_path):
    """Interrupted at step 2 and resumed == uninterrupted (losses bit-identical, same final weights), with
    augmentation, accumulation, dropout, EMA and the contrastive loss all active."""
    common = dict(release=tiny_release,
                  train={"batch_size": 1, "gradient_accumulation_steps": 2, "max_steps": 4, "learning_rate": 1e-3,
                         "ema": {"enabled": True, "decay": 0.9}})
    cfg_a = tiny_config("clear_vae", tiny_dataset, tmp_path / "a", **common)
    cfg_a["data"]["val"] = []
    full = _run(cfg_a, tmp_path, "a.yaml")
    cfg_b = tiny_config("clear_vae", tiny_dataset, tmp_path / "b", **common)
    cfg_b["data"]["val"] = []
    part = _run(cfg_b, tmp_path, "b.yaml", stop_after=2)
    assert not part["finished"] and part["steps"] == 2
    assert not (tmp_path / "b" / "clear_vae").exists()  # no output before the run finishes
    ckpts = sorted(os.listdir(tmp_path / "b" / "checkpoints"))
    assert ckpts == ["checkpoint-000002"]
    metrics = tmp_path / "b" / "metrics.jsonl"
    with open(metrics, "a") as fh:  # a crash after the checkpoint: stale + cut lines
        fh.write('{"step": 3, "loss": 99.0}\n{"step": 4, "lo')
    before = metrics.read_bytes()
    resumed = _run(cfg_b, tmp_path, "b.yaml", resume="latest")
    assert resumed["finished"]
    assert metrics.read_bytes().startswith(before)  # appended, never truncated
    assert [h[1] for h in full["history"]] == [h[1] for h in resumed["history"]]
    assert len(full["history"]) == 4 and len({h[1] for h in full["history"]}) > 1
    wa, wb = _state(tmp_path / "a" / "clear_vae"), _state(tmp_path / "b" / "clear_vae")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # EMA weights were written (they differ from the raw last weights)
    import json

    from training.checkpoint import read_metrics

    meta = json.loads((tmp_path / "b" / "r2r_training.json").read_text())
    assert meta["stage"] == "clear_vae" and meta["steps"] == 4 and meta["init"]["ema"] is True
    assert meta["init"]["vgg16"] == "RANDOM (tests only)"
    records = read_metrics(metrics)  # the stale step-3 line is superseded by the resume event
    assert [r["event"] for r in records if "event" in r] == ["start", "resume"]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert [r["loss"] for r in steps] == [h[1] for h in full["history"]]
    # the checkpoint holds no pickle: safetensors + JSON only
    ckpt_files = sorted(os.listdir(tmp_path / "b" / "checkpoints" / "checkpoint-000004"))
    assert ckpt_files == ["ema.safetensors", "model.safetensors", "optimizer.safetensors", "trainer_state.json"]
    assert (tmp_path / "b" / "loss_curve.png").is_file()


def test_initialisations(tiny_release, tmp_path):
    """clear_vae from a stock SD VAE (diffusers folder and SD-format file); unet from an SD-format
    (DiffHarmony-style) checkpoint; controller from the U-Net's encoder half (ref §g.3)."""
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    from r2r.weights import convert, load_clear_vae, load_unet
    from training.stages import _load_unet_init, controller_from_unet, load_clear_vae_init

    cv = load_clear_vae(tiny_release / "clear_vae", torch_dtype=torch.float32)
    sd_cfg = {k: v for k, v in cv.config.items() if not k.startswith("_") and k not in ("use_skip", "training")}
    sd_cfg["down_block_types"] = ["DownEncoderBlock2D"] * 4
    sd_cfg["up_block_types"] = ["UpDecoderBlock2D"] * 4
    vae = AutoencoderKL.from_config(sd_cfg)
    vae.save_pretrained(tmp_path / "sd_vae", safe_serialization=True)
    from_folder = load_clear_vae_init(str(tmp_path / "sd_vae"), None)
    sd_state = convert.clear_vae_to_sd({k: v for k, v in vae.state_dict().items()}, prefix="")
    save_file(sd_state, str(tmp_path / "sd_vae.safetensors"))
    from_file = load_clear_vae_init(str(tmp_path / "sd_vae.safetensors"), str(tiny_release))
    ref = vae.state_dict()
    for m in (from_folder, from_file):
        s = m.state_dict()
        assert all(torch.equal(s[k], ref[k]) for k in ref)
        skip = [k for k in s if k.endswith("skip_connect.conv.weight")]
        assert len(skip) == 12 and all(not s[k].any() for k in skip)  # zero-initialised
        assert all(torch.equal(f.alpha, torch.ones(9)) for f in m.filters)
    with pytest.raises(Exception, match="does not exist"):
        load_clear_vae_init(str(tmp_path / "nope.ckpt"), None)

    unet = load_unet(tiny_release / "stable-diffusion-inpainting" / "unet", torch_dtype=torch.float32)
    torch.save({"state_dict": convert.unet_to_sd(unet.state_dict())}, tmp_path / "diff-base.ckpt")
    u2 = _load_unet_init(str(tmp_path / "diff-base.ckpt"), str(tiny_release))
    assert all(torch.equal(a, b) for a, b in zip(unet.state_dict().values(), u2.state_dict().values()))

    ctrl = controller_from_unet(unet)
    cs, us = ctrl.state_dict(), unet.state_dict()
    copied = [k for k in cs if k in us and not k.startswith("conv_in.")]
    assert any(k.startswith("down_blocks.") for k in copied) and any(k.startswith("mid_block.") for k in copied)
    assert all(torch.equal(cs[k], us[k]) for k in copied)
    assert cs["conv_in.weight"].shape[1] == 4 and us["conv_in.weight"].shape[1] == 9
    zero = [k for k in cs if k.startswith(("controlnet_down_blocks.", "controlnet_mid_block.")) or
            (k.startswith("PCCAs.") and ".mlp.2." in k) or k.startswith("controlnet_cond_embedding.conv_out.")]
    assert zero and all(not cs[k].any() for k in zero)


def test_stage_outputs_assemble_a_loadable_release(tiny_release, tiny_dataset, tmp_path):
    """clear_vae -> unet -> controller into one release folder (--output-release), then r2r.weights and
    R2RPipeline load it and the loaded weights are exactly the trained ones."""
    import json

    from r2r.pipeline import R2RPipeline
    from r2r.weights import load_components

    release = tmp_path / "release"
    outs = {}
    base = tiny_release
    for stage in ("clear_vae", "unet", "controller"):
        cfg = tiny_config(stage, tiny_dataset, tmp_path / stage, release=base,
                          train={"max_steps": 1, "learning_rate": 1e-3})
        cfg["output"]["release"] = str(release)
        cfg["data"]["val"][0]["limit"] = 1
        cfg["log"]["sample_every"] = 1
        res = _run(cfg, tmp_path, f"{stage}.yaml")
        outs[stage] = Path(res["component_dir"])
        assert res["metrics"]["count"] == 1 and "psnr" in res["metrics"]
        assert (tmp_path / stage / "samples" / "step-000001.png").is_file()
        base = release  # the next stage starts from the assembled release
    comps = load_components(release, torch_dtype=torch.float32)
    for stage, model in (("clear_vae", comps.clear_vae), ("unet", comps.unet), ("controller", comps.controller)):
        trained = _state(outs[stage])
        loaded = model.state_dict()
        assert all(torch.equal(trained[k].float(), loaded[k].float()) for k in trained), stage
    meta = json.loads((release / "r2r_training.json").read_text())
    assert meta["stage"] == "controller" and meta["component"] == "stable-diffusion-inpainting/controlnet"
    assert (release / "stable-diffusion-inpainting" / "text_encoder").is_dir()
    assert not [p for p in release.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]
    pipe = R2RPipeline.from_pretrained(release)
    comp = torch.rand(1, 3, 64, 64)
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1
    out = pipe(comp, mask, num_inference_steps=2, generator=0, max_side=64)
    assert out.images.shape == (1, 3, 64, 64) and torch.isfinite(out.images).all()


@pytest.mark.slow
def test_two_process_cpu_run_equals_one_process(tiny_release, tiny_dataset, tmp_path):
    """``accelerate launch --multi_gpu --num_processes 2`` on a machine without GPUs: two CPU processes (gloo
    DDP; ``accelerate launch --cpu`` would need MPI for several CPU processes) with batch 1 each train exactly
    like one process with batch 2: same items, same per-item noise, averaged gradients."""
    import json

    import yaml

    def cfg_for(out, batch):
        cfg = tiny_config("unet", tiny_dataset, tmp_path / out, release=tiny_release,
                          train={"batch_size": batch, "max_steps": 2, "learning_rate": 1e-3})
        cfg["data"]["val"] = []
        cfg["log"]["checkpoint_every"] = 1
        return cfg

    (tmp_path / "two.yaml").write_text(yaml.safe_dump(cfg_for("two", 1)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
           "-m", "training", "unet", "--config", str(tmp_path / "two.yaml")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout
    state = json.loads((tmp_path / "two" / "checkpoints" / "checkpoint-000002" / "trainer_state.json").read_text())
    assert state["num_processes"] == 2 and state["global_step"] == 2

    one = _run(cfg_for("one", 2), tmp_path, "one.yaml")
    assert [h[1] for h in state["history"]] == pytest.approx([h[1] for h in one["history"]], rel=1e-4)
    w2 = _state(tmp_path / "two" / "stable-diffusion-inpainting" / "unet")
    w1 = _state(tmp_path / "one" / "stable-diffusion-inpainting" / "unet")
    init = _state(tiny_release / "stable-diffusion-inpainting" / "unet")
    u1 = torch.cat([(w1[k] - init[k].float()).flatten() for k in w1])
    u2 = torch.cat([(w2[k] - init[k].float()).flatten() for k in w1])
    assert u1.norm() > 0.1  # it trained
    # the same update up to float rounding (Adam amplifies rounding where gradients are ~0: compare the updates)
    assert (u1 - u2).norm() < 1e-3 * u1.norm() and (u1 - u2).abs().max() < 1e-3
