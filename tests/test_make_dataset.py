"""make-dataset: layout, determinism (shards, workers), resume, crash safety, error reporting."""

import contextlib
import filecmp
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from r2r.cli import main
from r2r.dataset import layouts
from r2r.dataset.generator import TRIAL_SIZE
from r2r.dataset.make import MakeConfig, make_dataset
from r2r.errors import R2RUserError

CALLS = {"n": 0, "crash_at": None}


def shift_generator(real, mask, seed, alpha=(0.2, 0.6), **kwargs):
    """A cheap deterministic stand-in for Random Poisson Blending (module-level: picklable).
    Counts its calls on source images (not the up-front trial on a synthetic TRIAL_SIZE image)."""
    if real.shape[:2] == (TRIAL_SIZE, TRIAL_SIZE):
        return real.copy()
    CALLS["n"] += 1
    if CALLS["crash_at"] is not None and CALLS["n"] >= CALLS["crash_at"]:
        raise KeyboardInterrupt("simulated crash")
    rng = np.random.default_rng(seed)
    a = rng.uniform(*alpha)
    shift = rng.integers(-60, 61, 3)
    comp = real.copy()
    m = np.asarray(mask).astype(bool)
    comp[m] = np.clip(real[m] + a * shift, 0, 255).astype(np.uint8)
    if "reference" in kwargs:  # tint towards the reference's mean colour
        ref_mean = np.asarray(kwargs["reference"]).reshape(-1, 3).mean(0)
        comp[m] = np.clip(0.5 * comp[m] + 0.5 * ref_mean, 0, 255).astype(np.uint8)
    return comp


@pytest.fixture(autouse=True)
def _reset_calls():
    CALLS.update(n=0, crash_at=None)


def _write(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix, arr)
    assert ok
    path.write_bytes(buf.tobytes())


def _sources(root, n=6, h=48, w=64):
    rng = np.random.default_rng(42)
    im, mk = root / "images", root / "masks"
    for i in range(n):
        _write(im / f"ADE_train_{i:03d}.jpg", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        m = np.zeros((h, w), np.uint8)
        m[8 + i : 30 + i, 10:40] = 255
        _write(mk / f"ADE_train_{i:03d}.png", m)
    return im, mk


def _cfg(out, im, mk, **kw):
    base = dict(out=out, images=im, masks=mk, per_image=2, subset="R-ADE20K", seed=7, test_fraction=0.34,
                generator=shift_generator, progress=False)
    base.update(kw)
    return MakeConfig(**base)


def _tree(root):
    skip = {".r2r-index.lock"}
    return sorted(
        p.relative_to(root).as_posix()
        for p in Path(root).rglob("*")
        if p.is_file() and p.name not in skip and not p.name.startswith("manifest-")
    )


def _same_files(a, b):
    ta, tb = _tree(a), _tree(b)
    assert ta == tb
    _, mismatch, errors = filecmp.cmpfiles(a, b, ta, shallow=False)
    assert mismatch == [] and errors == []


def test_layout_names_indexes_and_manifest(tmp_path):
    im, mk = _sources(tmp_path)
    out = tmp_path / "out"
    rep = make_dataset(_cfg(out, im, mk))
    assert rep.failed == 0 and rep.done == 6 and rep.composites == 12
    sub = out / "R-ADE20K"
    assert sorted(p.name for p in (sub / "real_images").iterdir())[0] == "r-ADE-train-000.jpg"
    assert (sub / "masks" / "r-ADE-train-000_1.png").exists()
    assert (sub / "composite_images" / "r-ADE-train-000_1_2.jpg").exists()
    lines = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    tests = (out / "test.txt").read_text().splitlines()
    assert len(lines) + len(tests) == 12 and tests  # both splits used
    assert all(set(x) == {"file_name", "text"} and x["text"] == "" for x in lines)
    assert [x["file_name"] for x in lines] == sorted(x["file_name"] for x in lines)
    # all composites of one real image are in one split (no leak)
    train_names = {x["file_name"].split("/")[-1].split("_")[0] for x in lines}
    assert not train_names & {t.split("/")[-1].split("_")[0] for t in tests}
    # the dataset reads back with the layouts reader (naming rule, subset, files)
    samples = layouts.read_split(out, "train")
    assert samples and all(s.subset == "R-ADE20K" for s in samples)
    man = json.loads(rep.manifest.read_text())
    assert man["counts"]["composites"] == 12 and man["parameters"]["seed"] == 7
    assert man["parameters"]["generator"].endswith(":shift_generator")
    assert man["filter"] == {"min_fmse": None, "max_fmse": None, "min_color_shift_lab": None, "max_tries": 5}
    assert {"opencv", "numpy", "r2r"} <= set(man["versions"])
    c = man["items"][0]["composites"][0]
    assert {"file_name", "seed", "fmse", "color_shift_lab", "color_shift_rgb", "fg_ratio"} <= set(c)
    # fMSE recorded = fMSE of the composite as generated (before JPEG) and > 0
    assert c["fmse"] > 0
    # the composite's background is the real image's (JPEG q100 4:4:4: tiny differences only)
    comp = cv2.imread(str(sub / "composite_images" / "r-ADE-train-000_1_1.jpg")).astype(int)
    real = cv2.imread(str(sub / "real_images" / "r-ADE-train-000.jpg")).astype(int)
    assert np.abs(comp - real)[40:, :].max() <= 2


def test_shard_union_equals_single_run_and_workers(tmp_path):
    im, mk = _sources(tmp_path)
    single = tmp_path / "single"
    make_dataset(_cfg(single, im, mk))
    sharded = tmp_path / "sharded"
    r0 = make_dataset(_cfg(sharded, im, mk, shard=(0, 3)))
    r1 = make_dataset(_cfg(sharded, im, mk, shard=(1, 3)))
    r2 = make_dataset(_cfg(sharded, im, mk, shard=(2, 3)))
    assert r0.total + r1.total + r2.total == 6 and max(r0.total, r1.total, r2.total) < 6
    _same_files(single, sharded)
    # separate machines, folders merged afterwards: same files again
    parts = [tmp_path / f"m{i}" for i in range(2)]
    for i, p in enumerate(parts):
        make_dataset(_cfg(p, im, mk, shard=(i, 2)))
    merged = tmp_path / "merged"
    import shutil

    for p in parts:
        shutil.copytree(p, merged, dirs_exist_ok=True)
    make_dataset(_cfg(merged, im, mk))  # resume = nothing to do, indexes rebuilt from the records
    _same_files(single, merged)
    # two worker processes give the same bytes as one
    pooled = tmp_path / "pooled"
    rep = make_dataset(_cfg(pooled, im, mk, workers=2))
    assert rep.done == 6
    _same_files(single, pooled)


def test_resume_skips_finished_and_recovers_from_crash(tmp_path, monkeypatch):
    im, mk = _sources(tmp_path)
    clean = tmp_path / "clean"
    make_dataset(_cfg(clean, im, mk))
    assert CALLS["n"] == 12
    CALLS["n"] = 0
    again = make_dataset(_cfg(clean, im, mk))
    assert CALLS["n"] == 0 and again.skipped == 6 and again.done == 0

    out = tmp_path / "crashy"
    CALLS.update(n=0, crash_at=8)  # dies inside the 4th image, after 3 finished images
    # a hard kill: no clean-up at all (no final index rebuild, no manifest)
    import r2r.dataset.make as make_mod

    monkeypatch.setattr(make_mod, "rebuild_indexes", lambda *a, **k: {})
    monkeypatch.setattr(make_mod, "write_manifest", lambda *a, **k: None)
    with pytest.raises(KeyboardInterrupt):
        make_dataset(_cfg(out, im, mk))
    monkeypatch.undo()
    # after the crash: every listed composite has its files; no temp files anywhere
    for split in ("train", "test"):
        for fn in layouts.read_index_file(out / f"{split}.jsonl"):
            s = layouts.sample_from_file_name(out, fn)
            assert s.composite.exists() and s.mask.exists() and s.real.exists()
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    listed = sum(len(layouts.read_index_file(out / f"{s}.jsonl")) for s in ("train", "test"))
    assert listed == 6  # 3 finished images x 2 composites
    CALLS.update(n=0, crash_at=None)
    rep = make_dataset(_cfg(out, im, mk))
    assert rep.skipped == 3 and rep.done == 3 and CALLS["n"] == 6
    _same_files(clean, out)
    # a folder made before --min-color-shift was renamed --min-color-shift-lab still resumes
    params = out / "_records" / "R-ADE20K" / "params.json"
    old = json.loads(params.read_text())
    old["filter"]["min_color_shift"] = old["filter"].pop("min_color_shift_lab")
    params.write_text(json.dumps(old))
    assert make_dataset(_cfg(out, im, mk)).skipped == 6
    # changed settings on an existing output are refused
    with pytest.raises(R2RUserError, match=r"other settings \(different: seed\)"):
        make_dataset(_cfg(out, im, mk, seed=8))


def test_bad_files_are_reported_and_do_not_stop_the_run(tmp_path, capsys):
    im, mk = _sources(tmp_path, n=3)
    (im / "broken.jpg").write_bytes(b"not an image")
    _write(mk / "broken.png", np.full((48, 64), 255, np.uint8))
    _write(im / "nomask.jpg", np.zeros((48, 64, 3), np.uint8))
    _write(im / "small.jpg", np.zeros((48, 64, 3), np.uint8))
    _write(mk / "small.png", np.zeros((40, 64), np.uint8))
    _write(im / "empty.jpg", np.zeros((48, 64, 3), np.uint8))
    _write(mk / "empty.png", np.zeros((48, 64), np.uint8))
    out = tmp_path / "out"
    rc = main(["make-dataset", "--images", str(im), "--masks", str(mk), "--out", str(out), "--per-image", "1",
               "--generator", f"{__name__}:shift_generator", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "4 image(s) failed" in err
    assert "broken.jpg: Could not read" in err
    assert "nomask.jpg: no mask found for image" in err
    assert "mask" in err and "is 64x40 but image" in err
    assert "empty.png is empty" in err
    man = json.loads((out / "manifest-R-Custom.json").read_text())
    assert man["counts"]["images_done"] == 3 and len(man["errors"]) == 4
    assert len(layouts.read_index_file(out / "train.txt")) + len(layouts.read_index_file(out / "test.txt")) == 3
    # fixing a file and re-running finishes just that one and clears its error
    _write(mk / "empty.png", np.pad(np.full((10, 10), 255, np.uint8), ((5, 33), (5, 49))))
    rep = make_dataset(_cfg(out, im, mk, per_image=1, subset="R-Custom", seed=0, test_fraction=0.1))
    assert rep.skipped == 3 and rep.done == 1 and rep.failed == 3
    assert len(json.loads(rep.manifest.read_text())["errors"]) == 3


def test_stop_on_error_filter_labels_and_reference(tmp_path):
    im, mk = _sources(tmp_path, n=3)
    # --stop-on-error stops at the first bad image
    (im / "000.jpg").write_bytes(b"")  # sorts first
    _write(mk / "000.png", np.zeros((48, 64), np.uint8))
    rep = make_dataset(_cfg(tmp_path / "stop", im, mk, keep_going=False))
    assert rep.failed == 1 and rep.done == 0 and "stopped here" in rep.errors[0]["error"]
    (im / "000.jpg").unlink()
    # a filter nothing passes: composites rejected after max_tries, recorded
    rep = make_dataset(_cfg(tmp_path / "filt", im, mk, min_fmse=1e9, max_tries=2))
    assert rep.composites == 0 and rep.rejected == 6 and CALLS["n"] == 12
    man = json.loads(rep.manifest.read_text())
    assert man["items"][0]["rejected"][0]["reason"].startswith("fMSE")
    # label maps: one mask per label inside the area range, largest first
    lab_dir = tmp_path / "labels"
    lab = np.zeros((48, 64), np.uint8)
    lab[:, :20] = 3  # 31% of the image
    lab[:10, 30:40] = 9  # 3%
    lab[0, 63] = 5  # too small
    for i in range(3):
        _write(lab_dir / f"ADE_train_{i:03d}.png", lab)
    rep = make_dataset(_cfg(tmp_path / "lab", im, lab_dir, mask_type="labels", masks_per_image=3, per_image=1))
    assert rep.failed == 0 and rep.composites == 6
    m1 = cv2.imread(str(tmp_path / "lab/R-ADE20K/masks/r-ADE-train-000_1.png"), cv2.IMREAD_GRAYSCALE) > 0
    m2 = cv2.imread(str(tmp_path / "lab/R-ADE20K/masks/r-ADE-train-000_2.png"), cv2.IMREAD_GRAYSCALE) > 0
    assert np.array_equal(m1, lab == 3) and np.array_equal(m2, lab == 9)
    # --reference other hands another source image to the generator
    a = make_dataset(_cfg(tmp_path / "ref", im, mk, reference="other", per_image=1))
    b = make_dataset(_cfg(tmp_path / "noref", im, mk, per_image=1))
    assert a.composites == b.composites == 3
    fa = json.loads(a.manifest.read_text())["items"][0]["composites"][0]["fmse"]
    fb = json.loads(b.manifest.read_text())["items"][0]["composites"][0]["fmse"]
    assert fa != fb


def test_config_errors(tmp_path):
    im, mk = _sources(tmp_path, n=1)
    with pytest.raises(R2RUserError, match="does not exist"):
        make_dataset(_cfg(tmp_path / "o", tmp_path / "nope", mk))
    with pytest.raises(R2RUserError, match="inside the source folder"):
        make_dataset(_cfg(im / "out", im, mk))
    with pytest.raises(R2RUserError, match="--shard i/n"):
        make_dataset(_cfg(tmp_path / "o", im, mk, shard=(2, 2)))
    with pytest.raises(R2RUserError, match="--alpha"):
        make_dataset(_cfg(tmp_path / "o", im, mk, alpha=(0.9, 0.1)))
    with pytest.raises(R2RUserError, match="composite generator"):
        make_dataset(_cfg(tmp_path / "o", im, mk, generator="no.such.module:f"))
    assert main(["make-dataset", "--out", str(tmp_path / "o")]) == 2


def test_default_generator_is_random_poisson_blending(tmp_path):
    blending = pytest.importorskip("r2r.blending")
    if not hasattr(blending, "random_poisson_blend"):
        pytest.skip("r2r.blending.random_poisson_blend not available yet")
    im, mk = _sources(tmp_path, n=2)
    rep = make_dataset(_cfg(tmp_path / "rpb", im, mk, generator="r2r.blending:random_poisson_blend",
                            alpha=(0.6, 0.9), per_image=1))
    assert rep.failed == 0 and rep.composites == 2, rep.errors
    man = json.loads(rep.manifest.read_text())
    c = man["items"][0]["composites"][0]
    assert 0.6 <= c["generator"]["alpha"] <= 0.9 and c["fmse"] > 0


def test_generated_set_evaluates_with_the_official_metrics(tmp_path):
    """make-dataset output -> evaluate: the composites, taken as predictions, score the fMSE the
    manifest recorded (up to JPEG q100 rounding) at full resolution."""
    from r2r import metrics

    im, mk = _sources(tmp_path, n=3)
    rep = make_dataset(_cfg(tmp_path / "ds", im, mk, per_image=1, test_fraction=1.0))
    man = json.loads(rep.manifest.read_text())
    recorded = {c["file_name"]: c["fmse"] for it in man["items"] for c in it["composites"]}
    ev = metrics.evaluate(tmp_path / "ds" / "R-ADE20K" / "composite_images", tmp_path / "ds", split="test",
                          resolution=None)
    assert ev.overall["n"] == 3 and set(ev.subsets) == {"R-ADE20K"}
    for row in ev.per_image:
        assert row["fmse"] == pytest.approx(recorded[row["file_name"]], rel=0.05, abs=1.0)


def slow_generator(real, mask, seed, **kwargs):
    """Marks that a worker started an image, then works for a minute (the parent-death test)."""
    if real.shape[:2] == (TRIAL_SIZE, TRIAL_SIZE):
        return real.copy()
    import os
    import time

    Path(os.environ["R2R_TEST_MARKERS"], f"{os.getpid()}-{seed}").touch()
    time.sleep(60)
    return real.copy()


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has exited; only its parent's wait() is missing


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_workers_die_with_their_parent(tmp_path):
    """SIGKILL the make-dataset process while 2 workers are busy: the workers are gone within
    seconds instead of waiting forever."""
    import os
    import signal
    import subprocess
    import sys
    import time

    im, mk = _sources(tmp_path, n=4)
    markers = tmp_path / "markers"
    markers.mkdir()
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, R2R_TEST_MARKERS=str(markers),
               PYTHONPATH=os.pathsep.join([str(root / "tests"), str(root), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "r2r", "make-dataset", "--images", str(im), "--masks", str(mk), "--out",
         str(tmp_path / "out"), "--workers", "2", "--generator", "test_make_dataset:slow_generator", "--no-progress"],
        cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 120
        while len(list(markers.iterdir())) < 2:
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.time() < deadline, "the workers never started"
            time.sleep(0.1)
        workers = {int(p.name.split("-")[0]) for p in markers.iterdir()}
        assert len(workers) == 2 and workers <= set(_children(proc.pid))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 5
        while any(_alive(w) for w in workers) and time.time() < deadline:
            time.sleep(0.1)
        assert not [w for w in workers if _alive(w)], "worker processes outlived their parent"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for w in _children(proc.pid):
            with contextlib.suppress(OSError):
                os.kill(w, signal.SIGKILL)


def brighten_generator(real, mask, seed, **kwargs):
    """The foreground 40 grey levels brighter: an RGB shift of 40 * sqrt(3) = 69.3, a Lab shift far smaller."""
    comp = real.copy()
    m = np.asarray(mask).astype(bool)
    comp[m] = np.clip(real[m].astype(int) + 40, 0, 255).astype(np.uint8)
    return comp


def test_color_shift_filter_is_in_lab_units(tmp_path):
    """--min-color-shift-lab compares the CIE Lab Delta E (the one filter of r2r.blending), not the
    RGB distance: a threshold between the two rejects every composite."""
    rng = np.random.default_rng(0)
    im, mk = tmp_path / "images", tmp_path / "masks"
    _write(im / "a.png", rng.integers(60, 180, (48, 64, 3), dtype=np.uint8))
    m = np.zeros((48, 64), np.uint8)
    m[10:30, 10:40] = 255
    _write(mk / "a.png", m)
    ok = make_dataset(_cfg(tmp_path / "ok", im, mk, generator=brighten_generator, per_image=1))
    c = json.loads(ok.manifest.read_text())["items"][0]["composites"][0]
    assert c["color_shift_rgb"] == pytest.approx(40 * 3**0.5, abs=0.01) and c["color_shift_lab"] < 35
    rep = make_dataset(_cfg(tmp_path / "lab", im, mk, generator=brighten_generator, per_image=1, max_tries=1,
                            min_color_shift_lab=50.0))
    assert rep.composites == 0 and rep.rejected == 1
    reason = json.loads(rep.manifest.read_text())["items"][0]["rejected"][0]["reason"]
    assert "Lab" in reason and "min_color_shift_lab 50" in reason
