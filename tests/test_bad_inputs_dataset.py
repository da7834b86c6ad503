"""Bad and edge inputs of make-dataset, evaluate and infer-dataset (CLI and Python API).

Every bad input must end with exit status 2 (or R2RUserError from the API), an actionable message,
no traceback, and no file created or changed; the valid edge cases must give the right result.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from r2r.cli import main
from r2r.dataset.generator import TRIAL_SIZE
from r2r.dataset.make import MakeConfig, make_dataset
from r2r.errors import R2RUserError

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- helpers


def _write(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix, arr)
    assert ok
    path.write_bytes(buf.tobytes())


def _snapshot(root) -> dict:
    """relative path -> sha1 of every file (and folder marker) under ``root``."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = "dir" if p.is_dir() else hashlib.sha1(p.read_bytes()).hexdigest()
    return out


def _cli(capsys, *argv):
    """(exit status, stdout, stderr) of ``python -m r2r ...`` run in this process."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def _refused(capsys, tmp_path, *argv, match: str):
    """The command exits with 2, says ``match``, prints no traceback and changes no file."""
    before = _snapshot(tmp_path)
    rc, out, err = _cli(capsys, *argv)
    assert rc == 2, (rc, out, err)
    assert match in err, err
    assert "Traceback" not in out + err
    assert _snapshot(tmp_path) == before
    return err


@pytest.fixture()
def sources(tmp_path):
    rng = np.random.default_rng(0)
    im, mk = tmp_path / "images", tmp_path / "masks"
    for i in range(3):
        _write(im / f"img{i}.jpg", rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
        m = np.zeros((48, 64), np.uint8)
        m[10:30, 12:44] = 255
        _write(mk / f"img{i}.png", m)
    return im, mk


def _make(im, mk, out, *extra):
    return ["make-dataset", "--images", im, "--masks", mk, "--out", out, "--no-progress", *extra]


def failing_generator(real, mask, seed, **kwargs):
    """Passes the up-front trial, then fails on every real image (a start that goes wrong)."""
    if real.shape[:2] == (TRIAL_SIZE, TRIAL_SIZE):
        return real.copy()
    raise RuntimeError("simulated generator failure")


def brighten_generator(real, mask, seed, **kwargs):
    """A cheap valid generator: the foreground 40 grey levels brighter."""
    comp = real.copy()
    m = np.asarray(mask).astype(bool)
    comp[m] = np.clip(real[m].astype(int) + 40, 0, 255).astype(np.uint8)
    return comp


# ----------------------------------------------------------------------------- make-dataset


def test_negative_shard_gets_a_clear_message_not_argparse_jargon(sources, tmp_path):
    im, mk = sources
    before = _snapshot(tmp_path)
    res = subprocess.run([sys.executable, "-m", "r2r", *_make(im, mk, tmp_path / "out", "--shard", "-1/2")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "--shard: needs 0 <= i < n, got '-1/2'" in res.stderr
    assert "expected one argument" not in res.stderr and "Traceback" not in res.stderr
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("extra, match", [
    (["--shard", "3/3"], "needs 0 <= i < n, got '3/3'"),
    (["--shard", "1-2"], "expected i/n such as 0/4"),
    (["--seed", "-5"], "--seed must be a whole number in 0.."),
    (["--workers", "-1"], "--workers must be a whole number >= 0"),
    (["--per-image", "0"], "--per-image must be a whole number >= 1"),
    (["--alpha", "0.9", "0.1"], "--alpha LO HI must satisfy 0 <= LO <= HI <= 1"),
    (["--min-fmse", "100", "--max-fmse", "10"], "min_fmse (100) is larger than max_fmse (10)"),
    (["--min-color-shift-lab", "-1"], "min_color_shift_lab must be None or a finite number >= 0"),
    (["--max-side", "10"], "--max-side must be a whole number >= 64"),
    (["--gen-arg", "seed=3"], "--gen-arg seed=... is set by make-dataset itself"),
    (["--gen-arg", "mode=\"box\"", "--gen-arg", "mode=\"masked\""], "--gen-arg mode=... is given twice"),
    (["--subset", "a/b"], "is not a plain folder name"),
])
def test_make_dataset_bad_numbers_and_choices(sources, tmp_path, capsys, extra, match):
    im, mk = sources
    _refused(capsys, tmp_path, *_make(im, mk, tmp_path / "out", *extra), match=match)
    assert not (tmp_path / "out").exists()  # checked before the output folder is made


def test_make_dataset_bad_paths(sources, tmp_path, capsys):
    im, mk = sources
    out = tmp_path / "out"
    _refused(capsys, tmp_path, *_make(tmp_path / "nope", mk, out), match="--images")
    err = _refused(capsys, tmp_path, *_make(im / "img0.jpg", mk, out), match="is a file, not a folder")
    assert "does not exist" not in err  # the old message for a file given as a folder
    (tmp_path / "file.txt").write_text("x")
    _refused(capsys, tmp_path, *_make(im, mk, tmp_path / "file.txt"), match="is a file, not a folder")
    _refused(capsys, tmp_path, *_make(im, mk, im / "out"), match="inside the source folder")
    _refused(capsys, tmp_path, *_make(im, mk, tmp_path, "--subset", "images"), match="inside the subset folder")
    _refused(capsys, tmp_path, "make-dataset", "--source", tmp_path, "--images", im, "--out", out,
             match="either --source or --images/--masks")
    assert not out.exists()


def test_generator_typo_is_found_up_front_and_the_corrected_run_works(sources, tmp_path, capsys):
    """Before: a misspelt generator argument failed every image ("please report this as a bug")
    and then locked the folder against the corrected command."""
    im, mk = sources
    out = tmp_path / "out"
    err = _refused(capsys, tmp_path, *_make(im, mk, out, "--gen-arg", 'mdoe="masked"'),
                   match="does not accept these arguments")
    assert "did you mean 'mode'?" in err and "report this as a bug" not in err
    err = _refused(capsys, tmp_path, *_make(im, mk, out, "--gen-arg", 'mode="boxx"'), match="rejects its arguments")
    assert "mode must be one of" in err
    _refused(capsys, tmp_path, *_make(im, mk, out, "--generator", "r2r.blending:no_such_function"),
             match="cannot load the composite generator")
    rc, text, err = _cli(capsys, *_make(im, mk, out, "--gen-arg", 'mode="masked"', "--alpha", "0.6", "0.9"))
    assert rc == 0, err
    man = json.loads((out / "manifest-R-Custom.json").read_text())
    assert man["counts"]["composites"] == 3 and man["parameters"]["generator_kwargs"] == {"mode": "masked"}


def test_a_failed_start_leaves_the_folder_usable(sources, tmp_path):
    im, mk = sources
    out = tmp_path / "out"
    rep = make_dataset(MakeConfig(out=out, images=im, masks=mk, generator=failing_generator, progress=False))
    assert rep.failed == 3 and rep.done == 0
    assert "simulated generator failure" in rep.errors[0]["error"]
    # nothing was finished under the first settings, so other settings may take the folder over
    rep = make_dataset(MakeConfig(out=out, images=im, masks=mk, generator=brighten_generator, seed=5,
                                  progress=False))
    assert rep.failed == 0 and rep.done == 3 and rep.composites == 3
    man = json.loads(rep.manifest.read_text())
    assert man["parameters"]["seed"] == 5 and man["errors"] == []  # the abandoned start's errors are gone
    # once an image is finished, other settings are refused again (they would mix two datasets)
    with pytest.raises(R2RUserError, match=r"other settings \(different: seed\)"):
        make_dataset(MakeConfig(out=out, images=im, masks=mk, generator=brighten_generator, seed=6, progress=False))


def test_nan_in_a_float_tiff_source_is_reported_not_black(sources, tmp_path):
    im, mk = sources
    img = np.full((48, 64, 3), 0.5, np.float32)
    img[5, 5] = np.nan
    assert cv2.imwrite(str(im / "nan.tif"), img)
    _write(mk / "nan.png", cv2.imread(str(mk / "img0.png"), cv2.IMREAD_GRAYSCALE))
    rep = make_dataset(MakeConfig(out=tmp_path / "out", images=im, masks=mk, generator=failing_generator,
                                  progress=False))
    err = next(e["error"] for e in rep.errors if e["image"].endswith("nan.tif"))
    assert "NaN or infinite" in err


def test_python_api_refuses_bad_config_before_writing(sources, tmp_path):
    im, mk = sources
    out = tmp_path / "out"
    for kw, match in (({"seed": 1.5}, "--seed must be a whole number"), ({"shard": (0, 0)}, "--shard i/n"),
                      ({"mask_type": "rgb"}, "--mask-type"), ({"image_format": "gif"}, "--format"),
                      ({"generator_kwargs": {"mdoe": "box"}}, "did you mean 'mode'"),
                      ({"label_min_area": 0.5, "label_max_area": 0.1}, "--label-min-area")):
        with pytest.raises(R2RUserError, match=match):
            make_dataset(MakeConfig(out=out, images=im, masks=mk, progress=False, **kw))
        assert not out.exists()


# ----------------------------------------------------------------------------- evaluate


@pytest.fixture()
def eval_set(tmp_path):
    """HCOCO c1 (a normal mask) and c2 (a mask covering the whole image), PNG predictions."""
    rng = np.random.default_rng(1)
    data, pred = tmp_path / "data", tmp_path / "pred"
    lines = []
    for name, full in (("c1", False), ("c2", True)):
        real = rng.integers(0, 250, (32, 32, 3), dtype=np.uint8)  # + 3 below never clips: errors are all 3
        m = np.full((32, 32), 255, np.uint8) if full else np.pad(np.full((16, 16), 255, np.uint8), 8)
        _write(data / "HCOCO" / "real_images" / f"{name}.png", real)
        _write(data / "HCOCO" / "masks" / f"{name}_1.png", m)
        _write(data / "HCOCO" / "composite_images" / f"{name}_1_1.png", real)
        _write(pred / f"{name}_1_1.png", np.clip(real.astype(int) + 3, 0, 255).astype(np.uint8))
        lines.append(json.dumps({"file_name": f"HCOCO/composite_images/{name}_1_1.png", "text": ""}))
    (data / "test.jsonl").write_text("\n".join(lines) + "\n")
    return data, pred


def _eval(data, pred, *extra):
    return ["evaluate", "--pred", pred, "--data", data, "--no-progress", "--resolution", "32", *extra]


def test_evaluate_bad_paths_and_numbers(eval_set, tmp_path, capsys):
    data, pred = eval_set
    err = _refused(capsys, tmp_path, *_eval(data, pred / "c1_1_1.png"), match="is a file, not a folder")
    assert "does not exist" not in err
    _refused(capsys, tmp_path, *_eval(tmp_path / "nope", pred), match="--data")
    err = _refused(capsys, tmp_path, *_eval(data, pred, "--split", "none.jsonl"), match="none.jsonl does not exist")
    assert "none.jsonl.jsonl" not in err
    _refused(capsys, tmp_path, *_eval(data, pred, "--resolution", "5"), match="--resolution must be >= 7")
    _refused(capsys, tmp_path, *_eval(data, pred, "--workers", "0"), match="--workers must be >= 1")
    # the JSON destination is checked before any image is measured
    _refused(capsys, tmp_path, *_eval(data, pred, "--json", data / "test.jsonl"), match="is also an input")
    (tmp_path / "afile").write_text("x")
    _refused(capsys, tmp_path, *_eval(data, pred, "--json", tmp_path / "afile" / "r.json"),
             match="folder of the --json file")
    _refused(capsys, tmp_path, *_eval(data, pred, "--json", pred), match="is a folder")


def test_evaluate_nan_prediction_is_refused(eval_set, tmp_path, capsys):
    data, pred = eval_set
    (pred / "c1_1_1.png").unlink()
    grey = np.full((32, 32), 0.5, np.float32)
    grey[3, 3] = np.nan
    assert cv2.imwrite(str(pred / "c1_1_1.tif"), grey)
    _refused(capsys, tmp_path, *_eval(data, pred), match="contains NaN or infinite values")


def test_evaluate_full_mask_edge_case(eval_set, tmp_path, capsys):
    """A mask covering the whole image: counted in its subset and overall, in no foreground-ratio
    bin (as the official script), fMSE = MSE = 9, bMSE undefined and left out of the bMSE mean."""
    data, pred = eval_set
    rc, out, err = _cli(capsys, *_eval(data, pred, "--json", tmp_path / "r.json"))
    assert rc == 0, err
    res = json.loads((tmp_path / "r.json").read_text())
    full = next(r for r in res["per_image"] if r["file_name"].endswith("c2_1_1.png"))
    part = next(r for r in res["per_image"] if r["file_name"].endswith("c1_1_1.png"))
    assert full["fg_ratio"] == 1.0 and full["fmse"] == pytest.approx(9.0) and math.isnan(full["bmse"])
    assert part["fg_ratio"] == pytest.approx(0.25) and part["bmse"] == pytest.approx(9.0)
    assert res["overall"]["n"] == 2 and res["overall"]["bmse"] == pytest.approx(9.0)
    assert sum(b["n"] for b in res["ratio_bins"].values()) == 1 and res["ratio_bins"]["15-100%"]["n"] == 1
    assert res["full_masks"] == ["HCOCO/composite_images/c2_1_1.png"]
    assert "1 such image(s)" in out and "in no foreground-ratio bin" in out


# ----------------------------------------------------------------------------- infer-dataset


def _infer(data, out, weights, *extra):
    return ["infer-dataset", "--weights", weights, "--data", data, "--out", out, "--steps", "1", "--max-side", "64",
            *extra]


def test_infer_dataset_bad_inputs_before_any_model_loads(eval_set, tmp_path, capsys):
    data, _ = eval_set
    weights = tmp_path / "weights"  # an empty folder: the model would fail to load, so every refusal
    weights.mkdir()  # below must come from the argument checks that run first
    out = tmp_path / "pred-out"
    _refused(capsys, tmp_path, *_infer(data, out, weights, "--seed", "-1"), match="--seed must be in 0..")
    _refused(capsys, tmp_path, *_infer(data, out, weights, "--limit", "-2"), match="--limit must be 0")
    _refused(capsys, tmp_path, *_infer(data, out, tmp_path / "no" / "such"), match="neither an existing folder nor")
    _refused(capsys, tmp_path, *_infer(data, out, data / "test.jsonl"), match="is a file")
    _refused(capsys, tmp_path, *_infer(data / "test.jsonl", out, weights), match="is a file, not a folder")
    _refused(capsys, tmp_path, *_infer(data, out, weights, "--device", "tpu9"), match="Unknown device")
    # --out = the folder of the (PNG) composites would overwrite the inputs
    _refused(capsys, tmp_path, *_infer(data, data / "HCOCO" / "composite_images", weights),
             match="would overwrite the input")
    (tmp_path / "afile").write_text("x")
    _refused(capsys, tmp_path, *_infer(data, tmp_path / "afile", weights), match="is a file, not a folder")
    assert not out.exists()
