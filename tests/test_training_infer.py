"""``python -m r2r infer-dataset`` end to end on the tiny release (batched, resumable, sharded)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from test_training import make_tiny_dataset, single_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny_dataset_infer"), n_train=1, n_test=3)


def _args(release, data, out, *extra):
    return ["infer-dataset", "--weights", str(release), "--data", data["layout"], "--split", "test",
            "--out", str(out), "--steps", "2", "--max-side", "64", *extra]


def test_infer_dataset_end_to_end(tiny_release, tiny_dataset, tmp_path, capsys):
    import cv2

    from r2r.cli import main
    from r2r.metrics import evaluate

    out = tmp_path / "pred"
    assert main(_args(tiny_release, tiny_dataset, out, "--batch-size", "2")) == 0
    files = sorted(os.listdir(out))
    assert files == ["chelsea_1_1.png", "coffee_1_1.png", "rocket_1_1.png"]
    img = cv2.imread(str(out / files[0]))
    assert img.shape == (72, 88, 3)  # the composite's size, background pasted back
    mtimes = {f: os.stat(out / f).st_mtime_ns for f in files}
    first = {f: cv2.imread(str(out / f)) for f in files}

    # resumable: nothing to do the second time; a deleted output is the only one redone
    capsys.readouterr()
    assert main(_args(tiny_release, tiny_dataset, out, "--batch-size", "2")) == 0
    assert "0 to harmonize, 3 already done" in capsys.readouterr().err
    os.remove(out / files[1])
    assert main(_args(tiny_release, tiny_dataset, out, "--batch-size", "1")) == 0
    assert "1 to harmonize, 2 already done" in capsys.readouterr().err
    assert {f: os.stat(out / f).st_mtime_ns for f in (files[0], files[2])} == {f: mtimes[f] for f in (files[0], files[2])}
    # every image has its own generator: batch size 1 gives the batch-size-2 result (up to float
    # rounding of batched convolutions)
    diff = np.abs(cv2.imread(str(out / files[1])).astype(int) - first[files[1]].astype(int))
    assert diff.max() <= 2 and diff.mean() < 0.1
    assert not [f for f in os.listdir(out) if ".tmp" in f]

    rep = evaluate(out, tiny_dataset["layout"], "test", resolution=64)
    assert rep is not None

    small = tmp_path / "small"
    assert main(_args(tiny_release, tiny_dataset, small, "--output-size", "32", "--limit", "1")) == 0
    (only,) = os.listdir(small)
    assert cv2.imread(str(small / only)).shape == (32, 32, 3)


def test_infer_dataset_errors_and_sharding(tiny_release, tiny_dataset, tmp_path, capsys):
    from r2r.cli import main
    from r2r.cli.infer_dataset import shard

    assert main(_args(tiny_release, tiny_dataset, tmp_path / "o", "--max-side", "100")) == 2
    assert "multiple of 64" in capsys.readouterr().err
    assert main(_args(tiny_release, tiny_dataset, tmp_path / "o", "--batch-size", "0")) == 2
    assert "--batch-size must be >= 1" in capsys.readouterr().err
    assert main(["infer-dataset", "--weights", str(tiny_release), "--data", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    items = list(range(7))
    parts = [shard(items, p, 3) for p in range(3)]
    assert sorted(sum(parts, [])) == items and parts[1] == [1, 4]
    assert not Path(tmp_path / "o").exists() or not os.listdir(tmp_path / "o")
