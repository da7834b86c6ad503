"""Bad and edge inputs for ``python -m r2r harmonize`` / ``demo`` / the top level, run as a user runs them.

Every bad input must end with exit code 2 (1 for a bug, 130 for Ctrl-C), an actionable message on
stderr, no traceback, and no file changed (inputs and the output folder are hashed before and
after). The valid edge cases must give the right image. Everything runs offline on the tiny
release of tests/conftest.py: each bad input through ``r2r.cli.main`` (the function ``python -m r2r``
exits with; fast), a sample of them and the edge cases also as real ``python -m r2r`` processes.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
H, W = 80, 112


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("R2R_WEIGHTS", "R2R_DEBUG")}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **extra)
    return env


def r2r(*args, cwd, timeout=240, **env):
    """``python -m r2r ARGS`` in ``cwd`` (where no ./models folder exists); returns the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "r2r", *map(str, args)], cwd=cwd, env=_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def snapshot(*folders) -> dict:
    """Every file and folder under ``folders`` -> its sha256 (folders: None)."""
    state = {}
    for folder in folders:
        for p in sorted(Path(folder).rglob("*")):
            state[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
    return state


def make_inputs(folder: Path):
    """A colour-ramp composite with a recoloured rectangle and its mask; returns (comp, mask, paths)."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:H, 0:W]
    comp = np.stack([xx / W * 200, yy / H * 200, 90 + 0 * xx], -1) + rng.normal(0, 5, (H, W, 3))
    mask = np.zeros((H, W), np.uint8)
    mask[20:60, 30:80] = 255
    comp[mask > 0] = comp[mask > 0] * [1.3, 0.7, 0.6] + 20
    comp = np.clip(comp, 0, 255).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    cp, mp = folder / "comp.png", folder / "mask.png"
    cv2.imwrite(str(cp), comp[..., ::-1])
    cv2.imwrite(str(mp), mask)
    return comp, mask, cp, mp


def read_rgb(path):
    return cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]


@pytest.fixture()
def case(tmp_path):
    comp, mask, cp, mp = make_inputs(tmp_path / "in")
    (tmp_path / "out").mkdir()
    return tmp_path, cp, mp


def assert_refused(proc, *words, code=2):
    """Exit ``code``, every word in stderr, no traceback, nothing written to stdout as success."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    for w in words:
        assert w in proc.stderr, (w, proc.stderr)
    assert "wrote" not in proc.stdout


# ----------------------------------------------------------------------------- bad inputs: exit 2, nothing changed

BAD_HARMONIZE = [
    # (id, extra arguments ({in}/{out}/{root} are filled in), words the message must contain)
    ("composite-missing", ["--composite", "{in}/nope.png"], ["--composite", "does not exist"]),
    ("composite-is-folder", ["--composite", "{in}"], ["--composite", "is a folder"]),
    ("composite-not-an-image", ["--composite", "{in}/text.png"], ["--composite", "Could not read", "PNG"]),
    ("mask-missing", ["--mask", "{in}/nomask.png"], ["--mask", "does not exist"]),
    ("mask-wrong-size", ["--mask", "{in}/small_mask.png"], ["does not match the composite size", "Resize the mask"]),
    ("mask-empty", ["--mask", "{in}/empty_mask.png"], ["is empty", "white = the object"]),
    ("mask-full", ["--mask", "{in}/full_mask.png"], ["covers the whole image", "inverted"]),
    ("image-too-small", ["--composite", "{in}/tiny.png", "--mask", "{in}/tiny_mask.png"], ["at least 64x64"]),
    ("nan-tiff", ["--composite", "{in}/nan.tiff"], ["NaN", "8- or 16-bit"]),
    ("out-is-the-composite", ["--out", "{in}/comp.png"], ["is also an input", "Choose another output path"]),
    ("out-is-the-mask-via-symlink", ["--out", "{in}/link_to_mask.png"], ["is also an input"]),
    ("out-bad-extension", ["--out", "{out}/result.txt"], ["extension '.txt'", "use one of .png"]),
    ("out-no-extension", ["--out", "{out}/result"], ["(none)", "use one of"]),
    ("out-is-a-folder", ["--out", "{out}/folder.png"], ["is a folder", "give a file name"]),
    ("out-parent-is-a-file", ["--out", "{in}/comp.png/x.png"], ["is a file, not a folder"]),
    ("out-read-only-file", ["--out", "{out}/readonly.png"], ["read-only", "chmod"]),
    ("steps-zero", ["--steps", "0"], ["--steps must be an integer from 1 to 1000; got 0", "official setting is 10"]),
    ("steps-too-many", ["--steps", "1001"], ["--steps must be an integer from 1 to 1000; got 1001"]),
    ("steps-not-a-number", ["--steps", "ten"], ["--steps", "invalid int value"]),
    ("seed-negative", ["--seed", "-1"], ["--seed must be an integer from 0 to 2^64 - 1; got -1"]),
    ("seed-too-big", ["--seed", str(2**64)], ["--seed must be an integer from 0"]),
    ("max-side-not-multiple", ["--max-side", "100"], ["multiple of 64", "--max-side 128"]),
    ("max-side-too-small", ["--max-side", "-64"], ["multiple of 64 from 64 to 4096", "--max-side 64"]),
    ("max-side-too-big", ["--max-side", "65536"], ["multiple of 64 from 64 to 4096", "--max-side 4096"]),
    ("feather-below-minus-one", ["--feather", "-2"], ["--feather must be an integer from -1 to 256", "got -2"]),
    ("strength-above-one", ["--method", "statistics", "--strength", "1.5"], ["--strength of --method statistics",
                                                                              "from 0 to 1", "got 1.5"]),
    ("strength-nan", ["--method", "statistics", "--strength", "nan"], ["--strength of", "got nan"]),
    ("strength-r2r-negative", ["--strength", "-0.5"], ["--strength of --method r2r", "from 0 to 2", "got -0.5"]),
    ("dtype-unknown", ["--dtype", "fp8"], ["--dtype", "invalid choice", "fp16"]),
    ("scheduler-unknown", ["--scheduler", "euler_a"], ["--scheduler", "invalid choice", "euler_ancestral"]),
    ("resize-mode-unknown", ["--resize-mode", "crop"], ["--resize-mode", "invalid choice", "fit"]),
    ("fullres-mode-unknown", ["--fullres-mode", "lanczos"], ["--fullres-mode", "invalid choice"]),
    ("device-unknown", ["--device", "gpu0"], ["--device must be auto, cpu, cuda, cuda:N or mps; got 'gpu0'"]),
    ("device-cuda-index-absent", ["--device", "cuda:99"], ["cuda"]),
    ("weights-folder-missing", ["--weights", "{root}/no_weights"], ["does not exist", "python -m r2r download",
                                                                      "--method statistics"]),
    ("missing-required-mask", ["--drop-mask"], ["the following arguments are required: --mask"]),
]


def _fill(args, root, cp, mp):
    fmt = {"in": root / "in", "out": root / "out", "root": root}
    return [a.format(**fmt) for a in args]


def _prepare_bad_files(root: Path, comp, mask):
    d = root / "in"
    (d / "text.png").write_text("not an image")
    cv2.imwrite(str(d / "small_mask.png"), mask[:40])
    cv2.imwrite(str(d / "empty_mask.png"), np.zeros_like(mask))
    cv2.imwrite(str(d / "full_mask.png"), np.full_like(mask, 255))
    cv2.imwrite(str(d / "tiny.png"), comp[:32, :32])
    cv2.imwrite(str(d / "tiny_mask.png"), mask[20:52, 30:62])
    nan = comp.astype(np.float32)[..., ::-1] / 255
    nan[0, 0, 0] = np.nan
    cv2.imwrite(str(d / "nan.tiff"), nan)
    (d / "link_to_mask.png").symlink_to(d / "mask.png")
    (root / "out" / "folder.png").mkdir()
    ro = root / "out" / "readonly.png"
    ro.write_bytes(b"keep me")
    ro.chmod(0o444)


def _bad_case_argv(name, extra, tiny_release, root):
    comp, mask, cp, mp = make_inputs(root / "in")
    (root / "out").mkdir()
    _prepare_bad_files(root, comp, mask)
    args = {"--composite": str(cp), "--mask": str(mp), "--out": str(root / "out" / "result.png"),
            "--weights": str(tiny_release), "--steps": "1", "--max-side": "64"}
    extra = _fill(extra, root, cp, mp)
    if extra == ["--drop-mask"]:
        del args["--mask"]
        extra = []
    for key, value in zip(extra[::2], extra[1::2]):
        args[key] = value
    return ["harmonize", *[x for kv in args.items() for x in kv]]


def _skip_if_not_applicable(name):
    import torch

    if name == "device-cuda-index-absent" and torch.cuda.device_count() > 99:
        pytest.skip("a machine with 100 GPUs")
    if name == "out-read-only-file" and hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("root may write read-only files")


@pytest.mark.parametrize("name,extra,words", BAD_HARMONIZE, ids=[c[0] for c in BAD_HARMONIZE])
def test_harmonize_refuses_bad_input(name, extra, words, tiny_release, tmp_path, capsys, monkeypatch):
    from r2r.cli import main

    _skip_if_not_applicable(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("R2R_WEIGHTS", raising=False)
    monkeypatch.delenv("R2R_DEBUG", raising=False)
    argv = _bad_case_argv(name, extra, tiny_release, tmp_path)
    before = snapshot(tmp_path, tiny_release)
    rc = main(argv)
    cap = capsys.readouterr()
    assert_refused(subprocess.CompletedProcess(argv, rc, cap.out, cap.err), *words)
    assert snapshot(tmp_path, tiny_release) == before, "a refused run must not change any file"


#: the same refusals from a real ``python -m r2r`` process (exit code, stderr, no traceback)
AS_PROCESS = ("composite-missing", "mask-empty", "out-is-the-composite", "steps-zero", "dtype-unknown",
              "weights-folder-missing")


@pytest.mark.parametrize("name", AS_PROCESS)
def test_harmonize_refuses_bad_input_as_a_process(name, tiny_release, tmp_path):
    _, extra, words = next(c for c in BAD_HARMONIZE if c[0] == name)
    argv = _bad_case_argv(name, extra, tiny_release, tmp_path)
    before = snapshot(tmp_path, tiny_release)
    assert_refused(r2r(*argv, cwd=tmp_path), *words)
    assert snapshot(tmp_path, tiny_release) == before


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores folder permissions")
def test_unwritable_output_folder_is_refused_before_work(case, tiny_release):
    root, cp, mp = case
    locked = root / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        before = snapshot(root)
        proc = r2r("harmonize", "--composite", cp, "--mask", mp, "--out", locked / "sub" / "r.png",
                   "--weights", tiny_release, "--steps", "1", "--max-side", "64", cwd=root)
        assert_refused(proc, "Cannot create", "Permission denied", "Choose a folder you can write to")
        proc = r2r("harmonize", "--composite", cp, "--mask", mp, "--out", locked / "r.png",
                   "--weights", tiny_release, "--steps", "1", "--max-side", "64", cwd=root)
        assert_refused(proc, "Cannot write into", "Permission denied")
        assert snapshot(root) == before
    finally:
        locked.chmod(0o755)


def test_unwritable_output_folder_as_root_too(case, tiny_release, capsys, monkeypatch):
    """The same refusal where permissions cannot be tested (root): the folder's write probe fails."""
    import tempfile

    from r2r.cli import main

    root, cp, mp = case
    locked = root / "locked"
    locked.mkdir()
    real = tempfile.mkstemp

    def no_write(*args, dir=None, **kw):
        if dir is not None and Path(dir) == locked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
        return real(*args, dir=dir, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", no_write)
    before = snapshot(root)
    argv = ["harmonize", "--composite", str(cp), "--mask", str(mp), "--out", str(locked / "r.png"),
            "--weights", str(tiny_release), "--steps", "1", "--max-side", "64"]
    rc = main(argv)
    cap = capsys.readouterr()
    assert_refused(subprocess.CompletedProcess(argv, rc, cap.out, cap.err), "Cannot write into", "Permission denied")
    assert snapshot(root) == before


def test_top_level_usage_errors(tmp_path):
    proc = r2r(cwd=tmp_path)
    assert proc.returncode == 2 and "harmonize" in proc.stdout and "Traceback" not in proc.stderr
    proc = r2r("harmonise", cwd=tmp_path)
    assert_refused(proc, "invalid choice: 'harmonise'")
    proc = r2r("--help", cwd=tmp_path)
    assert proc.returncode == 0 and "--debug" in proc.stdout


def test_demo_refuses_bad_input(tmp_path, capsys, monkeypatch):
    from r2r.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("R2R_WEIGHTS", raising=False)
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "empty").mkdir()
    before = snapshot(tmp_path)
    cases = [
        (["--examples", tmp_path / "missing"], ["--examples folder", "does not exist"]),
        (["--examples", tmp_path / "a_file"], ["--examples folder", "is a file, not a folder"]),
        (["--examples", tmp_path / "empty"], ["No examples in", "_composite.png"]),
        (["--out", tmp_path / "a_file", "--method", "statistics"], ["--out folder", "is a file, not a folder"]),
        (["--max-side", "500"], ["multiple of 64", "--max-side 512"]),
        (["--steps", "-3"], ["--steps must be"]),
        (["--device", "tpu"], ["--device must be"]),
        # R2R explicitly asked for without weights: what to download, and no fallback results
        (["--method", "r2r", "--steps", "1"], ["python -m r2r download", "--method statistics"]),
    ]
    for extra, words in cases:
        argv = ["demo", "--out", str(tmp_path / "d"), *map(str, extra)]
        rc = main(argv)
        cap = capsys.readouterr()
        assert_refused(subprocess.CompletedProcess(argv, rc, cap.out, cap.err), *words)
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith(str(tmp_path / "d"))} == before
    assert not list((tmp_path / "d").rglob("*.png")), "no result files from refused runs"


# ----------------------------------------------------------------------------- valid edge cases


def _harmonize(root, cp, mp, out, tiny_release, *extra):
    from r2r.cli import main

    rc = main(["harmonize", "--composite", str(cp), "--mask", str(mp), "--out", str(out), "--weights",
               str(tiny_release), "--steps", "2", "--seed", "5", "--max-side", "64", *map(str, extra)])
    assert rc == 0
    return read_rgb(out)


def test_valid_edge_cases(case, tiny_release, capsys):
    """Nested new output folder, the feather conventions, grey / RGBA / 16-bit inputs, overwriting an
    earlier result, upper-case extension, JPEG output."""
    root, cp, mp = case
    comp, mask = read_rgb(cp), cv2.imread(str(mp), cv2.IMREAD_UNCHANGED)
    inputs = snapshot(root / "in")
    nested = root / "out" / "a" / "b" / "res.png"
    auto = _harmonize(root, cp, mp, nested, tiny_release)  # --feather default = automatic
    assert auto.shape == comp.shape and sorted(p.name for p in nested.parent.iterdir()) == ["res.png"]
    explicit_auto = _harmonize(root, cp, mp, root / "out" / "auto.png", tiny_release, "--feather", "-1")
    assert np.array_equal(explicit_auto, auto), "--feather -1 is the automatic default"
    hard = _harmonize(root, cp, mp, root / "out" / "hard.png", tiny_release, "--feather", "0")
    inside, outside = mask >= 128, mask < 128
    assert np.array_equal(hard[outside], comp[outside]), "--feather 0: a hard edge, background untouched"
    assert not np.array_equal(hard[inside], comp[inside])
    # automatic = one latent cell = 8 working px = 14 original px here (112 px shown at 64 px)
    dist = cv2.distanceTransform(outside.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    band = (dist > 0) & (dist <= 2)
    assert not np.array_equal(auto[band], comp[band]), "automatic feather blends a band outside the mask"
    assert np.array_equal(auto[dist > 14], comp[dist > 14]), "and nothing beyond it"

    # 16-bit composite (value * 257) and RGBA mask (alpha) read as the same 8-bit data -> identical result
    cv2.imwrite(str(root / "in" / "comp16.png"), comp[..., ::-1].astype(np.uint16) * 257)
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 3] = mask
    cv2.imwrite(str(root / "in" / "mask_rgba.png"), rgba)
    same = _harmonize(root, root / "in" / "comp16.png", root / "in" / "mask_rgba.png", root / "out" / "x16.png",
                      tiny_release, "--feather", "0")
    assert np.array_equal(same, hard)
    # greyscale composite -> RGB output of the same size, background kept exactly
    grey = cv2.cvtColor(comp, cv2.COLOR_RGB2GRAY)
    cv2.imwrite(str(root / "in" / "grey.png"), grey)
    out = _harmonize(root, root / "in" / "grey.png", mp, root / "out" / "grey.png", tiny_release, "--feather", "0")
    assert out.shape == (H, W, 3) and np.array_equal(out[outside], np.repeat(grey[..., None], 3, 2)[outside])
    # overwriting an earlier result (not an input) is allowed and atomic; upper-case extension; JPEG
    again = _harmonize(root, cp, mp, root / "out" / "hard.png", tiny_release, "--feather", "0")
    assert np.array_equal(again, hard)
    upper = _harmonize(root, cp, mp, root / "out" / "UP.PNG", tiny_release, "--feather", "0")
    assert np.array_equal(upper, hard)
    jpg = _harmonize(root, cp, mp, root / "out" / "r.jpg", tiny_release, "--feather", "0")
    assert np.abs(jpg.astype(int) - hard).mean() < 4
    # strength 0 = no controller: a different image, still a valid one
    zero = _harmonize(root, cp, mp, root / "out" / "s0.png", tiny_release, "--feather", "0", "--strength", "0")
    assert not np.array_equal(zero, hard) and np.array_equal(zero[outside], comp[outside])
    assert not [p for p in root.rglob("*") if ".tmp-" in p.name], "no temp files left"
    assert {k: v for k, v in snapshot(root / "in").items() if k in inputs} == inputs, "inputs never change"
    assert "Traceback" not in capsys.readouterr().err


def test_valid_run_as_a_process(case, tiny_release):
    """A real ``python -m r2r harmonize`` into a new nested folder: exit 0, the same image as in-process."""
    root, cp, mp = case
    out = root / "out" / "new" / "deeper" / "r.png"
    proc = r2r("harmonize", "--composite", cp, "--mask", mp, "--out", out, "--weights", tiny_release,
               "--steps", "2", "--seed", "5", "--max-side", "64", "--feather", "0", cwd=root)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr and f"wrote {out}" in proc.stdout, proc.stderr
    assert np.array_equal(read_rgb(out), _harmonize(root, cp, mp, root / "out" / "same.png", tiny_release,
                                                    "--feather", "0"))


def test_fp16_on_cpu_finishes_with_a_note(case, tiny_release):
    """--dtype fp16 on a CPU works (slower than fp32) and says so in one line; it must not hang."""
    root, cp, mp = case
    start = time.monotonic()
    proc = r2r("harmonize", "--composite", cp, "--mask", mp, "--out", root / "out" / "h.png", "--device", "cpu",
               "--weights", tiny_release, "--steps", "2", "--max-side", "128", "--dtype", "fp16", cwd=root,
               timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "float16 on the CPU runs several times slower than float32" in proc.stderr
    assert time.monotonic() - start < 120 and read_rgb(root / "out" / "h.png").shape == (H, W, 3)


# ----------------------------------------------------------------------------- interrupts, bugs, failed writes


def test_ctrl_c_exits_130_without_output(case, tiny_release):
    root, cp, mp = case
    out = root / "out" / "r.png"
    proc = subprocess.Popen([sys.executable, "-m", "r2r", "harmonize", "--composite", str(cp), "--mask", str(mp),
                             "--out", str(out), "--weights", str(tiny_release), "--steps", "1000",
                             "--max-side", "64"], cwd=root, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seen = threading.Event()
    chunks = []

    def watch():
        while chunk := proc.stderr.read(1):
            chunks.append(chunk)
            if not seen.is_set() and "step/s" in "".join(chunks[-40:]):  # the denoising bar is shown
                seen.set()

    reader = threading.Thread(target=watch, daemon=True)
    reader.start()
    assert seen.wait(400), "the denoising loop never started: " + "".join(chunks)
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(60)
    reader.join(10)
    err = "".join(chunks)
    assert rc == 130 and "interrupted" in err and "Traceback" not in err, (rc, err)
    assert list((root / "out").iterdir()) == [], "no output and no temp file after Ctrl-C"


def _in_process(argv, capsys):
    from r2r.cli import main

    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr()


def test_unexpected_error_is_reported_as_a_bug(case, capsys, monkeypatch):
    import r2r.blending

    root, cp, mp = case

    def broken(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(r2r.blending, "harmonize_statistics", broken)
    argv = ["harmonize", "--composite", cp, "--mask", mp, "--out", root / "out" / "r.png", "--method", "statistics"]
    monkeypatch.delenv("R2R_DEBUG", raising=False)
    rc, cap = _in_process(argv, capsys)
    assert rc == 1 and "unexpected RuntimeError: boom" in cap.err and "This is a bug" in cap.err
    assert "--debug" in cap.err and "Traceback" not in cap.err
    rc, cap = _in_process(["--debug", *argv], capsys)
    assert rc == 1 and "Traceback" in cap.err and "boom" in cap.err
    monkeypatch.setenv("R2R_DEBUG", "1")
    rc, cap = _in_process(argv, capsys)
    assert rc == 1 and "Traceback" in cap.err
    assert list((root / "out").iterdir()) == []


def test_failed_write_keeps_the_result_in_a_temp_file(case, capsys, monkeypatch, tmp_path):
    """Disk full after the work: exit 2, the message names the fallback file, which holds the result."""
    import r2r.fileio

    root, cp, mp = case
    real = r2r.fileio.atomic_write_bytes
    out = root / "out" / "r.png"

    def disk_full_for_out(path, data, **kw):
        if Path(path).parent == out.parent:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, data, **kw)

    monkeypatch.setattr(r2r.fileio, "atomic_write_bytes", disk_full_for_out)
    fallback_dir = tmp_path / "fallback"
    fallback_dir.mkdir()
    monkeypatch.setenv("TMPDIR", str(fallback_dir))
    monkeypatch.setattr("tempfile.tempdir", None)
    argv = ["harmonize", "--composite", cp, "--mask", mp, "--out", out, "--method", "statistics"]
    rc, cap = _in_process(argv, capsys)
    assert rc == 2 and "No space left on device" in cap.err and "Traceback" not in cap.err
    saved = list(fallback_dir.glob("r2r-r-*.png"))
    assert len(saved) == 1 and str(saved[0]) in cap.err
    monkeypatch.setattr(r2r.fileio, "atomic_write_bytes", real)
    assert _in_process(argv, capsys)[0] == 0
    assert np.array_equal(read_rgb(saved[0]), read_rgb(out)), "the fallback holds the finished result"
    # nowhere to write at all: said plainly, still no traceback
    monkeypatch.setattr(r2r.fileio, "atomic_write_bytes",
                        lambda p, d, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    rc, cap = _in_process(argv, capsys)
    assert rc == 2 and "the result is lost" in cap.err and "Traceback" not in cap.err
