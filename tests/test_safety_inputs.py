"""Non-regular files given as image inputs (issue 22): read once when they are a stream, refused with a
clear message otherwise, never blocking forever.

* a named pipe (FIFO) nothing writes to: refused after ``r2r.fileio.STREAM_IDLE_S`` (the real command
  too, as a process with a hard timeout);
* process substitution ``<(cat image.png)`` and ``/dev/stdin`` fed by a pipe: read, the same result as
  the file itself;
* a pipe whose writer starts late: read; one that never ends: stopped at the size limit;
* a folder, a device (``/dev/null``, ``/dev/zero``), a socket, a dangling link: refused by name;
* the same readers behind ``evaluate`` (ground truth, mask) and ``make-dataset`` (sources, label maps),
  and a pipe as an output path.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import r2r.fileio as fileio
from r2r.cli import main
from r2r.errors import R2RUserError

REPO = Path(__file__).resolve().parents[1]
H, W = 64, 80


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("R2R_WEIGHTS", "R2R_DEBUG")}
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return env


def snapshot(folder) -> dict:
    return {str(p): (hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else "other")
            for p in sorted(Path(folder).rglob("*"))}


@pytest.fixture()
def files(tmp_path):
    rng = np.random.default_rng(0)
    comp = rng.integers(30, 220, (H, W, 3), dtype=np.uint8)
    mask = np.zeros((H, W), np.uint8)
    mask[16:48, 20:60] = 255
    comp[mask > 0] = comp[mask > 0] // 2
    cv2.imwrite(str(tmp_path / "comp.png"), comp[..., ::-1])
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    (tmp_path / "out").mkdir()
    return tmp_path


@pytest.fixture()
def fifo(tmp_path):
    path = tmp_path / "pipe.png"
    os.mkfifo(path)
    return path


def in_time(fn, seconds=15.0):
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it takes longer than ``seconds``."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t0 = time.monotonic()
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"blocked for more than {seconds} s"
    box["seconds"] = time.monotonic() - t0
    return box


def harmonize(capsys, composite, mask, out):
    rc = main(["harmonize", "--method", "statistics", "--composite", str(composite), "--mask", str(mask),
               "--out", str(out)])
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err
    return rc, cap.err


# ----------------------------------------------------------------------------- pipes


def test_fifo_without_writer_is_refused_not_waited_on_forever(files, fifo, capsys, monkeypatch):
    monkeypatch.setattr(fileio, "STREAM_IDLE_S", 0.5)
    before = snapshot(files)
    box = in_time(lambda: harmonize(capsys, fifo, files / "mask.png", files / "out" / "r.png"))
    rc, err = box["value"]
    assert rc == 2 and "is a pipe and nothing was written to it for 0.5 s" in err and "start the writer" in err
    assert box["seconds"] < 10 and snapshot(files) == before
    box = in_time(lambda: fileio.read_mask(fifo))  # the mask reader the same way
    assert isinstance(box["error"], R2RUserError) and "mask file" in str(box["error"])


def test_fifo_without_writer_as_a_real_process(files, fifo):
    """The real command with the default wait: exit 2 after STREAM_IDLE_S, never a hang."""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "r2r", "harmonize", "--method", "statistics", "--composite",
                           str(fifo), "--mask", str(files / "mask.png"), "--out", str(files / "out" / "r.png")],
                          cwd=files, env=_env(), capture_output=True, text=True, timeout=fileio.STREAM_IDLE_S + 60)
    assert proc.returncode == 2 and "nothing was written to it" in proc.stderr and "Traceback" not in proc.stderr
    assert time.monotonic() - t0 < fileio.STREAM_IDLE_S + 60 and not (files / "out" / "r.png").exists()


def test_process_substitution_and_stdin_are_read_like_the_file(files):
    """``<(cat comp.png)`` and ``cat comp.png | ... --composite /dev/stdin`` give the file's result."""
    run = dict(cwd=files, env=_env(), capture_output=True, text=True, timeout=120)
    ref = subprocess.run([sys.executable, "-m", "r2r", "harmonize", "--method", "statistics", "--composite",
                          "comp.png", "--mask", "mask.png", "--out", "out/ref.png"], **run)
    assert ref.returncode == 0, ref.stderr
    sub = subprocess.run(["bash", "-c", f'"{sys.executable}" -m r2r harmonize --method statistics --composite '
                          '<(cat comp.png) --mask <(cat mask.png) --out out/sub.png'], **run)
    assert sub.returncode == 0 and "Traceback" not in sub.stderr, sub.stderr
    with open(files / "comp.png", "rb") as stdin:
        piped = subprocess.run([sys.executable, "-m", "r2r", "harmonize", "--method", "statistics", "--composite",
                                "/dev/stdin", "--mask", "mask.png", "--out", "out/stdin.png"], stdin=stdin,
                               **{k: v for k, v in run.items()})
    assert piped.returncode == 0, piped.stderr
    ref_bytes = (files / "out" / "ref.png").read_bytes()
    assert (files / "out" / "sub.png").read_bytes() == ref_bytes == (files / "out" / "stdin.png").read_bytes()


def test_fifo_with_a_late_writer_is_read(files, fifo):
    data = (files / "comp.png").read_bytes()

    def writer():
        time.sleep(0.3)
        with open(fifo, "wb") as fh:
            for i in range(0, len(data), 1000):  # in pieces, with pauses
                fh.write(data[i:i + 1000])
                fh.flush()
                time.sleep(0.001)

    threading.Thread(target=writer, daemon=True).start()
    box = in_time(lambda: fileio.read_image(fifo))
    assert np.array_equal(box["value"], fileio.read_image(files / "comp.png"))


def test_endless_stream_stops_at_the_size_limit(fifo, monkeypatch):
    monkeypatch.setattr(fileio, "MAX_STREAM_BYTES", 1 << 20)
    stop = threading.Event()

    def writer():
        try:
            with open(fifo, "wb") as fh:
                while not stop.is_set():
                    fh.write(b"\0" * 65536)
        except (BrokenPipeError, OSError):
            pass

    threading.Thread(target=writer, daemon=True).start()
    box = in_time(lambda: fileio.read_image(fifo))
    stop.set()
    assert isinstance(box["error"], R2RUserError) and "delivered more than 1 MiB" in str(box["error"])


# ----------------------------------------------------------------------------- other non-regular files


def test_folders_devices_sockets_and_dangling_links_are_refused(files, capsys):
    sock_path = files / "s.png"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(sock_path))
    os.symlink(files / "nothing.png", files / "dangling.png")
    (files / "folder.png").mkdir()
    cases = [(files / "folder.png", "is a folder"), ("/dev/null", "is a device"), ("/dev/zero", "is a device"),
             (sock_path, "is a socket"), (files / "dangling.png", "is a symbolic link to nothing")]
    before = snapshot(files / "out")
    try:
        for path, words in cases:
            box = in_time(lambda p=path: harmonize(capsys, p, files / "mask.png", files / "out" / "r.png"))
            rc, err = box["value"]
            assert rc == 2 and words in err and str(path) in err, (path, err)
            box = in_time(lambda p=path: harmonize(capsys, files / "comp.png", p, files / "out" / "r.png"))
            rc, err = box["value"]
            assert rc == 2 and words in err and "mask" in err, (path, err)
    finally:
        srv.close()
    assert snapshot(files / "out") == before


def test_a_pipe_as_the_output_path_is_refused(files, fifo, capsys):
    box = in_time(lambda: harmonize(capsys, files / "comp.png", files / "mask.png", fifo))
    rc, err = box["value"]
    assert rc == 2 and "not a regular file" in err


# ----------------------------------------------------------------------------- evaluate, make-dataset


def _write(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), arr)


def test_evaluate_with_a_pipe_for_ground_truth_or_mask(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(fileio, "STREAM_IDLE_S", 0.5)
    data, pred = tmp_path / "data", tmp_path / "pred"
    img = np.full((32, 32, 3), 100, np.uint8)
    _write(data / "HCOCO" / "composite_images" / "c1_1_1.png", img)
    _write(pred / "c1_1_1.png", img)
    (data / "HCOCO" / "masks").mkdir(parents=True)
    (data / "HCOCO" / "real_images").mkdir(parents=True)
    os.mkfifo(data / "HCOCO" / "real_images" / "c1.png")
    _write(data / "HCOCO" / "masks" / "c1_1.png", np.pad(np.full((16, 16), 255, np.uint8), 8))
    (data / "test.jsonl").write_text('{"file_name": "HCOCO/composite_images/c1_1_1.png", "text": ""}\n')
    argv = ["evaluate", "--pred", str(pred), "--data", str(data), "--resolution", "32", "--no-progress"]
    box = in_time(lambda: main(argv))
    err = capsys.readouterr().err
    assert box["value"] == 2 and "ground truth" in err and "is a pipe and nothing was written" in err
    assert "Traceback" not in err
    # a pipe that is fed: measured like the file
    os.unlink(data / "HCOCO" / "real_images" / "c1.png")
    os.mkfifo(data / "HCOCO" / "real_images" / "c1.png")
    png = cv2.imencode(".png", img)[1].tobytes()

    def writer():
        with open(data / "HCOCO" / "real_images" / "c1.png", "wb") as fh:
            fh.write(png)

    threading.Thread(target=writer, daemon=True).start()
    box = in_time(lambda: main(argv))
    out = capsys.readouterr()
    assert box["value"] == 0, out.err


def test_make_dataset_skips_pipes_among_its_sources(tmp_path, capsys):
    """A FIFO named like an image among the sources is not a source (no hang); the others are made."""
    rng = np.random.default_rng(0)
    im, mk = tmp_path / "images", tmp_path / "masks"
    for i in range(2):
        _write(im / f"img{i}.jpg", rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
        _write(mk / f"img{i}.png", np.pad(np.full((20, 24), 255, np.uint8), ((10, 10), (12, 12))))
    os.mkfifo(im / "img9.jpg")
    os.mkfifo(mk / "img0_mask.png")
    argv = ["make-dataset", "--images", str(im), "--masks", str(mk), "--out", str(tmp_path / "out"), "--no-progress"]
    box = in_time(lambda: main(argv), 60)
    out = capsys.readouterr()
    assert box["value"] == 0, out.err
    assert "2 image(s) in this shard" in out.out


def test_label_map_pipe_is_refused_in_time(fifo, monkeypatch):
    from r2r.dataset.composites import read_label_map

    monkeypatch.setattr(fileio, "STREAM_IDLE_S", 0.3)
    box = in_time(lambda: read_label_map(fifo))
    assert isinstance(box["error"], R2RUserError) and "label map" in str(box["error"])


def test_a_pipe_named_like_the_manifest_is_refused_in_time(tmp_path, capsys):
    """--out holds a FIFO named manifest-<subset>.json: it is not make-dataset's own manifest (refused, nothing
    written), and telling so never opens the pipe (no hang)."""
    rng = np.random.default_rng(0)
    im, mk, out = tmp_path / "images", tmp_path / "masks", tmp_path / "out"
    _write(im / "img0.jpg", rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    _write(mk / "img0.png", np.pad(np.full((20, 24), 255, np.uint8), ((10, 10), (12, 12))))
    out.mkdir()
    os.mkfifo(out / "manifest-R-Custom.json")
    argv = ["make-dataset", "--images", str(im), "--masks", str(mk), "--out", str(out), "--subset", "R-Custom",
            "--no-progress"]
    box = in_time(lambda: main(argv), 60)
    err = capsys.readouterr().err
    assert box["value"] == 2, err
    assert "was not written by make-dataset" in err
    assert sorted(p.name for p in out.iterdir()) == ["manifest-R-Custom.json"]
