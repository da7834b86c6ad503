"""`python -m r2r harmonize` and `python -m r2r demo` end to end on the tiny release."""

import cv2
import numpy as np
import pytest

from r2r.cli import main
from r2r.cli.demo import EXAMPLES_DIR, find_examples
from r2r.fileio import read_image, read_mask, write_image

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture()
def files(tmp_path):
    rng = np.random.default_rng(0)
    h, w = 90, 140
    yy, xx = np.mgrid[0:h, 0:w]
    comp = np.clip(np.stack([xx / w * 200, yy / h * 200, 90 + 0 * xx], -1) + rng.normal(0, 6, (h, w, 3)), 0, 255)
    mask = np.zeros((h, w), np.uint8)
    mask[20:70, 30:90] = 255
    comp[mask > 0] = np.clip(comp[mask > 0] * [1.3, 0.7, 0.6] + 20, 0, 255)
    comp = comp.astype(np.uint8)
    cp, mp = tmp_path / "comp.png", tmp_path / "mask.png"
    cv2.imwrite(str(cp), comp[..., ::-1])
    cv2.imwrite(str(mp), mask)
    return comp, mask, cp, mp


def test_harmonize_end_to_end(tiny_release, files, tmp_path, capsys):
    comp, mask, cp, mp = files
    out = tmp_path / "sub" / "out.png"
    rc = main(["harmonize", "--composite", str(cp), "--mask", str(mp), "--out", str(out), "--weights", str(tiny_release),
               "--steps", "2", "--seed", "3", "--max-side", "128", "--feather", "2"])
    assert rc == 0 and out.is_file()
    assert "wrote" in capsys.readouterr().out
    res = read_image(out)
    assert res.shape == comp.shape
    dist = cv2.distanceTransform((mask == 0).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    assert np.array_equal(res[dist > 2], comp[dist > 2]), "background must be bit-exact"
    assert not np.array_equal(res[mask > 0], comp[mask > 0])
    assert [p.name for p in out.parent.iterdir()] == ["out.png"], "no temp files left behind"
    # same seed -> same file; --no-paste-back -> background regenerated
    again = tmp_path / "again.png"
    main(["harmonize", "--composite", str(cp), "--mask", str(mp), "--out", str(again), "--weights", str(tiny_release),
          "--steps", "2", "--seed", "3", "--max-side", "128", "--feather", "2"])
    assert np.array_equal(read_image(again), res)
    # --low-memory (one network resident at a time) writes the same image
    low = tmp_path / "low.png"
    assert main(["harmonize", "--composite", str(cp), "--mask", str(mp), "--out", str(low), "--weights",
                 str(tiny_release), "--steps", "2", "--seed", "3", "--max-side", "128", "--feather", "2",
                 "--low-memory"]) == 0
    assert np.array_equal(read_image(low), res)
    free = tmp_path / "free.png"
    main(["harmonize", "--composite", str(cp), "--mask", str(mp), "--out", str(free), "--weights", str(tiny_release),
          "--steps", "1", "--max-side", "128", "--no-paste-back"])
    assert not np.array_equal(read_image(free)[dist > 2], comp[dist > 2])


def test_weights_from_environment(tiny_release, files, tmp_path, monkeypatch):
    _, _, cp, mp = files
    monkeypatch.setenv("R2R_WEIGHTS", str(tiny_release))
    out = tmp_path / "env.jpg"
    assert main(["harmonize", "--composite", str(cp), "--mask", str(mp), "--out", str(out), "--steps", "1",
                 "--max-side", "64", "--dtype", "bf16"]) == 0
    assert read_image(out).shape == (90, 140, 3)


def test_missing_weights_says_what_to_download(files, tmp_path, monkeypatch, capsys):
    _, _, cp, mp = files
    monkeypatch.delenv("R2R_WEIGHTS", raising=False)
    monkeypatch.chdir(tmp_path)
    rc = main(["harmonize", "--composite", str(cp), "--mask", str(mp), "--out", str(tmp_path / "o.png")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "python -m r2r download --to models/r2r/region2region" in err
    assert "1243asdad/region2region" in err and "--method statistics" in err
    assert not (tmp_path / "o.png").exists()


def test_statistics_method_needs_no_weights(files, tmp_path):
    comp, mask, cp, mp = files
    out = tmp_path / "stats.png"
    assert main(["harmonize", "--composite", str(cp), "--mask", str(mp), "--out", str(out), "--weights",
                 str(tmp_path / "none"), "--method", "statistics"]) == 0
    res = read_image(out)
    assert np.array_equal(res[mask == 0], comp[mask == 0]) and not np.array_equal(res[mask > 0], comp[mask > 0])


def test_cli_user_errors(files, tmp_path, capsys):
    comp, mask, cp, mp = files
    bad_mask = tmp_path / "small_mask.png"
    cv2.imwrite(str(bad_mask), mask[:50])
    cases = [
        (["--composite", str(tmp_path / "nope.png"), "--mask", str(mp)], "does not exist"),
        (["--composite", str(cp), "--mask", str(bad_mask)], "does not match the composite size"),
        (["--composite", str(cp), "--mask", str(mp), "--out", str(tmp_path / "o.gifx")], "use one of .png"),
        (["--composite", str(cp), "--mask", str(mp), "--max-side", "100"], "multiple of 64"),
    ]
    for extra, words in cases:
        argv = ["harmonize", "--out", str(tmp_path / "o.png"), "--method", "statistics", *extra]
        if "--out" in extra:
            argv = ["harmonize", "--method", "statistics", *extra]
        assert main(argv) == 2
        assert words in capsys.readouterr().err
    not_image = tmp_path / "text.png"
    not_image.write_text("hello")
    assert main(["harmonize", "--composite", str(not_image), "--mask", str(mp), "--out", str(tmp_path / "o.png")]) == 2
    assert "Could not read" in capsys.readouterr().err


def test_image_file_conventions(tmp_path):
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 2] = 200  # red in BGR order
    rgba[10:30, 10:30, 3] = 255
    cv2.imwrite(str(tmp_path / "a.png"), rgba)
    assert read_mask(tmp_path / "a.png").max() == 255 and read_mask(tmp_path / "a.png")[0, 0] == 0  # alpha
    assert tuple(read_image(tmp_path / "a.png")[0, 0]) == (200, 0, 0)  # RGB, alpha dropped
    deep = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)
    cv2.imwrite(str(tmp_path / "d.png"), deep)
    img = read_image(tmp_path / "d.png")
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8 and img.max() == round(deep.max() / 257)
    write_image(tmp_path / "w.png", img)
    assert np.array_equal(read_image(tmp_path / "w.png"), img)


def test_bundled_examples_are_valid():
    examples = find_examples(EXAMPLES_DIR)
    assert len(examples) >= 2
    for _, comp_path, mask_path in examples:
        assert comp_path.stat().st_size < 400_000 and mask_path.stat().st_size < 400_000
        comp, mask = read_image(comp_path), read_mask(mask_path)
        assert max(comp.shape[:2]) <= 512 and comp.shape[:2] == mask.shape
        assert set(np.unique(mask)) == {0, 255} and 0.05 < (mask > 0).mean() < 0.8


def test_demo_with_weights(tiny_release, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--weights", str(tiny_release), "--steps", "1", "--max-side", "64"]) == 0
    names = {p.name for p in out.iterdir()}
    for name, _, _ in find_examples(EXAMPLES_DIR):
        assert f"{name}_harmonized.png" in names
    sheet = read_image(out / "contact_sheet.png")
    assert sheet.shape[0] >= 3 * 256 and sheet.shape[1] > 3 * 200
    assert "R2R weights" in capsys.readouterr().out


def test_demo_without_weights_falls_back(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("R2R_WEIGHTS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--out", "demo_output"]) == 0
    text = capsys.readouterr().out
    assert "weight-free statistics harmonizer" in text and "python -m r2r download --to models/r2r/region2region" in text
    assert (tmp_path / "demo_output" / "contact_sheet.png").is_file()
    assert main(["demo", "--out", "x", "--method", "r2r"]) == 2  # explicit R2R without weights is an error
