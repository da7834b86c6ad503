"""Bad and edge inputs on the trainer surface (``python -m training ...``).

Every refused input must end with exit code 2, an actionable message on stderr, no traceback, no model
loaded (the refusal comes first) and no file of the output folder changed. The valid edge cases
(resume an unchanged run, --overwrite, --force-resume, --skip-bad-files, a file corrupted mid-run)
must give the right result. Tiny models, one or two optimizer steps.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_training import make_tiny_dataset, reset_accelerate, single_thread, tiny_config, write_config  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("single_thread")


# ----------------------------------------------------------------------------------------------- helpers
def tree_hash(root: Path) -> dict:
    """relative path -> sha256 of every file (and folders as such) under ``root``."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _config(tmp: Path, data: dict, release: Path, out: Path, max_steps: int = 1) -> Path:
    cfg = tiny_config("clear_vae", data, out, release=release,
                      train={"batch_size": 2, "max_steps": max_steps, "learning_rate": 1e-3})
    cfg["loss"]["cr_weight"] = 0.0
    cfg["data"]["val"] = []
    cfg["log"]["checkpoint_every"] = 1
    return write_config(tmp / f"cfg-{len(list(tmp.glob('cfg-*.yaml')))}.yaml", cfg)


def run_cli(capsys, *argv) -> tuple[int, str]:
    from training.__main__ import main

    reset_accelerate()
    try:
        code = main([str(a) for a in argv])
    finally:
        reset_accelerate()
    cap = capsys.readouterr()
    text = cap.out + cap.err
    assert "Traceback" not in text
    return code, cap.err


@pytest.fixture
def no_model_load(monkeypatch):
    """A refusal must come before any network is built."""
    import training.trainer

    def refuse(*_a, **_k):
        raise AssertionError("a model was loaded before the input was refused")

    monkeypatch.setattr(training.trainer, "build_stage", refuse)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("bad_inputs_data"), n_train=4, n_test=1)


@pytest.fixture(scope="module")
def template(tmp_path_factory, dataset, tiny_release):
    """A finished 1-step clear_vae run (with its checkpoint) to copy into each test."""
    from training.__main__ import main

    tmp = tmp_path_factory.mktemp("bad_inputs_template")
    out = tmp / "run"
    cfg = _config(tmp, dataset, tiny_release, out)
    reset_accelerate()
    assert main(["clear_vae", "--config", str(cfg)]) == 0
    reset_accelerate()
    assert (out / "checkpoints" / "checkpoint-000001" / "trainer_state.json").is_file()
    return out


@pytest.fixture
def used(template, tmp_path):
    """A copy of the template run: (config path, output folder)."""
    out = tmp_path / "run"
    shutil.copytree(template, out)
    return out


def _cfg_for(tmp_path, dataset, tiny_release, out, **kwargs):
    return _config(tmp_path, dataset, tiny_release, out, **kwargs)


def _metrics(out: Path) -> list[dict]:
    from training.checkpoint import read_metrics

    return read_metrics(out / "metrics.jsonl")


# ----------------------------------------------------------------------------------------------- output folder
def test_used_folder_needs_resume_or_overwrite_cli(used, dataset, tiny_release, tmp_path):
    """The real command line: exit 2, both options named, nothing changed, no traceback."""
    cfg = _cfg_for(tmp_path, dataset, tiny_release, used)
    before = tree_hash(used)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "training", "clear_vae", "--config", str(cfg)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--resume latest" in proc.stderr and "--overwrite" in proc.stderr and "already holds a run" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert tree_hash(used) == before


def test_overwrite_moves_the_old_run_aside(used, dataset, tiny_release, tmp_path, capsys):
    cfg = _cfg_for(tmp_path, dataset, tiny_release, used)
    before = tree_hash(used)
    code, _ = run_cli(capsys, "clear_vae", "--config", cfg, "--overwrite")
    assert code == 0
    (aside,) = tmp_path.glob("run.previous-*")
    assert tree_hash(aside) == before  # the old run is intact, only moved
    assert [r["event"] for r in _metrics(used) if "event" in r] == ["start"]  # a new run, new log
    assert (used / "clear_vae" / "diffusion_pytorch_model.safetensors").is_file()


def test_overwrite_keeps_the_old_run_when_the_model_cannot_load(used, dataset, tiny_release, tmp_path, capsys):
    """--overwrite moves the old run aside only after the models loaded: weights that do not fit leave it as it was."""
    import torch
    from safetensors.torch import save_file

    junk = tmp_path / "not_a_vae.safetensors"
    save_file({"something.else": torch.zeros(3)}, str(junk))
    cfg = _cfg_for(tmp_path, dataset, tiny_release, used)
    before = tree_hash(used)
    code, err = run_cli(capsys, "clear_vae", "--config", cfg, "--overwrite", "--set", f"init.weights={junk}")
    assert code == 2 and str(junk) in err
    assert tree_hash(used) == before and not list(tmp_path.glob("run.previous-*"))


def test_overwrite_refuses_a_folder_that_holds_an_input(dataset, tiny_release, tmp_path, capsys, no_model_load):
    data_copy = tmp_path / "box" / "data"
    shutil.copytree(Path(dataset["layout"]), data_copy)
    (tmp_path / "box" / "metrics.jsonl").write_text("{}\n")
    cfg = _cfg_for(tmp_path, {"layout": str(data_copy)}, tiny_release, tmp_path / "box")
    before = tree_hash(tmp_path / "box")
    code, err = run_cli(capsys, "clear_vae", "--config", cfg, "--overwrite")
    assert code == 2 and "holds an input of this run" in err and "data.train[0].root" in err
    assert tree_hash(tmp_path / "box") == before


@pytest.mark.parametrize("kind", ["file", "under_a_file"])
def test_output_dir_not_a_creatable_folder(kind, dataset, tiny_release, tmp_path, capsys, no_model_load):
    blocker = tmp_path / "blocker.txt"
    blocker.write_text("not a folder")
    out = blocker if kind == "file" else blocker / "run"
    cfg = _cfg_for(tmp_path, dataset, tiny_release, out)
    code, err = run_cli(capsys, "clear_vae", "--config", cfg)
    assert code == 2 and "output.dir" in err and "is a file" in err
    assert blocker.read_text() == "not a folder"


# ----------------------------------------------------------------------------------------------- resume
def test_resume_unchanged_config_continues(used, dataset, tiny_release, tmp_path, capsys):
    cfg = _cfg_for(tmp_path, dataset, tiny_release, used)
    log_before = (used / "metrics.jsonl").read_bytes()
    code, _ = run_cli(capsys, "clear_vae", "--config", cfg, "--resume", "latest", "--max-steps", "2")
    assert code == 0
    assert (used / "metrics.jsonl").read_bytes().startswith(log_before)  # appended, not truncated
    recs = _metrics(used)
    assert [r["event"] for r in recs if "event" in r] == ["start", "resume"]
    assert [r["step"] for r in recs if "loss" in r] == [1, 2]
    assert (used / "checkpoints" / "checkpoint-000002").is_dir()
    assert json.loads((used / "r2r_training.json").read_text())["steps"] == 2


@pytest.mark.parametrize("override,named", [
    ("seed=1", "seed: was 0, now 1"),
    ("train.batch_size=1", "train.batch_size: was 2, now 1"),
    ("train.lr_scheduler=linear", "train.lr_scheduler"),
    ("data.train=[{type: layout, root: %(layout)s, split: train, limit: 3}]", "data.train items: was 4"),
    ("data.resolution=128", "data.resolution"),
])
def test_resume_refuses_a_changed_run(override, named, used, dataset, tiny_release, tmp_path, capsys, no_model_load):
    cfg = _cfg_for(tmp_path, dataset, tiny_release, used)
    before = tree_hash(used)
    code, err = run_cli(capsys, "clear_vae", "--config", cfg, "--resume", "latest", "--max-steps", "2",
                        "--set", override % {"layout": dataset["layout"]})
    assert code == 2 and named in err and "--force-resume" in err and "--overwrite" in err
    assert tree_hash(used) == before


def test_force_resume_continues_and_logs_the_changes(used, dataset, tiny_release, tmp_path, capsys):
    cfg = _cfg_for(tmp_path, dataset, tiny_release, used)
    code, _ = run_cli(capsys, "clear_vae", "--config", cfg, "--resume", "latest", "--max-steps", "2",
                      "--set", "seed=1", "--force-resume")
    assert code == 0
    (event,) = [r for r in _metrics(used) if r.get("event") == "resume"]
    assert any(c.startswith("seed:") for c in event["forced_changes"])


def test_forced_rollback_keeps_the_newer_checkpoints(used, dataset, tiny_release, tmp_path, capsys):
    """Resuming from an older checkpoint of the same folder moves the newer ones aside, never deletes them."""
    ck = used / "checkpoints" / "checkpoint-000001"
    newer = used / "checkpoints" / "checkpoint-000002"
    shutil.copytree(ck, newer)
    newer_hash = tree_hash(newer)
    cfg = _cfg_for(tmp_path, dataset, tiny_release, used)
    code, _ = run_cli(capsys, "clear_vae", "--config", cfg, "--resume", str(ck), "--max-steps", "2", "--force-resume")
    assert code == 0
    (aside,) = (used / "checkpoints").glob("superseded-at-*")
    assert tree_hash(aside / "checkpoint-000002") == newer_hash
    state = json.loads((newer / "trainer_state.json").read_text())  # the new timeline's step 2
    assert state["global_step"] == 2 and state["format"] == "r2r-training-checkpoint/2"


@pytest.mark.parametrize("case", ["no_checkpoint", "not_a_checkpoint", "with_overwrite", "force_alone",
                                  "damaged_state", "older_checkpoint", "max_steps_below"])
def test_resume_option_errors(case, used, dataset, tiny_release, tmp_path, capsys, no_model_load):
    cfg = _cfg_for(tmp_path, dataset, tiny_release, used)
    ck = used / "checkpoints" / "checkpoint-000001"
    args, expect = ["--resume", "latest"], ""
    if case == "no_checkpoint":
        shutil.rmtree(used / "checkpoints")
        expect = "holds no complete checkpoint"
    elif case == "not_a_checkpoint":
        args, expect = ["--resume", str(used / "clear_vae")], "is not a training checkpoint"
    elif case == "with_overwrite":
        args, expect = ["--resume", "latest", "--overwrite"], "contradict each other"
    elif case == "force_alone":
        args, expect = ["--force-resume"], "only applies with --resume"
    elif case == "damaged_state":
        (ck / "trainer_state.json").write_text('{"format": "r2r-training-checkpoint/2", "glob')
        expect = "is damaged"
    elif case == "max_steps_below":
        state = json.loads((ck / "trainer_state.json").read_text())
        state["global_step"] = 5
        (ck / "trainer_state.json").write_text(json.dumps(state))
        expect = "is below the checkpoint's step 5"
    else:  # a rollback to an older checkpoint would supersede the newer one
        shutil.copytree(ck, used / "checkpoints" / "checkpoint-000002")
        args, expect = ["--resume", str(ck), "--max-steps", "3"], "is not the newest"
    before = tree_hash(used)
    code, err = run_cli(capsys, "clear_vae", "--config", cfg, *args)
    assert code == 2 and expect in err, err
    assert tree_hash(used) == before


def test_a_folder_in_use_by_another_run_is_refused(used, dataset, tiny_release, tmp_path, capsys, no_model_load):
    from training.preflight import OutputLock

    cfg = _cfg_for(tmp_path, dataset, tiny_release, used)
    before = tree_hash(used)
    lock = OutputLock(str(used))  # what a running trainer holds
    try:
        for flags in (["--resume", "latest"], ["--overwrite"]):
            code, err = run_cli(capsys, "clear_vae", "--config", cfg, *flags)
            assert code == 2 and "another training run is using" in err
    finally:
        lock.release()
    assert tree_hash(used) == before


def _payload(marker: Path) -> bytes:
    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    return pickle.dumps(Evil())


PICKLE_NAMES = ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "scheduler.bin",
                "pytorch_model.bin", "scaler.pt")


def test_planted_pickles_are_never_unpickled(used, dataset, tiny_release, tmp_path, capsys):
    """Malicious pickles where the old (accelerate save_state) checkpoint had its pickles: resume ignores them."""
    probe = tmp_path / "probe-marker"
    pickle.loads(_payload(probe))  # the payload really runs code when unpickled ...
    assert probe.exists()
    marker = tmp_path / "PWNED"
    ck = used / "checkpoints" / "checkpoint-000001"
    for name in PICKLE_NAMES:
        (ck / name).write_bytes(_payload(marker))
    cfg = _cfg_for(tmp_path, dataset, tiny_release, used)
    code, _ = run_cli(capsys, "clear_vae", "--config", cfg, "--resume", "latest", "--max-steps", "2")
    assert code == 0 and not marker.exists()  # ... but resume never unpickles them
    assert sorted(os.listdir(used / "checkpoints" / "checkpoint-000002")) == [
        "model.safetensors", "optimizer.safetensors", "trainer_state.json"]


def test_old_pickle_checkpoint_is_refused(used, dataset, tiny_release, tmp_path, capsys, no_model_load):
    marker = tmp_path / "PWNED"
    ck = used / "checkpoints" / "checkpoint-000001"
    state = json.loads((ck / "trainer_state.json").read_text())
    state.pop("format")
    (ck / "trainer_state.json").write_text(json.dumps(state))
    for name in ("model.safetensors", "optimizer.safetensors"):
        (ck / name).unlink()
    for name in PICKLE_NAMES:
        (ck / name).write_bytes(_payload(marker))
    cfg = _cfg_for(tmp_path, dataset, tiny_release, used)
    before = tree_hash(used)
    code, err = run_cli(capsys, "clear_vae", "--config", cfg, "--resume", "latest")
    assert code == 2 and "pickle" in err and "--overwrite" in err
    assert not marker.exists() and tree_hash(used) == before


# ----------------------------------------------------------------------------------------------- data
@pytest.fixture
def bad_dataset(tmp_path):
    """5 training items + 1 test item; train item 0 truncated, train item 1's mask empty, the test item's
    composite a different size from its real image."""
    data = make_tiny_dataset(tmp_path / "bad_data", n_train=5, n_test=1)
    root = Path(data["layout"])
    train = [json.loads(x) for x in (root / "train.jsonl").read_text().splitlines() if x.strip()]
    test = [json.loads(x) for x in (root / "test.jsonl").read_text().splitlines() if x.strip()]
    from training.config import SourceConfig
    from training.data import list_records

    tr = list_records(SourceConfig(type="layout", root=str(root), split="train"))
    te = list_records(SourceConfig(type="layout", root=str(root), split="test"))
    assert len(tr) == len(train) == 5 and len(te) == len(test) == 1
    real0 = Path(tr[0].real)
    real0.write_bytes(real0.read_bytes()[:200])
    m1 = cv2.imread(tr[1].mask, cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(tr[1].mask, np.zeros_like(m1))
    comp = cv2.imread(te[0].composite)
    cv2.imwrite(te[0].composite, cv2.resize(comp, (comp.shape[1] // 2, comp.shape[0] // 2)))
    return data, [tr[0].real, tr[1].mask, te[0].composite]


def _bad_cfg(tmp_path, data, tiny_release, out):
    cfg = tiny_config("clear_vae", data, out, release=tiny_release,
                      train={"batch_size": 2, "max_steps": 1, "learning_rate": 1e-3})
    cfg["loss"]["cr_weight"] = 0.0
    cfg["data"]["val_limit"] = 1
    return write_config(tmp_path / "bad.yaml", cfg)


def test_bad_files_are_all_reported_before_training(bad_dataset, tiny_release, tmp_path, capsys, no_model_load):
    data, bad = bad_dataset
    out = tmp_path / "out"
    code, err = run_cli(capsys, "clear_vae", "--config", _bad_cfg(tmp_path, data, tiny_release, out))
    assert code == 2 and "3 training/validation item(s) cannot be used" in err and "--skip-bad-files" in err
    assert all(p in err for p in bad)
    assert "Could not read" in err and "is empty" in err and "is 44x36 but its real image" in err
    assert not out.exists()  # nothing written


def test_skip_bad_files_trains_without_them(bad_dataset, tiny_release, tmp_path, capsys):
    data, bad = bad_dataset
    out = tmp_path / "out"
    code, err = run_cli(capsys, "clear_vae", "--config", _bad_cfg(tmp_path, data, tiny_release, out), "--skip-bad-files")
    assert code == 0, err
    listed = (out / "bad_files.txt").read_text()
    assert len(listed.strip().splitlines()) == 3 and Path(bad[0]).as_posix() in listed
    meta = json.loads((out / "r2r_training.json").read_text())
    assert meta["data"]["bad_items_left_out"] == 3 and meta["data"]["train_items"] == 3


def test_file_corrupted_after_the_check_is_replaced_not_fatal(dataset, tiny_release, tmp_path, capsys):
    """A file that breaks after the data check (mid-run) is skipped with a warning and counted."""
    from training.checkpoint import read_metrics
    from training.config import load_config
    from training.data import list_records
    from training.trainer import Trainer

    data = make_tiny_dataset(tmp_path / "d", n_train=4, n_test=1)
    out = tmp_path / "out"
    cfg = load_config(_cfg_for(tmp_path, data, tiny_release, out, max_steps=2), stage="clear_vae")
    reset_accelerate()
    trainer = Trainer(cfg)  # the data check passes here
    Path(list_records(cfg.data.train[0])[0].real).write_bytes(b"broken")
    trainer.setup()
    result = trainer.train()
    reset_accelerate()
    assert result["finished"] and result["steps"] == 2
    assert trainer.state["skipped_items"] >= 1
    assert "warning: skipped an unreadable item" in capsys.readouterr().out
    assert any(r.get("skipped_items") for r in read_metrics(out / "metrics.jsonl"))


# ----------------------------------------------------------------------------------------------- config / options
@pytest.mark.parametrize("override,named", [
    ("train.learnin_rate=1", "learnin_rate"),
    ("seed=-1", "seed"),
    ("train.learning_rate=0", "train.learning_rate"),
    ("train.batch_size=0", "train.batch_size"),
    ("data.resolution=100", "data.resolution"),
    ("train.adam_beta1=1.5", "train.adam_beta1"),
    ("train.lr_scheduler=bogus", "train.lr_scheduler"),
    ("log.inference_steps=0", "log.inference_steps"),
    ("data.num_workers=-2", "data.num_workers"),
    ("train.max_grad_norm=-1", "train.max_grad_norm"),
])
def test_config_values_are_checked(override, named, dataset, tiny_release, tmp_path, capsys, no_model_load):
    cfg = _cfg_for(tmp_path, dataset, tiny_release, tmp_path / "out")
    code, err = run_cli(capsys, "clear_vae", "--config", cfg, "--set", override)
    assert code == 2 and named in err and "error:" in err
    if "learnin_rate" in override:
        assert "learning_rate" in err.split("known keys")[1]  # the valid keys are listed
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["data_root", "init_weights", "vgg16", "set_syntax", "set_yaml", "stop_after",
                                  "max_steps", "binary_config"])
def test_paths_and_options_are_checked(case, dataset, tiny_release, tmp_path, capsys, no_model_load):
    cfg = _cfg_for(tmp_path, dataset, tiny_release, tmp_path / "out")
    if case == "binary_config":
        cfg.write_bytes(bytes(range(256)) * 4)
    extra, expect = {
        "data_root": (["--set", f"data.train=[{{type: layout, root: {tmp_path / 'nope'}}}]"], "data.train[0].root"),
        "init_weights": (["--set", f"init.weights={tmp_path / 'missing.safetensors'}"], "init.weights"),
        "vgg16": (["--set", "loss.cr_weight=0.3", "--set", f"loss.vgg16={tmp_path / 'vgg.pth'}"], "loss.vgg16"),
        "set_syntax": (["--set", "train.max_steps"], "key=value"),
        "set_yaml": (["--set", "data.train=[{type: layout"], "not valid YAML"),
        "binary_config": ([], "cannot be read as YAML text"),
        "stop_after": (["--stop-after", "0"], "--stop-after"),
        "max_steps": (["--max-steps", "-3"], "train.max_steps"),
    }[case]
    code, err = run_cli(capsys, "clear_vae", "--config", cfg, *extra)
    assert code == 2 and expect in err, err
    assert not (tmp_path / "out").exists()
