"""Never lose what the user already has (issues 18 and 22), on the CLI writers: ``evaluate --json``,
``make-dataset`` and ``infer-dataset``.

Every case runs the command as ``python -m r2r`` runs it (``r2r.cli.main``, in this process so a full disk
can be simulated) and asserts: the exit status, the message (what is wrong, which folder, what to do), no
traceback, and -- by hashing every file before and after -- that no existing file changed, nothing was
written outside the chosen folder and nothing half-written stays. A full disk is simulated at the lowest
level r2r writes through (the file objects of ``r2r.fileio`` and ``os.write``): the write that hits it puts
half its bytes on disk and raises ENOSPC, exactly as a real full disk does. Over-long names are real ones.
"""

from __future__ import annotations

import builtins
import errno
import filecmp
import hashlib
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

import r2r.fileio
from r2r.cli import main
from r2r.dataset import layouts

LONG = "n" * 300  # longer than any common file system takes for one name (255 bytes)


# ----------------------------------------------------------------------------- helpers


def snapshot(*folders) -> dict:
    """path -> sha1 of every file (folders: 'dir'; links: where they point) under ``folders``."""
    out = {}
    for folder in folders:
        for p in sorted(Path(folder).rglob("*")):
            if p.is_symlink():
                out[str(p)] = "link:" + os.readlink(p)
            else:
                out[str(p)] = "dir" if p.is_dir() else hashlib.sha1(p.read_bytes()).hexdigest()
    return out


def cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, err
    return rc, out, err


def refused(capsys, *argv, words=(), unchanged=()):
    """Exit 2, every word in the message, no traceback, and no file under ``unchanged`` changed."""
    before = snapshot(*unchanged)
    rc, out, err = cli(capsys, *argv)
    assert rc == 2, (rc, out, err)
    for w in words:
        assert w in err, (w, err)
    assert snapshot(*unchanged) == before, "a refused run must not change any file"
    return err


class DiskFull:
    """A full disk under ``folder``: the first ``files_ok`` writes into matching files succeed, every later
    one writes half of its bytes and raises ENOSPC (atomic writes: through the file objects ``fileio`` opens --
    the node pack has its own copy of r2r; index appends: ``os.write``)."""

    def __init__(self, monkeypatch, folder, files_ok=0, match=lambda path: True, fileio=r2r.fileio):
        self.folder, self.files_ok, self.match, self.hits = os.path.realpath(folder), files_ok, match, 0
        real_open, real_write = builtins.open, os.write

        def mine(path) -> bool:
            path = os.path.realpath(path)
            return path.startswith(self.folder + os.sep) and self.match(path)

        def full_now() -> bool:
            self.hits += 1
            return self.hits > self.files_ok

        def fake_open(file, mode="r", *args, **kwargs):
            fh = real_open(file, mode, *args, **kwargs)
            if "w" in mode and isinstance(file, (str, os.PathLike)) and mine(file) and full_now():
                return _HalfThenFull(fh)
            return fh

        def fake_write(fd, data):
            try:
                path = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                path = ""
            if path and mine(path) and full_now():
                real_write(fd, bytes(data)[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_write(fd, data)

        monkeypatch.setattr(fileio, "open", fake_open, raising=False)
        monkeypatch.setattr(os, "write", fake_write)


class _HalfThenFull:
    def __init__(self, fh):
        self.fh = fh

    def write(self, data):
        self.fh.write(data[: len(data) // 2])
        self.fh.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()

    def __getattr__(self, name):
        return getattr(self.fh, name)


def no_temp_files(root):
    return [p for p in Path(root).rglob("*") if r2r.fileio.TEMP_MARKER in p.name]


def _write(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix, arr)
    assert ok
    path.write_bytes(buf.tobytes())


# ----------------------------------------------------------------------------- evaluate --json


@pytest.fixture()
def eval_set(tmp_path):
    rng = np.random.default_rng(1)
    data, pred = tmp_path / "data", tmp_path / "pred"
    lines = []
    for name in ("c1", "c2"):
        real = rng.integers(0, 250, (32, 32, 3), dtype=np.uint8)
        _write(data / "HCOCO" / "real_images" / f"{name}.png", real)
        _write(data / "HCOCO" / "masks" / f"{name}_1.png", np.pad(np.full((16, 16), 255, np.uint8), 8))
        _write(data / "HCOCO" / "composite_images" / f"{name}_1_1.png", real)
        _write(pred / f"{name}_1_1.png", np.clip(real.astype(int) + 3, 0, 255).astype(np.uint8))
        lines.append(json.dumps({"file_name": f"HCOCO/composite_images/{name}_1_1.png", "text": ""}))
    (data / "test.jsonl").write_text("\n".join(lines) + "\n")
    (data / "test.txt").write_text("".join(f"HCOCO/composite_images/{n}_1_1.png\n" for n in ("c1", "c2")))
    return data, pred


def _eval(data, pred, *extra):
    return ["evaluate", "--pred", pred, "--data", data, "--no-progress", "--resolution", "32", *extra]


def test_evaluate_json_replaces_only_its_own_report(eval_set, tmp_path, capsys):
    data, pred = eval_set
    notes = tmp_path / "notes.json"
    notes.write_text('{"my": "notes"}\n')
    err = refused(capsys, *_eval(data, pred, "--json", notes), unchanged=[tmp_path],
                  words=[str(notes), "already exists and is not an earlier result", "--overwrite"])
    assert "MSE" not in err
    rc, out, err = cli(capsys, *_eval(data, pred, "--json", notes, "--overwrite"))  # asked for: replaced
    assert rc == 0 and json.loads(notes.read_text())["written_by"] == "python -m r2r evaluate"
    first = notes.read_bytes()
    rc, out, err = cli(capsys, *_eval(data, pred, "--json", notes))  # its own earlier report: replaced
    assert rc == 0 and notes.read_bytes() == first
    assert no_temp_files(tmp_path) == []


INPUT = ["is also an input", "Choose another output path"]


@pytest.mark.parametrize("target, words", [
    ("data/test.jsonl", INPUT), ("data/HCOCO/real_images/c1.png", INPUT), ("data/HCOCO/masks/c1_1.png", INPUT),
    ("data/HCOCO/composite_images/c2_1_1.png", INPUT), ("pred/c1_1_1.png", INPUT), ("gt-hardlink.json", INPUT),
    ("list-symlink.json", INPUT),
    ("data/test.txt", ["has the extension '.txt'", "use one of .json"]),  # the other list: not JSON, so never
])
def test_evaluate_json_never_replaces_an_input_even_with_overwrite(eval_set, tmp_path, capsys, target, words):
    data, pred = eval_set
    os.link(data / "HCOCO" / "real_images" / "c2.png", tmp_path / "gt-hardlink.json")
    os.symlink(data / "test.jsonl", tmp_path / "list-symlink.json")
    refused(capsys, *_eval(data, pred, "--json", tmp_path / target, "--overwrite"), unchanged=[tmp_path],
            words=words)


def test_evaluate_json_long_name_and_full_disk(eval_set, tmp_path, capsys, monkeypatch):
    data, pred = eval_set
    reports = tmp_path / "reports"
    reports.mkdir()
    refused(capsys, *_eval(data, pred, "--json", reports / f"{LONG}.json"), unchanged=[tmp_path],
            words=["longer than the file system allows", str(reports), "shorter"])
    rc, _, err = cli(capsys, *_eval(data, pred, "--json", reports / "old.json"))
    assert rc == 0, err
    DiskFull(monkeypatch, reports)
    before = snapshot(tmp_path)
    rc, out, err = cli(capsys, *_eval(data, pred, "--json", reports / "new.json"))
    assert rc == 2 and "no space left on the disk" in err and str(reports) in err and "Free some space" in err
    assert snapshot(tmp_path) == before, "no half-written report; the earlier one intact"


# ----------------------------------------------------------------------------- make-dataset: existing datasets


@pytest.fixture()
def sources(tmp_path):
    rng = np.random.default_rng(0)
    im, mk = tmp_path / "images", tmp_path / "masks"
    for i in range(6):
        _write(im / f"img{i}.jpg", rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
        m = np.zeros((40, 48), np.uint8)
        m[8:28, 10:36] = 255
        _write(mk / f"img{i}.png", m)
    return im, mk


def _make(im, mk, out, *extra):
    return ["make-dataset", "--images", im, "--masks", mk, "--out", out, "--no-progress", "--per-image", "2",
            "--test-fraction", "0.34", *extra]


def _existing_dataset(root: Path) -> dict:
    """An iHarmony4-style root with captions, a hand-made extra field, an entry whose files are missing,
    and a txt list with a second column: what a user's dataset looks like."""
    rng = np.random.default_rng(3)
    for name in ("c1", "c2", "c3"):
        _write(root / "HCOCO" / "real_images" / f"{name}.jpg", rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
        _write(root / "HCOCO" / "masks" / f"{name}_1.png", np.pad(np.full((8, 8), 255, np.uint8), 8))
        _write(root / "HCOCO" / "composite_images" / f"{name}_1_1.jpg", rng.integers(0, 256, (24, 24, 3),
                                                                                     dtype=np.uint8))
    train = ['{"file_name": "HCOCO/composite_images/c1_1_1.jpg", "text": "a cat on a sofa"}',
             '{"file_name": "HCOCO/composite_images/gone_1_1.jpg", "text": "files not downloaded yet"}',
             '{"text": "a dog", "file_name": "HCOCO/composite_images/c2_1_1.jpg", "source": "hand-made"}']
    test = ['{"file_name": "HCOCO/composite_images/c3_1_1.jpg", "text": "a red car"}']
    files = {"train.jsonl": "\n".join(train) + "\n", "test.jsonl": "\n".join(test) + "\n",
             "train.txt": "HCOCO/composite_images/c1_1_1.jpg 1\nHCOCO/composite_images/c2_1_1.jpg 1\n",
             "test.txt": "HCOCO/composite_images/c3_1_1.jpg 0\n"}
    for name, text in files.items():
        (root / name).write_text(text)
    return files


def test_make_dataset_into_an_existing_dataset_merges_its_indexes(sources, tmp_path, capsys):
    im, mk = sources
    root = tmp_path / "iharmony"
    old = _existing_dataset(root)
    images_before = snapshot(root / "HCOCO")
    rc, out, err = cli(capsys, *_make(im, mk, root, "--subset", "R-Custom"))
    assert rc == 0, err
    for name, text in old.items():  # every old line first, byte for byte (captions, fields, order)
        assert (root / name).read_text().startswith(text), name
    new = {s: layouts.read_index_file(root / f"{s}.jsonl")[len(old[f"{s}.jsonl"].splitlines()):] for s in
           ("train", "test")}
    assert len(new["train"]) + len(new["test"]) == 12 and all(n.startswith("R-Custom/") for v in new.values()
                                                                for n in v)
    assert layouts.read_index_file(root / "train.txt")[2:] == new["train"]  # the txt lists get the same names
    assert snapshot(root / "HCOCO") == images_before
    indexes = snapshot(*[root / n for n in old])
    rc, out, err = cli(capsys, *_make(im, mk, root, "--subset", "R-Custom"))  # a resume: nothing to do
    assert rc == 0 and snapshot(*[root / n for n in old]) == indexes, "a resume leaves the indexes as they are"
    # a caption added by hand to a generated entry survives the next run
    lines = (root / "test.jsonl").read_text().splitlines()
    generated = json.loads(lines[-1])
    lines[-1] = json.dumps({**generated, "text": "hand caption"})
    (root / "test.jsonl").write_text("\n".join(lines) + "\n")
    rc, out, err = cli(capsys, *_make(im, mk, root, "--subset", "R-Custom"))
    assert rc == 0 and json.loads((root / "test.jsonl").read_text().splitlines()[-1])["text"] == "hand caption"


@pytest.mark.parametrize("broken, where", [
    ('{"file_name": "HCOCO/composite_images/c1_1_1.jpg", "text": "a cat"}\nnot json at all\n', "line 2"),
    ('{"file_name": "HCOCO/composite_images/c1_1_1.jpg", "text": "a cat"}\n{"text": "no file name"}\n', "line 2"),
    ('{"file_name": "HCOCO/composite_images/c1_1_1.jpg", "text": "a cat"}\n["a", "list"]\n\n', "line 2"),
    ('{"file_name": "HCOCO/composite_images/c1_1_1.jpg"}\n{"text": "cut", "file_na', "line 2"),
])
def test_a_malformed_index_line_stops_make_dataset_before_anything_is_written(sources, tmp_path, capsys, broken,
                                                                              where):
    im, mk = sources
    root = tmp_path / "iharmony"
    _existing_dataset(root)
    (root / "train.jsonl").write_text(broken)
    refused(capsys, *_make(im, mk, root), unchanged=[tmp_path],
            words=[f"{root / 'train.jsonl'}: {where}", "fix or delete that line", "nothing was written"])


def test_a_non_utf8_index_stops_make_dataset(sources, tmp_path, capsys):
    im, mk = sources
    root = tmp_path / "iharmony"
    _existing_dataset(root)
    (root / "test.txt").write_bytes(b"HCOCO/composite_images/c3_1_1.jpg\n\xff\xfe\n")
    refused(capsys, *_make(im, mk, root), unchanged=[tmp_path], words=["test.txt is not UTF-8", "nothing was written"])


def test_make_dataset_never_writes_into_a_subset_or_manifest_it_did_not_make(sources, tmp_path, capsys):
    im, mk = sources
    root = tmp_path / "iharmony"
    _existing_dataset(root)
    refused(capsys, *_make(im, mk, root, "--subset", "HCOCO"), unchanged=[tmp_path],
            words=["did not write", "--subset"])
    (root / "manifest-R-Mine.json").write_text('{"my": "own file"}')
    refused(capsys, *_make(im, mk, root, "--subset", "R-Mine"), unchanged=[tmp_path],
            words=["manifest-R-Mine.json exists and was not written by make-dataset"])


@pytest.mark.parametrize("link", ["R-Custom", "R-Custom/masks", "train.jsonl", "_records", ".r2r-index.lock"])
def test_make_dataset_refuses_links_that_lead_out_of_out(sources, tmp_path, capsys, link):
    im, mk = sources
    root, outside = tmp_path / "out", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    target = outside / "target"
    if link.endswith((".jsonl", ".lock")):
        target.write_text("")  # an outside file that must not be appended to or truncated
    else:
        target.mkdir()
    (root / link).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, root / link)
    refused(capsys, *_make(im, mk, root, "--subset", "R-Custom"), unchanged=[tmp_path],
            words=["resolves to", "outside", "Remove or replace the link"])


# ----------------------------------------------------------------------------- make-dataset: full disk, long names


def _clean_run(im, mk, tmp_path, capsys):
    ref = tmp_path / "reference"
    rc, _, err = cli(capsys, *_make(im, mk, ref))
    assert rc == 0, err
    return ref


def _same_dataset(a, b):
    def tree(root):
        return sorted(p.relative_to(root).as_posix() for p in Path(root).rglob("*")
                      if p.is_file() and p.name != ".r2r-index.lock" and not p.name.startswith("manifest-"))
    assert tree(a) == tree(b)
    assert filecmp.cmpfiles(a, b, tree(a), shallow=False)[1:] == ([], [])


def _listed_complete_and_no_orphans(root):
    listed = set()
    for split in ("train", "test"):
        for fn in layouts.read_index_file(root / f"{split}.jsonl"):
            s = layouts.sample_from_file_name(root, fn)
            assert s.composite.exists() and s.mask.exists() and s.real.exists()
            listed |= {s.composite, s.mask, s.real}
    images = {p for p in (root / "R-Custom").rglob("*") if p.is_file()}
    assert images <= listed, f"files of no listed item: {sorted(images - listed)[:3]}"


@pytest.mark.parametrize("what, match, files_ok", [
    ("images", lambda p: ".jpg.tmp-" in p or ".png.tmp-" in p, 9),
    ("index appends", lambda p: p.endswith((".jsonl", ".txt")), 2),
    ("index rebuild", lambda p: ".jsonl.tmp-" in p or ".txt.tmp-" in p, 0),
    ("records", lambda p: "_records" in p and "items" in p, 1),
])
def test_full_disk_during_make_dataset(sources, tmp_path, capsys, monkeypatch, what, match, files_ok):
    """Three images made earlier, three more when the disk fills: exit 2 naming the folder and the fix,
    the earlier results intact, nothing half-written, every listed item complete and no orphan file;
    after space is freed the same command finishes with exactly the files of one clean run."""
    im, mk = sources
    ref = _clean_run(im, mk, tmp_path, capsys)
    out, part = tmp_path / "out", tmp_path / "first-half"
    for p in sorted(im.iterdir())[3:]:  # the later three first: the final merge must re-sort
        (part / "images").mkdir(parents=True, exist_ok=True)
        (part / "images" / p.name).write_bytes(p.read_bytes())
    rc, _, err = cli(capsys, *_make(part / "images", mk, out))
    assert rc == 0, err
    before = snapshot(out)
    index_before = {n: (out / n).read_bytes() for n in ("train.jsonl", "train.txt", "test.jsonl", "test.txt")}
    with monkeypatch.context() as m:
        full = DiskFull(m, out, files_ok=files_ok, match=match)
        rc, text, err = cli(capsys, *_make(im, mk, out))
    assert full.hits > files_ok, f"the simulated full disk was never reached ({what})"
    assert rc == 2, (what, rc, err)
    assert "no space left on the disk" in err and str(out) in err and "Free some space" in err, err
    assert "the same command again" in err
    after = snapshot(out)
    changed = [p for p, h in before.items() if after.get(p) != h and not Path(p).name.endswith((".jsonl", ".txt"))
               and "manifest-" not in p]
    assert changed == [], f"earlier results changed: {changed}"
    for name, old in index_before.items():  # every earlier line still there, none half-written
        now = (out / name).read_bytes()
        assert set(old.splitlines()) <= set(now.splitlines()) and now.endswith(b"\n") | (now == b""), name
        layouts.read_index_file(out / name)
    assert no_temp_files(out) == []
    _listed_complete_and_no_orphans(out)
    rc, _, err = cli(capsys, *_make(im, mk, out))  # space freed: resume
    assert rc == 0, err
    _same_dataset(ref, out)


def test_over_long_names_in_make_dataset(sources, tmp_path, capsys):
    im, mk = sources
    refused(capsys, *_make(im, mk, tmp_path / LONG / "out"), unchanged=[tmp_path],
            words=["longer than the file system allows", "shorter"])
    assert not (tmp_path / "out").exists()
    refused(capsys, *_make(im, mk, tmp_path / "out", "--subset", "R-" + "x" * 250), unchanged=[tmp_path],
            words=["longer than the file system allows", "--subset"])
    # a source image with a 240-character name (and a long prefix): the output names are shortened (with a hash
    # of the source path, so they stay unique and deterministic) instead of failing
    long_src = tmp_path / "long"
    for sub, name in (("images", "p" * 236 + ".jpg"), ("masks", "p" * 236 + ".png")):
        (long_src / sub).mkdir(parents=True)
        (long_src / sub / name).write_bytes(next((im if sub == "images" else mk).iterdir()).read_bytes())
    rc, _, err = cli(capsys, *_make(long_src / "images", long_src / "masks", tmp_path / "out",
                                    "--name-prefix", "q" * 100))
    assert rc == 0, err
    listed = layouts.read_index_file(tmp_path / "out" / "train.jsonl") + layouts.read_index_file(
        tmp_path / "out" / "test.jsonl")
    assert len(listed) == 2 and all(len(Path(n).name) < 255 for n in listed)
    _listed_complete_and_no_orphans(tmp_path / "out")


# ----------------------------------------------------------------------------- infer-dataset


@pytest.fixture()
def infer_set(tmp_path):
    rng = np.random.default_rng(2)
    data = tmp_path / "data"
    lines = []
    for name in ("c1", "c2", "c3"):
        img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        _write(data / "HCOCO" / "real_images" / f"{name}.jpg", img)
        _write(data / "HCOCO" / "masks" / f"{name}_1.png", np.pad(np.full((32, 32), 255, np.uint8), 16))
        _write(data / "HCOCO" / "composite_images" / f"{name}_1_1.jpg", img)
        lines.append(f"HCOCO/composite_images/{name}_1_1.jpg")
    (data / "test.txt").write_text("\n".join(lines) + "\n")
    return data


def _infer(data, out, weights, *extra):
    return ["infer-dataset", "--weights", weights, "--data", data, "--out", out, "--steps", "1", "--max-side", "64",
            "--device", "cpu", *extra]


def test_infer_dataset_full_disk_keeps_the_finished_images(infer_set, tiny_release, tmp_path, capsys, monkeypatch):
    out = tmp_path / "pred"
    out.mkdir()
    (out / "c3_1_1.png").write_bytes(b"an earlier result, kept as it is")  # never replaced: skipped (resume)
    with monkeypatch.context() as m:
        DiskFull(m, out, files_ok=1)
        rc, _, err = cli(capsys, *_infer(infer_set, out, tiny_release))
    assert rc == 2 and "infer-dataset stopped" in err and "no space left on the disk" in err and str(out) in err
    assert sorted(p.name for p in out.iterdir()) == ["c1_1_1.png", "c3_1_1.png"], "c2 not half-written"
    assert cv2.imread(str(out / "c1_1_1.png")).shape == (64, 64, 3)
    assert (out / "c3_1_1.png").read_bytes() == b"an earlier result, kept as it is"
    rc, _, err = cli(capsys, *_infer(infer_set, out, tiny_release))  # space freed: the missing one is made
    assert rc == 0 and cv2.imread(str(out / "c2_1_1.png")).shape == (64, 64, 3)
    assert (out / "c3_1_1.png").read_bytes() == b"an earlier result, kept as it is"


def test_infer_dataset_over_long_output_folder(infer_set, tiny_release, tmp_path, capsys):
    refused(capsys, *_infer(infer_set, tmp_path / LONG, tiny_release), unchanged=[tmp_path],
            words=["longer than the file system allows"])


# ----------------------------------------------------------------------------- download


def test_download_full_disk_names_the_folder(tmp_path, capsys, monkeypatch):
    """huggingface_hub's own OSError from a full disk becomes the user error (exit 2) with the folder."""
    import r2r.weights

    target = tmp_path / "weights"

    def full_disk(to, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(to) / "clear_vae" / "x.safetensors"))

    monkeypatch.setattr(r2r.weights, "download_release", full_disk)
    rc, _, err = cli(capsys, "download", "--to", target)
    assert rc == 2 and "no space left on the disk" in err and str(target / "clear_vae") in err
    assert "Free some space" in err
