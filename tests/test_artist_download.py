"""Issue 16, items 8 and 9 (loaders): R2R Checkpoint Loader's download_if_missing with no network answers at
once, in the UI's words, naming the destination folder (models/r2r/region2region in ComfyUI's models folder)
and the command line; while it downloads, the node's progress bar follows the bytes and Cancel stops the
download; fp16/bf16 chosen on a CPU is warned about in the log and on the node.

The no-network runs are real: a child Python with offline mode off and the hub address pointed at a closed
local port or at a name that cannot exist (never the real hub, so an online machine downloads nothing)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time

import pytest
from comfy_pack import PACK_ROOT, node_classes, pack_module

NODES = node_classes()
download = pack_module("nodes.download")
host = pack_module("nodes._host")
errors = pack_module("r2r.errors")

CHILD = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, sys.argv[1])
    from comfy_pack import node_classes
    t = time.time()
    try:
        node_classes()["R2RCheckpointLoader"].execute("region2region", "auto", True)
        out = {"error": None}
    except Exception as exc:
        out = {"error": type(exc).__name__, "message": str(exc)}
    out["seconds"] = time.time() - t
    print(json.dumps(out))
""")


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: connecting is refused


@pytest.mark.parametrize("endpoint", ["CLOSED_PORT", "https://r2r-no-such-host.invalid"])
def test_no_network_download_stops_at_once_with_the_folder_and_the_command(tmp_path, endpoint):
    if endpoint == "CLOSED_PORT":
        endpoint = f"http://127.0.0.1:{_closed_port()}"
    models = tmp_path / "models" / "r2r"
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=endpoint, R2R_MODELS_DIR=str(models), R2R_HOST="plain")
    t0 = time.time()
    res = subprocess.run([sys.executable, "-c", CHILD, os.path.join(PACK_ROOT, "tests")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["error"] == "R2RWeightsNotFound", out
    assert out["seconds"] < 12, out  # huggingface_hub's retries alone took ~25 s before (issue 16)
    assert time.time() - t0 < 90
    text = out["message"]
    target = str(models / "region2region")
    assert target in text and "models/r2r/region2region inside ComfyUI's models folder" in text, text
    assert "python -m r2r download --to region2region" in text and "cannot reach the Hugging Face hub" in text
    assert "press Run again" in text and "pass that folder" not in text
    assert "clear_vae/" in text and "stable-diffusion-inpainting/unet/" in text
    assert not models.exists()  # nothing was created


def test_offline_mode_message_names_the_folder_and_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("R2R_MODELS_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(errors.R2RWeightsNotFound) as exc:
        NODES["R2RCheckpointLoader"].execute("region2region", "auto", True)
    text = str(exc.value)
    assert "offline mode is on" in text and str(tmp_path / "region2region") in text
    assert "python -m r2r download --to region2region" in text and "models/r2r/region2region" in text


class Bar:
    """Stands in for the node's progress bar (ComfyUI's ProgressBar inside ComfyUI)."""

    made: list = []

    def __init__(self, total, desc=""):
        self.total, self.value, self.values, self.cancel_at = total, 0, [], None
        Bar.made.append(self)

    def update(self, n=1, preview_latent=None):
        if self.cancel_at is not None and len(self.values) >= self.cancel_at:
            raise InterruptedError("cancelled")
        self.value = min(self.value + n, self.total)
        self.values.append(self.value)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


FAKE_DOWNLOAD = textwrap.dedent("""
    import os, sys, time
    to = sys.argv[1]
    os.makedirs(to, exist_ok=True)
    for i in range(4):
        with open(os.path.join(to, f"part{i}.bin"), "wb") as f:
            f.write(b"x" * 1_500_000)
        time.sleep(0.4)
    if len(sys.argv) > 2:
        print("error: the disk that holds " + to + " is full", file=sys.stderr)
        sys.exit(2)
""")


def _fake(target, fail=False):
    return [sys.executable, "-c", FAKE_DOWNLOAD, str(target)] + (["fail"] if fail else [])


def test_download_progress_follows_the_bytes_on_the_node(tmp_path, monkeypatch):
    monkeypatch.setattr(host, "Progress", Bar)
    Bar.made = []
    target = tmp_path / "region2region"
    download.run_download(str(target), _fake(target), total_bytes=6_000_000, poll_s=0.1)
    bar = Bar.made[-1]
    assert bar.total == 6 and bar.values[-1] == 6
    assert bar.values == sorted(bar.values) and len(set(bar.values)) >= 3, bar.values  # it moved as bytes came
    assert len(os.listdir(target)) == 4


def test_download_failure_and_cancel(tmp_path, monkeypatch):
    monkeypatch.setattr(host, "Progress", Bar)
    target = tmp_path / "region2region"
    with pytest.raises(errors.R2RWeightsNotFound) as exc:
        download.run_download(str(target), _fake(target, fail=True), total_bytes=6_000_000, poll_s=0.1)
    text = str(exc.value)
    assert "the download stopped (the disk that holds" in text and "press Run again" in text
    assert str(target) in text

    class CancelledBar(Bar):
        def __init__(self, total, desc=""):
            super().__init__(total, desc)
            self.cancel_at = 2

    monkeypatch.setattr(host, "Progress", CancelledBar)
    other = tmp_path / "cancelled"
    t0 = time.time()
    with pytest.raises(InterruptedError):
        download.run_download(str(other), _fake(other), total_bytes=6_000_000, poll_s=0.1)
    assert time.time() - t0 < 1.5  # the child (1.6 s of work) was stopped, not waited for
    time.sleep(0.8)
    assert len(os.listdir(other)) < 4  # and wrote nothing more


def test_release_size_falls_back_without_a_listing(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    assert download.release_bytes("no/such-repo") == download.NOMINAL_BYTES


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_on_the_cpu_is_warned_about(models_dir, dtype, caplog):
    caplog.set_level(logging.WARNING)
    NODES["R2RClearVAELoader"].execute("region2region/clear_vae", dtype)
    node_lines = [r.getMessage() for r in caplog.records if r.name == "r2r.nodes"]
    assert any(f"dtype {dtype} on the CPU runs several times slower" in m and "R2R Clear-VAE Loader" in m
               for m in node_lines), node_lines
    caplog.clear()
    NODES["R2RClearVAELoader"].execute("region2region/clear_vae", "fp32")
    assert not [r for r in caplog.records if "slower" in r.getMessage()]
