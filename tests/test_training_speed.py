"""The training device rules (training/speed.py), checked on the CPU with simulated devices: precision,
gradient checkpointing from the memory estimate, fused AdamW, TF32, data loading, compile -- and that a run
applies them, logs them, and writes checkpoints in the same format as before."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from test_training import load_cfg, reset_accelerate, single_thread, tiny_config  # noqa: F401

from training import speed
from training.speed import DeviceFacts

GIB = 1 << 30
H200 = DeviceFacts("cuda", "NVIDIA H200", free_bytes=139 * GIB, total_bytes=141 * GIB, bf16=True)
CARD_8GB = DeviceFacts("cuda", "8 GB card", free_bytes=6 * GIB, total_bytes=8 * GIB, bf16=True)
T4 = DeviceFacts("cuda", "Tesla T4", free_bytes=14 * GIB, total_bytes=15 * GIB, bf16=False)
CPU = DeviceFacts("cpu", "CPU", free_bytes=20 * GIB, bf16=True)
CONTROLLER_PARAMS = 414_328_656  # the full-size Harmony Controller's trained parameters (conv_in frozen)
UNET_PARAMS = 859_535_364


@pytest.fixture
def training_log(caplog):
    """caplog on the ``r2r.training`` logger itself (python -m training, run in-process by other tests, stops
    its propagation to the root logger, where caplog listens)."""
    logger = logging.getLogger("r2r.training")
    old_level = logger.level
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.INFO)
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.setLevel(old_level)


# ------------------------------------------------------------------------------------ rules
@pytest.mark.parametrize("setting,facts,resumed,expected", [
    ("auto", H200, None, "bf16"),
    ("auto", T4, None, "fp16"),
    ("auto", CPU, None, "no"),
    ("auto", H200, "fp16", "fp16"),  # a resumed run keeps its precision
    ("auto", CPU, "bf16", "bf16"),
    ("fp16", H200, None, "fp16"),  # an explicit choice is kept
    ("no", H200, "bf16", "no"),
])
def test_precision_rule(setting, facts, resumed, expected):
    got, why = speed.choose_precision(setting, facts.type, facts.bf16, resumed)
    assert got == expected and why


def test_activation_estimate_scales_with_batch_resolution_and_dtype():
    one = speed.activation_bytes("unet", 1, 512, "bf16")
    assert one == speed.ACTIVATION_BYTES_PER_PIXEL["unet"][2] * 512 * 512
    assert 0.8 * GIB < one < 1.0 * GIB  # the measured ~0.88 GiB per 512² image in 16-bit
    assert speed.activation_bytes("unet", 4, 512, "bf16") == 4 * one
    assert speed.activation_bytes("unet", 1, 1024, "bf16") == 4 * one
    assert speed.activation_bytes("unet", 1, 512, "no") > 1.9 * one
    assert speed.activation_bytes("clear_vae", 1, 256, "bf16") > speed.activation_bytes("unet", 1, 256, "bf16")


def test_training_estimate_counts_optimizer_state():
    base = speed.estimate_training_bytes("controller", 4, 512, "bf16", 0)
    assert speed.estimate_training_bytes("controller", 4, 512, "bf16", 10**6) - base == 14 * 10**6
    assert speed.estimate_training_bytes("controller", 4, 512, "no", 10**6) - \
        speed.estimate_training_bytes("controller", 4, 512, "no", 0) == 12 * 10**6
    assert speed.estimate_training_bytes("controller", 4, 512, "bf16", 10**6, num_processes=2) - base == 18 * 10**6


@pytest.mark.parametrize("facts,stage,params,batch,res,expected", [
    (H200, "controller", CONTROLLER_PARAMS, 4, 512, False),  # the run: a 141 GB card needs no checkpointing
    (H200, "unet", UNET_PARAMS, 4, 512, False),
    (CARD_8GB, "controller", CONTROLLER_PARAMS, 4, 512, True),
    (CARD_8GB, "clear_vae", 50_000_000, 4, 256, True),
    (T4, "clear_vae", 50_000_000, 1, 256, False),
    (CPU, "unet", 1_000_000, 2, 64, False),
])
def test_gradient_checkpointing_rule(facts, stage, params, batch, res, expected):
    need = speed.estimate_training_bytes(stage, batch, res, "bf16", params)
    on, why = speed.choose_gradient_checkpointing("auto", need_bytes=need, free_bytes=facts.free_bytes)
    assert on is expected and "auto:" in why and "GiB" in why


def test_gradient_checkpointing_explicit_and_unknown_memory():
    assert speed.choose_gradient_checkpointing(True, need_bytes=1, free_bytes=10**12)[0] is True
    assert speed.choose_gradient_checkpointing(False, need_bytes=10**12, free_bytes=1)[0] is False
    on, why = speed.choose_gradient_checkpointing("auto", need_bytes=1, free_bytes=None)
    assert on and "unknown" in why
    limit = int(speed.FREE_FRACTION * 10 * GIB)
    assert speed.choose_gradient_checkpointing("auto", need_bytes=limit, free_bytes=10 * GIB)[0] is False
    assert speed.choose_gradient_checkpointing("auto", need_bytes=limit + 1, free_bytes=10 * GIB)[0] is True


def test_optimizer_tf32_loader_and_compile_rules():
    assert speed.choose_fused_adamw("cuda")[0] and not speed.choose_fused_adamw("cpu")[0]
    assert speed.choose_tf32("cuda")[0] and not speed.choose_tf32("cpu")[0]
    assert speed.data_loader_options("cuda", 4) == {"num_workers": 4, "pin_memory": True, "persistent_workers": True,
                                                    "prefetch_factor": 4}
    assert speed.data_loader_options("cuda", 0) == {"num_workers": 0, "pin_memory": True}
    assert speed.data_loader_options("cpu", 2)["pin_memory"] is False
    assert speed.data_loader_options("cpu", 0) == {"num_workers": 0, "pin_memory": False}
    assert speed.choose_compile(False, "cuda")[0] is False and speed.choose_compile(True, "cuda")[0] is True


def test_plan_speed_combines_and_logs_the_rules(training_log, tmp_path):
    from training.config import TrainConfig

    train = TrainConfig(batch_size=4, gradient_checkpointing="auto", compile=False)
    plan = speed.plan_speed(train, stage="controller", resolution=512, num_workers=4, facts=H200, precision="bf16",
                            precision_reason="auto: test", trainable_params=CONTROLLER_PARAMS)
    assert (plan.precision, plan.gradient_checkpointing, plan.fused_adamw, plan.tf32) == ("bf16", False, True, True)
    assert plan.loader["pin_memory"] and plan.loader["persistent_workers"]
    summary = plan.summary()
    assert summary["free_gib"] == 139.0 and 5 < summary["estimate_gib"] < 15
    assert json.loads(json.dumps(summary)) == summary
    plan.log()
    text = training_log.text
    assert "gradient_checkpointing: False (auto:" in text and "fused_adamw: True (CUDA" in text
    assert "precision: bf16 (auto: test)" in text and "pin_memory" in text


# ------------------------------------------------------------------------------------ applying the rules
def test_tf32_context_restores_the_flags():
    b = torch.backends
    saved = (b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32, b.cudnn.benchmark)
    with speed.tf32_enabled(True):
        assert b.cuda.matmul.allow_tf32 and b.cudnn.allow_tf32 and b.cudnn.benchmark
    assert (b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32, b.cudnn.benchmark) == saved
    with speed.tf32_enabled(False):
        assert (b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32, b.cudnn.benchmark) == saved


def test_fused_adamw_after_a_foreach_checkpoint_keeps_the_state():
    """A checkpoint written by the default AdamW resumed with the fused kernel (a CPU run resumed on a GPU)."""
    from training.config import TrainConfig

    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    cfg = TrainConfig(learning_rate=1e-2)
    plain = speed.make_adamw(params, cfg, fused=False)
    for p in params:
        p.grad = torch.ones_like(p)
    plain.step()
    saved = plain.state_dict()
    assert saved["param_groups"][0]["fused"] is None
    clones = [torch.nn.Parameter(p.detach().clone()) for p in params]
    fused = speed.make_adamw(clones, cfg, fused=True)
    fused.load_state_dict(saved)
    speed.set_optimizer_mode(fused, fused=True)
    assert fused.param_groups[0]["fused"] is True
    for p, c in zip(params, clones):
        p.grad, c.grad = torch.ones_like(p), torch.ones_like(c)
    plain.step()
    fused.step()
    assert all(torch.allclose(p, c, atol=1e-6) for p, c in zip(params, clones))
    assert set(fused.state_dict()["state"][0]) == set(plain.state_dict()["state"][0])  # same format


def test_compile_keeps_the_state_dict_keys():
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    keys = list(net.state_dict())
    speed.compile_network(net)
    assert list(net.state_dict()) == keys


def test_one_loader_across_epochs_equals_the_per_epoch_order(tmp_path, single_thread):  # noqa: F811
    """The persistent DataLoader (1 worker) yields the same batches as the plain one, across an epoch boundary."""
    from test_training import make_tiny_dataset

    from training.config import DataConfig, SourceConfig
    from training.data import EpochPlan, build_dataset, iterate_batches

    data = make_tiny_dataset(tmp_path, n_train=4, n_test=0)
    cfg = DataConfig(train=[SourceConfig(root=data["layout"])], resolution=64)
    ds, repeats = build_dataset(cfg.train, cfg, seed=0, need_hint=False, augment=True)
    plan = EpochPlan(repeats, 2, seed=0)

    def take(options, n=5):
        out = []
        for e, k, batch in iterate_batches(ds, plan, 0, 1, options):
            out.append((e, k, batch["real"].clone()))
            if len(out) == n:
                break
        return out

    plain = take(0)
    pooled = take(speed.data_loader_options("cpu", 1))
    assert [(e, k) for e, k, _ in plain] == [(0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert [(e, k) for e, k, _ in pooled] == [(e, k) for e, k, _ in plain]
    assert all(torch.equal(a, b) for (_, _, a), (_, _, b) in zip(plain, pooled))


# ------------------------------------------------------------------------------------ in a run
@pytest.mark.parametrize("free,expected", [(1, True), (10**15, False)])
def test_a_run_applies_the_rules_and_keeps_the_checkpoint_format(free, expected, tiny_release, tmp_path, monkeypatch,
                                                                 single_thread, training_log):  # noqa: F811
    import training.trainer as tr

    monkeypatch.setattr(tr, "probe_device", lambda device: DeviceFacts("cpu", "simulated", free_bytes=free))
    reset_accelerate()
    from test_training import make_tiny_dataset

    data = make_tiny_dataset(tmp_path / "data", n_train=4, n_test=0)
    cfg = tiny_config("unet", data, tmp_path / "out", release=tiny_release, train={"max_steps": 1})
    cfg["data"]["val"] = []
    cfg["log"]["checkpoint_every"] = 1
    trainer = tr.Trainer(load_cfg(cfg, tmp_path))
    try:
        trainer.setup()
        assert trainer._net().is_gradient_checkpointing is expected
        assert trainer.precision == "no" and trainer.cfg.train.mixed_precision == "no"  # auto on a CPU
        trainer.train()
    finally:
        trainer.close()
        reset_accelerate()
    assert f"gradient_checkpointing: {expected} (auto:" in training_log.text
    start = json.loads((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()[0])
    assert start["event"] == "start" and start["speed"]["gradient_checkpointing"] is expected
    state = json.loads((tmp_path / "out" / "checkpoints" / "checkpoint-000001" / "trainer_state.json").read_text())
    assert sorted(state) == sorted([
        "format", "global_step", "micro_step", "epoch", "batch_in_epoch", "history", "val", "seed", "stage",
        "skipped_items", "num_processes", "config", "data_fingerprint", "optimizer", "lr_scheduler", "grad_scaler",
        "ema"])
    assert state["format"] == "r2r-training-checkpoint/2" and state["config"]["train"]["mixed_precision"] == "no"


def test_auto_precision_resumes_with_the_checkpoints_precision(tiny_release, tmp_path):
    from training.preflight import config_differences

    cfg = load_cfg(tiny_config("unet", {"layout": str(tmp_path)}, tmp_path / "o", release=tiny_release), tmp_path)
    assert cfg.train.mixed_precision == "auto"
    saved = {"config": {**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "mixed_precision": "bf16"}}}
    assert config_differences(saved, cfg, 1, {}) == []  # auto continues a bf16 run in bf16
    cfg.train.mixed_precision = "fp16"
    assert config_differences(saved, cfg, 1, {}) == ["train.mixed_precision: was 'bf16', now 'fp16'"]


def test_out_of_memory_is_a_user_error_with_the_estimate(tiny_release, tmp_path, monkeypatch, capsys, single_thread):  # noqa: F811
    from test_bad_inputs_training import run_cli
    from test_training import make_tiny_dataset, write_config

    import training.stages as stages

    def oom(self, batch, generator):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(stages.DiffusionStageModule, "forward", oom)
    data = make_tiny_dataset(tmp_path / "data", n_train=4, n_test=0)
    cfg = tiny_config("unet", data, tmp_path / "out", release=tiny_release, train={"max_steps": 1})
    cfg["data"]["val"] = []
    code, err = run_cli(capsys, "unet", "--config", write_config(tmp_path / "c.yaml", cfg))
    assert code == 2 and "ran out of memory at step 0" in err and "Lower train.batch_size" in err
    assert "gradient_checkpointing: true" in err and "GiB beyond the weights" in err
