"""The trainer never loses what the user already has (issue 22): the output folder's lock comes first, tampered
checkpoint metadata is refused like a bad config, a full disk or an over-long name is a user error that keeps
every earlier checkpoint, and a release folder the trainer did not assemble is not replaced without --overwrite.

Each refusal: exit code 2 (1 for a write that failed while training), an actionable message, no traceback,
and -- checked by hashing the folder before and after -- nothing existing changed. Tiny models, 1-3 steps.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_bad_inputs_training import _config, dataset, run_cli, template, tree_hash, used  # noqa: F401
from test_training import reset_accelerate, single_thread, write_config  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def model_loads(monkeypatch):
    """Counts the networks built (a refused run builds none)."""
    import training.trainer

    calls = []
    real = training.trainer.build_stage

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(training.trainer, "build_stage", counting)
    return calls


def _seed_cfg(tmp_path, dataset, tiny_release, out, seed, **kw):  # noqa: F811
    path = _config(tmp_path, dataset, tiny_release, out, **kw)
    import yaml

    cfg = yaml.safe_load(path.read_text())
    cfg["seed"] = seed
    return write_config(path, cfg)


def _run_beside(capsys, *argv) -> tuple[int, str]:
    """The CLI while another Trainer of this process is alive (accelerate's process state is shared, not reset)."""
    from training.__main__ import main

    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    assert "Traceback" not in cap.out + cap.err
    return code, cap.err


def _no_temp_left(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]


# ------------------------------------------------------------------------------------ 1. two trainers, one folder
def test_second_trainer_on_a_new_folder_is_refused_before_it_loads_anything(dataset, tiny_release, tmp_path, capsys,  # noqa: F811
                                                                             model_loads):
    """Trainer A has only checked (its folder is new and empty); B on the same folder, another seed, stops at once."""
    from training.config import load_config
    from training.trainer import Trainer

    out = tmp_path / "new" / "run"
    cfg_a = load_config(_seed_cfg(tmp_path, dataset, tiny_release, out, seed=0, max_steps=2), stage="clear_vae")
    cfg_b = _seed_cfg(tmp_path, dataset, tiny_release, out, seed=7, max_steps=2)
    reset_accelerate()
    a = Trainer(cfg_a)  # the lock is taken first: the folder exists (empty) from here on
    try:
        assert out.is_dir() and os.listdir(out) == []
        code, err = _run_beside(capsys, "clear_vae", "--config", cfg_b)
        assert code == 2 and "another training run is using the output folder" in err and "nothing was changed" in err
        assert model_loads == [] and out.is_dir()  # B built nothing, and left A's folder where it is
        a.setup()
        before = tree_hash(out)
        for flags in ([], ["--resume", "latest"], ["--overwrite"]):  # A holds a run now; B is refused the same
            code, err = _run_beside(capsys, "clear_vae", "--config", cfg_b, *flags)
            assert code == 2 and "another training run is using" in err
        assert tree_hash(out) == before and len(model_loads) == 1
        assert a.train()["finished"]
    finally:
        a.close()
        reset_accelerate()
    for ck in ("checkpoint-000001", "checkpoint-000002"):
        assert json.loads((out / "checkpoints" / ck / "trainer_state.json").read_text())["seed"] == 0


@pytest.mark.slow
def test_two_trainer_processes_a_few_seconds_apart(dataset, tiny_release, tmp_path, capsys):  # noqa: F811
    """The issue's case with real processes: A trains into a new folder, B starts on it with another seed."""
    out = tmp_path / "run"
    cfg_a = _seed_cfg(tmp_path, dataset, tiny_release, out, seed=0, max_steps=4)
    cfg_b = _seed_cfg(tmp_path, dataset, tiny_release, out, seed=5, max_steps=4)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": "", "R2R_ALLOW_RANDOM_VGG": "1"}
    a = subprocess.Popen([sys.executable, "-m", "training", "clear_vae", "--config", str(cfg_a)], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not out.exists() and a.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert out.exists(), "trainer A did not start"
        time.sleep(0.5)
        code, err = run_cli(capsys, "clear_vae", "--config", cfg_b)
        assert code == 2 and "another training run is using the output folder" in err
        _, a_err = a.communicate(timeout=300)
    finally:
        if a.poll() is None:
            a.kill()
    assert a.returncode == 0, a_err[-2000:]
    states = [json.loads(p.read_text()) for p in sorted((out / "checkpoints").glob("*/trainer_state.json"))]
    assert states and all(s["seed"] == 0 for s in states)
    events = [json.loads(line).get("event") for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert events.count("start") == 1 and "resume" not in events


@pytest.mark.parametrize("nested", [False, True])
def test_a_refused_run_leaves_no_folder_behind(nested, dataset, tiny_release, tmp_path, capsys):  # noqa: F811
    """The folder (and its missing parents) made for the lock is removed when the run stops with a user error."""
    out = tmp_path / "a" / "b" / "run" if nested else tmp_path / "run"
    cfg = _config(tmp_path, dataset, tiny_release, out)
    before = sorted(os.listdir(tmp_path))
    code, err = run_cli(capsys, "clear_vae", "--config", cfg, "--set", f"data.train=[{{root: {tmp_path / 'nope'}}}]")
    assert code == 2 and "is not a folder" in err
    assert sorted(os.listdir(tmp_path)) == before
    # a model that does not load stops the run after the lock too: nothing stays either
    code, err = run_cli(capsys, "clear_vae", "--config", cfg, "--set", f"init.weights={cfg}")
    assert code == 2 and sorted(os.listdir(tmp_path)) == before


def test_an_existing_empty_folder_is_kept(dataset, tiny_release, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    out.mkdir()
    cfg = _config(tmp_path, dataset, tiny_release, out)
    code, _ = run_cli(capsys, "clear_vae", "--config", cfg, "--set", f"data.train=[{{root: {tmp_path / 'nope'}}}]")
    assert code == 2 and out.is_dir()


def test_lock_file_fallback_without_flock(tmp_path, monkeypatch):
    """Systems without flock (Windows) use filelock on a lock file, which never makes a folder 'used'."""
    import training.folderlock as fl
    from r2r.errors import R2RUserError
    from training.preflight import _used

    monkeypatch.setattr(fl, "fcntl", None)
    out = tmp_path / "x" / "run"
    first = fl.OutputLock(str(out), create=True)
    assert (out / fl.LOCK_FILE).exists() and _used(str(out)) == []
    with pytest.raises(R2RUserError, match="another training run is using"):
        fl.OutputLock(str(out), create=True)
    first.release(cleanup=True)
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------ 2. tampered checkpoint metadata
def _tamper(state: dict, case: str):
    if case == "step_negative":
        state["global_step"] = -4
    elif case == "step_string":
        state["global_step"] = "4"
    elif case == "step_missing":
        del state["global_step"]
    elif case == "step_float":
        state["micro_step"] = 1.5
    elif case == "history":
        state["history"] = [[1, "low"]]
    elif case == "stage":
        state["stage"] = "vae"
    elif case == "processes":
        state["num_processes"] = 0
    elif case == "betas":
        state["optimizer"]["param_groups"][0]["betas"] = [0.9]
    elif case == "lr":
        state["optimizer"]["param_groups"][0]["lr"] = "fast"
    elif case == "scheduler":
        del state["lr_scheduler"]["base_lrs"]
    elif case == "scaler":
        state["grad_scaler"] = {"scale": -1.0, "_growth_tracker": 0}
    elif case == "ema":
        state["ema"] = {"decay": 2, "optimization_step": 0}
    elif case == "fingerprint":
        state["data_fingerprint"] = {"items": "four", "sha256": "x"}
    elif case == "top_level":
        return [state]
    return state


@pytest.mark.parametrize("case,field", [
    ("step_negative", "global_step"), ("step_string", "global_step"), ("step_missing", "global_step"),
    ("step_float", "micro_step"), ("history", "history[0]"), ("stage", "stage"), ("processes", "num_processes"),
    ("betas", "optimizer.param_groups[0].betas"), ("lr", "optimizer.param_groups[0].lr"),
    ("scheduler", "lr_scheduler.base_lrs"), ("scaler", "grad_scaler.scale"), ("ema", "ema.decay"),
    ("fingerprint", "data_fingerprint.items"), ("top_level", "(top level)"),
])
def test_tampered_trainer_state_is_refused_like_a_config(case, field, used, dataset, tiny_release, tmp_path,  # noqa: F811
                                                         capsys, model_loads):
    path = used / "checkpoints" / "checkpoint-000001" / "trainer_state.json"
    path.write_text(json.dumps(_tamper(json.loads(path.read_text()), case)))
    cfg = _config(tmp_path, dataset, tiny_release, used)
    before = tree_hash(used)
    code, err = run_cli(capsys, "clear_vae", "--config", cfg, "--resume", "latest", "--max-steps", "3")
    assert code == 2, err
    assert str(path) in err and repr(field) in err and "--overwrite" in err and "--resume" in err
    assert "should be" in err or "is missing" in err
    assert tree_hash(used) == before and model_loads == []


@pytest.mark.parametrize("what", ["not_json", "binary"])
def test_unreadable_trainer_state(what, used, dataset, tiny_release, tmp_path, capsys, model_loads):  # noqa: F811
    path = used / "checkpoints" / "checkpoint-000001" / "trainer_state.json"
    path.write_bytes(b"global_step: 4\n" if what == "not_json" else b"\xff\xfe\x00garbage")
    cfg = _config(tmp_path, dataset, tiny_release, used)
    before = tree_hash(used)
    code, err = run_cli(capsys, "clear_vae", "--config", cfg, "--resume", "latest")
    assert code == 2 and "is damaged" in err and "trainer_state.json" in err and "--overwrite" in err
    assert tree_hash(used) == before and model_loads == []


def test_optimizer_file_that_does_not_fit_leaves_the_folder_as_it_was(used, dataset, tiny_release, tmp_path, capsys):  # noqa: F811
    import torch
    from safetensors.torch import load_file, save_file

    opt = used / "checkpoints" / "checkpoint-000001" / "optimizer.safetensors"
    tensors = load_file(str(opt))
    key = next(k for k in tensors if k.endswith("exp_avg"))
    tensors[key] = torch.zeros(3, 3, 3)
    save_file(tensors, str(opt))
    cfg = _config(tmp_path, dataset, tiny_release, used)
    before = tree_hash(used)
    code, err = run_cli(capsys, "clear_vae", "--config", cfg, "--resume", "latest", "--max-steps", "2")
    assert code == 2 and "optimizer.safetensors does not fit this run" in err and "--overwrite" in err
    assert tree_hash(used) == before


def test_hand_edited_metrics_lines_are_skipped(tmp_path):
    from training.checkpoint import read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"event": "start", "step": 0}\n{"step": 1, "loss": 1}\n{"step": "two", "loss": 2}\n'
                    '{"event": "resume", "step": "x"}\n{"step": 2, "loss": 3}\n')
    assert [r.get("step") for r in read_metrics(path)] == [0, 1, 2]


# ------------------------------------------------------------------------------------ 3. full disk, long names
def test_full_disk_while_writing_a_checkpoint_keeps_the_earlier_ones(used, dataset, tiny_release, tmp_path, capsys,  # noqa: F811
                                                                     monkeypatch):
    """ENOSPC half-way through checkpoint 2 (model written, optimizer cut short): exit 1, the output folder and
    the fix named, checkpoint 1 intact, no temp folder or half line, and --resume latest continues."""
    import training.checkpoint as ckpt

    real = ckpt._save_tensors

    def full_disk(path, tensors):
        if "checkpoint-000002" in str(path) and os.path.basename(path) == ckpt.OPTIMIZER_FILE:
            Path(f"{path}.tmp-{os.getpid()}").write_bytes(b"half a file")  # what a real write leaves
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"{path}.tmp-{os.getpid()}")
        return real(path, tensors)

    monkeypatch.setattr(ckpt, "_save_tensors", full_disk)
    cfg = _config(tmp_path, dataset, tiny_release, used)
    first = tree_hash(used / "checkpoints" / "checkpoint-000001")
    code, err = run_cli(capsys, "clear_vae", "--config", cfg, "--resume", "latest", "--max-steps", "3")
    assert code == 1, err
    assert "no space left on the disk" in err and f"output folder {used}" in err and "--resume latest" in err
    assert "checkpoint-000001" in err and "nothing was half-written" in err
    assert tree_hash(used / "checkpoints" / "checkpoint-000001") == first
    assert sorted(os.listdir(used / "checkpoints")) == ["checkpoint-000001"] and _no_temp_left(used) == []
    assert (used / "metrics.jsonl").read_bytes().endswith(b"\n")
    monkeypatch.setattr(ckpt, "_save_tensors", real)  # space freed: the run continues
    code, err = run_cli(capsys, "clear_vae", "--config", cfg, "--resume", "latest", "--max-steps", "3")
    assert code == 0, err
    assert json.loads((used / "checkpoints" / "checkpoint-000003" / "trainer_state.json").read_text())["global_step"] == 3


def test_a_full_disk_cuts_no_metrics_line(tmp_path):
    """A real short write (RLIMIT_FSIZE: the write stops at the limit, like a full disk): the file is cut back."""
    import resource
    import signal

    from training.checkpoint import append_jsonl

    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, {"step": 1, "loss": 0.5})
    before = path.read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) + 10, hard))
    try:
        with pytest.raises(OSError) as info:
            append_jsonl(path, {"step": 2, "loss": 0.25, "padding": "x" * 200})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert info.value.errno == errno.EFBIG
    assert path.read_bytes() == before


def test_over_long_output_name_is_refused_before_anything(dataset, tiny_release, tmp_path, capsys, model_loads):  # noqa: F811
    out = tmp_path / ("n" * 300) / "run"
    cfg = _config(tmp_path, dataset, tiny_release, out)
    before = sorted(os.listdir(tmp_path))
    code, err = run_cli(capsys, "clear_vae", "--config", cfg)
    assert code == 2 and "longer than the 255" in err and "shorter output.dir" in err and "Nothing was written" in err
    assert sorted(os.listdir(tmp_path)) == before and model_loads == []


def _deep(root: Path, total: int) -> Path:
    """A folder path of exactly ``total`` characters under ``root`` (components of <= 200)."""
    path = str(root)
    while len(path) < total:
        path += "/" + "d" * min(200, total - len(path) - 1)
    assert len(path) == total
    return Path(path)


def test_paths_the_run_would_write_too_long_are_refused_first(dataset, tiny_release, tmp_path, capsys, model_loads):  # noqa: F811
    out = _deep(tmp_path, 4040)
    cfg = _config(tmp_path, dataset, tiny_release, out)
    before = sorted(os.listdir(tmp_path))
    code, err = run_cli(capsys, "clear_vae", "--config", cfg)
    assert code == 2 and "the run writes paths such as checkpoints/checkpoint-" in err and "choose a shorter path for output.dir" in err
    assert sorted(os.listdir(tmp_path)) == before and model_loads == []


def test_real_name_too_long_while_training(dataset, tiny_release, tmp_path, capsys, monkeypatch):  # noqa: F811
    """With the early check off, the kernel's ENAMETOOLONG on the checkpoint folder: exit 1, nothing half-written."""
    import training.preflight as pf

    monkeypatch.setattr(pf, "_WRITTEN_UNDER_OUTPUT", ())
    out = _deep(tmp_path, 4064)  # the folder and its logs fit; checkpoints/checkpoint-000001.tmp-<pid> does not
    cfg = _config(tmp_path, dataset, tiny_release, out)
    code, err = run_cli(capsys, "clear_vae", "--config", cfg)
    assert code == 1, err
    assert "longer than the file system allows under the output folder" in err and "shorter --output-dir" in err
    assert "No checkpoint had been written yet" in err
    assert not (out / "checkpoints").exists() or os.listdir(out / "checkpoints") == []
    assert all(".tmp-" not in name for name in os.listdir(out))


def test_overwrite_whose_aside_name_is_too_long(dataset, tiny_release, template, tmp_path, capsys, model_loads):  # noqa: F811
    out = tmp_path / ("r" * 240)
    shutil.copytree(template, out)
    cfg = _config(tmp_path, dataset, tiny_release, out)
    before = tree_hash(out)
    code, err = run_cli(capsys, "clear_vae", "--config", cfg, "--overwrite")
    assert code == 2 and "with --overwrite the moved-aside name" in err and "shorter output.dir" in err
    assert tree_hash(out) == before and model_loads == []


# ------------------------------------------------------------------------------------ 4. the release folder
def _release_run(tmp_path, dataset, tiny_release, release, name):  # noqa: F811
    cfg = _config(tmp_path, dataset, tiny_release, tmp_path / name)
    return cfg, ["--output-release", str(release)]


def test_release_folder_not_assembled_by_the_trainer_needs_overwrite(dataset, tiny_release, tmp_path, capsys,  # noqa: F811
                                                                     model_loads):
    release = tmp_path / "downloaded"
    shutil.copytree(tiny_release, release)  # e.g. what `python -m r2r download` wrote: no r2r_training.json
    before = tree_hash(release)
    cfg, args = _release_run(tmp_path, dataset, tiny_release, release, "run1")
    code, err = run_cli(capsys, "clear_vae", "--config", cfg, *args)
    assert code == 2 and "already holds clear_vae" in err and "not replaced without --overwrite" in err
    assert tree_hash(release) == before and model_loads == [] and not (tmp_path / "run1").exists()
    code, err = run_cli(capsys, "clear_vae", "--config", cfg, *args, "--overwrite")
    assert code == 0, err
    (aside,) = release.glob("clear_vae.previous-*")
    assert tree_hash(aside) == {k[len("clear_vae/"):]: v for k, v in before.items() if k.startswith("clear_vae/")}
    assert tree_hash(release / "clear_vae") == tree_hash(tmp_path / "run1" / "clear_vae")


def test_the_trainers_own_release_is_updated_without_asking(dataset, tiny_release, tmp_path, capsys):  # noqa: F811
    release = tmp_path / "mine"
    for name in ("run1", "run2"):
        cfg, args = _release_run(tmp_path, dataset, tiny_release, release, name)
        code, err = run_cli(capsys, "clear_vae", "--config", cfg, *args)
        assert code == 0, err
    assert tree_hash(release / "clear_vae") == tree_hash(tmp_path / "run2" / "clear_vae")
    assert not list(release.glob("*.previous-*"))


@pytest.mark.parametrize("damage", ["not_json", "stage"])
def test_damaged_release_marker_is_refused(damage, dataset, tiny_release, tmp_path, capsys, model_loads):  # noqa: F811
    release = tmp_path / "mine"
    shutil.copytree(tiny_release, release)
    meta = release / "r2r_training.json"
    if damage == "not_json":
        meta.write_text("{")
    else:
        meta.write_text(json.dumps({"format": "r2r-training-metadata/1", "stage": "nope"}))
    before = tree_hash(release)
    cfg, args = _release_run(tmp_path, dataset, tiny_release, release, "run1")
    code, err = run_cli(capsys, "clear_vae", "--config", cfg, *args)
    assert code == 2 and str(meta) in err and ("cannot be read" in err or "field 'stage'" in err)
    assert tree_hash(release) == before and model_loads == []


@pytest.mark.parametrize("name,content", [("data_check.json", "my own notes\n"), ("bad_files.txt", "keep me\n")])
def test_a_users_file_with_a_bookkeeping_name_is_not_overwritten(name, content, dataset, tiny_release, tmp_path,  # noqa: F811
                                                                  capsys, model_loads):
    out = tmp_path / "run"
    out.mkdir()
    (out / name).write_text(content)
    cfg = _config(tmp_path, dataset, tiny_release, out)
    code, err = run_cli(capsys, "clear_vae", "--config", cfg)
    assert code == 2 and "already holds a run" in err and name in err and "--overwrite" in err
    assert (out / name).read_text() == content and model_loads == []
