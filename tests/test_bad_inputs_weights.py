"""Bad and edge inputs on the weights surface: r2r.weights (load_components, single loaders, hub,
download) and ``python -m r2r download``.

Every bad input must end in an R2RUserError (exit code 2 on the CLI) whose message says what was expected,
what was given and how to fix it; never a traceback, never a changed file, and argument problems are found
before any weights are read. Valid edge cases give the right result. The hub cases use the real installed
huggingface_hub (no network: offline mode, or a local HTTP server standing in for the hub).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from r2r import weights
from r2r.cli import main
from r2r.errors import R2RUserError, R2RWeightsNotFound
from r2r.weights import loading, prompt

SD = "stable-diffusion-inpainting"
REPO = "1243asdad/region2region"
ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- helpers
def tree_digest(folder: Path) -> dict[str, str]:
    """{relative path: sha1} of every file under ``folder`` (to prove nothing changed)."""
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def release_copy(tiny_release, tiny_components, tmp_path):
    """A private copy of the tiny release, empty-prompt cache included (loading it once writes the cache)."""
    dst = tmp_path / "release"
    shutil.copytree(tiny_release, dst)
    return dst


@pytest.fixture
def no_weights_read(monkeypatch):
    """Fails the test if any weights file or text encoder is read (arguments must be checked first)."""

    def boom(*args, **kwargs):
        raise AssertionError("weights were read before the arguments were checked")

    for name in ("read_state_dict", "tensor_shapes"):
        monkeypatch.setattr(loading, name, boom)
    monkeypatch.setattr(prompt, "load_text_encoder", boom)


def run_fresh(args: list[str], tmp_path: Path, **env) -> subprocess.CompletedProcess:
    """Run ``python <args>`` in a fresh interpreter (what a user gets), offline, with private caches."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"),
                "R2R_CACHE_DIR": str(tmp_path / "r2r_cache"), **env}
    full_env.pop("HF_HUB_CACHE", None)
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=300)


def hf_cache_from_release(release: Path, cache: Path, skip=()) -> Path:
    """The Hugging Face cache layout (refs/main + snapshots/<commit>/) holding the release's files."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = cache / f"models--{REPO.replace('/', '--')}"
    snap = repo_dir / "snapshots" / commit
    for f in release.rglob("*"):
        rel = str(f.relative_to(release))
        if f.is_file() and f.name != prompt.CACHE_NAME and rel not in skip:
            (snap / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, snap / rel)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return snap


# ---------------------------------------------------------------------------------------------- release folders
def test_release_path_that_is_a_file_is_not_called_missing(tmp_path):
    f = tmp_path / "region2region"
    f.write_text("not a folder")
    with pytest.raises(R2RWeightsNotFound) as err:
        weights.load_components(f)
    assert "is a file, not a folder" in str(err.value) and "does not exist" not in str(err.value)
    assert f.read_text() == "not a folder"


def test_existing_folder_that_is_not_a_release(tmp_path):
    with pytest.raises(R2RWeightsNotFound, match=r"exists but is not an R2R release folder.*clear_vae/"):
        weights.load_components(tmp_path)


def test_component_folder_without_config_names_the_file(release_copy, no_weights_read):
    (release_copy / "clear_vae" / "config.json").unlink()
    before = tree_digest(release_copy)
    with pytest.raises(R2RWeightsNotFound, match=r"Clear-VAE missing: .*clear_vae exists but has no config\.json"):
        weights.load_components(release_copy)
    assert tree_digest(release_copy) == before


def test_broken_scheduler_config_is_reported_before_loading(release_copy, no_weights_read):
    (release_copy / SD / "scheduler" / "scheduler_config.json").write_text("{ not json")
    with pytest.raises(R2RUserError, match=r"scheduler config .*scheduler_config\.json is not valid JSON"):
        weights.load_components(release_copy)


def test_broken_text_encoder_config_is_reported_before_loading(release_copy, no_weights_read):
    (release_copy / prompt.CACHE_NAME).unlink()  # the embedding must be computed: the encoder config matters
    (release_copy / SD / "text_encoder" / "config.json").write_text("[1, 2]")
    with pytest.raises(R2RUserError, match=r"text encoder config .*config\.json holds a JSON list"):
        weights.load_components(release_copy)


@pytest.mark.parametrize("kwargs, match", [
    ({"components": ("vae",)}, r"Unknown component\(s\) \['vae'\]; choose from"),
    ({"components": 5}, "components must be a list"),
    ({"torch_dtype": "float8"}, "Unsupported dtype 'float8'; expected one of fp32"),
    ({"device": "tpu"}, "Unknown device 'tpu'"),
    ({"cache_dir": "/tmp"}, "only apply to a Hugging Face repo id"),
    ({"revision": "v1"}, "only apply to a Hugging Face repo id"),
])
def test_bad_arguments_are_refused_before_reading(release_copy, no_weights_read, kwargs, match):
    with pytest.raises(R2RUserError, match=match):
        weights.load_components(release_copy, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_refused_before_reading(release_copy, no_weights_read):
    with pytest.raises(R2RUserError, match="CUDA is not available"):
        weights.load_clear_vae(release_copy / "clear_vae", device="cuda")


def test_components_as_one_string_or_with_repeats(release_copy, tiny_components):
    for components in ("clear_vae", ["clear_vae", "clear_vae"]):
        c = weights.load_components(release_copy, components=components)
        assert c.unet is None and c.controller is None
        ref = tiny_components.clear_vae.state_dict()
        assert all(torch.equal(v, ref[k]) for k, v in c.clear_vae.state_dict().items())


@pytest.mark.parametrize("source, match", [
    (None, "source must be a folder, a hub repo id"),
    (5, "source must be a folder, a hub repo id"),
    ("", "got an empty source"),
    ({"clear_vae": 5, "prompt_embeds": "x"}, r"Clear-VAE must be given as a folder or file path, got 5"),
    ({"clear_vae": "x", "bonus": 1}, r"Unknown keys \['bonus'\] in the source dict"),
])
def test_sources_of_the_wrong_type(source, match, no_weights_read):
    with pytest.raises(R2RUserError, match=match):
        weights.load_components(source, components=("clear_vae",))


def test_single_loader_with_a_non_path(no_weights_read):
    with pytest.raises(R2RUserError, match=r"U-Net must be given as a folder or file path, got 5"):
        weights.load_unet(5)


# ---------------------------------------------------------------------------------------------- single files / dicts
def test_dict_source_is_checked_completely_before_anything_loads(release_copy, tmp_path, no_weights_read):
    source = {"unet": release_copy / SD / "unet", "controller": tmp_path / "missing_controller.safetensors",
              "clear_vae": release_copy / "clear_vae", "prompt_embeds": release_copy / prompt.CACHE_NAME}
    with pytest.raises(R2RWeightsNotFound, match=r"Harmony Controller not found at .*missing_controller"):
        weights.load_components(source)


@pytest.mark.parametrize("entry, match", [
    ("scheduler_folder", r"'scheduler_config' folder .* has no scheduler_config\.json"),
    ("prompt_folder", r"'prompt_embeds': .* is a folder; expected a cached empty-prompt"),
    ("tokenizer_missing", r"'tokenizer': .*nowhere does not exist; expected a tokenizer folder"),
    ("config_missing", r"clear_vae config .*nope\.json does not exist"),
    ("nothing_for_prompt", r"needs 'text_encoder' .* or 'prompt_embeds'"),
])
def test_dict_source_entries(release_copy, tmp_path, no_weights_read, entry, match):
    source = {"clear_vae": release_copy / "clear_vae", "prompt_embeds": release_copy / prompt.CACHE_NAME}
    if entry == "scheduler_folder":  # was: silently the official scheduler config
        source["scheduler_config"] = tmp_path
    elif entry == "prompt_folder":
        source["prompt_embeds"] = tmp_path
    elif entry == "tokenizer_missing":
        source.update(tokenizer=tmp_path / "nowhere", text_encoder=release_copy / SD / "text_encoder")
        del source["prompt_embeds"]
    elif entry == "config_missing":
        source["clear_vae_config"] = tmp_path / "nope.json"
    else:
        del source["prompt_embeds"]
    with pytest.raises(R2RUserError, match=match):
        weights.load_components(source, components=("clear_vae",))


def test_single_loader_with_a_missing_config_file(release_copy, tmp_path, no_weights_read):
    unet = release_copy / SD / "unet" / "diffusion_pytorch_model.safetensors"
    with pytest.raises(R2RWeightsNotFound, match=r"unet config .*nope\.json does not exist"):
        weights.load_unet(unet, config=tmp_path / "nope.json")


def test_weights_file_that_is_a_folder(tmp_path):
    with pytest.raises(R2RWeightsNotFound, match=r"Weights file .* is a folder; expected a weights file"):
        weights.read_state_dict(tmp_path)


def test_sharded_index_naming_a_missing_shard(tmp_path):
    index = tmp_path / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a.weight": "part-00001.safetensors"}}))
    with pytest.raises(R2RWeightsNotFound, match=r"lists shards that are not beside it: part-00001\.safetensors"):
        weights.read_state_dict(index)


def test_folder_with_two_candidate_weight_files(release_copy):
    vae = release_copy / "clear_vae"
    shutil.move(vae / "diffusion_pytorch_model.safetensors", vae / "a.safetensors")
    shutil.copyfile(vae / "a.safetensors", vae / "b.safetensors")
    with pytest.raises(R2RWeightsNotFound, match=r"2 other \.safetensors files \(a\.safetensors, b\.safetensors\)"):
        weights.load_clear_vae(vae)


# ---------------------------------------------------------------------------------------------- hub
def test_offline_repo_id_in_a_fresh_interpreter(tmp_path):
    """The reported crash: AttributeError 'No huggingface_hub attribute constants' (huggingface_hub >= 1)."""
    script = (
        "from r2r.errors import R2RWeightsNotFound\n"
        "from r2r.weights import load_components\n"
        "try:\n"
        f"    load_components({REPO!r})\n"
        "except R2RWeightsNotFound as exc:\n"
        "    print('LOAD:', exc)\n"
        "from r2r.pipeline import R2RPipeline\n"
        "try:\n"
        f"    R2RPipeline.from_pretrained({REPO!r})\n"
        "except R2RWeightsNotFound as exc:\n"
        "    print('PIPE:', exc)\n"
    )
    r = run_fresh(["-c", script], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    for tag in ("LOAD:", "PIPE:"):
        line = next(li for li in r.stdout.splitlines() if li.startswith(tag))
        assert "not available offline" in line and "clear_vae/diffusion_pytorch_model.safetensors" in line
        assert str(tmp_path / "hf_home") in line and "models/r2r/region2region" in line


def test_offline_hub_cache_complete_loads(tiny_release, tiny_components, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("R2R_CACHE_DIR", str(tmp_path / "usercache"))
    snap = hf_cache_from_release(tiny_release, tmp_path / "hf")
    before = tree_digest(snap)
    c = weights.load_components(REPO, cache_dir=tmp_path / "hf", components=("clear_vae",))
    ref = tiny_components.clear_vae.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in c.clear_vae.state_dict().items())
    torch.testing.assert_close(c.prompt_embeds, tiny_components.prompt_embeds)
    assert tree_digest(snap) == before  # the embedding is cached in R2R_CACHE_DIR, never in the HF cache
    assert len(list((tmp_path / "usercache").glob("*.safetensors"))) == 1


def test_offline_hub_cache_incomplete_names_missing_files(tiny_release, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf_cache_from_release(tiny_release, tmp_path / "hf", skip={"clear_vae/diffusion_pytorch_model.safetensors"})
    with pytest.raises(R2RWeightsNotFound) as err:
        weights.load_components(REPO, cache_dir=tmp_path / "hf", components=("clear_vae",))
    msg = str(err.value)
    assert "Missing: clear_vae/diffusion_pytorch_model.safetensors." in msg and str(tmp_path / "hf") in msg


class _NotFoundHub(BaseHTTPRequestHandler):
    """Answers like the hub for an unknown repo (or an unknown revision of a known one)."""

    def do_GET(self):  # noqa: N802 - http.server's naming
        code = "RevisionNotFound" if "/tree/no-such-branch" in self.path else "RepoNotFound"
        body = json.dumps({"error": code}).encode()
        self.send_response(404)
        self.send_header("X-Error-Code", code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def online_local_hub(monkeypatch):
    """huggingface_hub online, talking to a local server that knows no repo."""
    import huggingface_hub.constants as hf_constants

    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotFoundHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    yield
    server.shutdown()


@pytest.mark.parametrize("revision, match", [
    (None, r"Hugging Face repo 'someone/no-such-repo' was not found .* it does not exist: check the path"),
    ("no-such-branch", r"has no revision 'no-such-branch'"),
])
def test_hub_unknown_repo_or_revision(online_local_hub, tmp_path, revision, match):
    with pytest.raises(R2RUserError, match=match):
        weights.load_components("someone/no-such-repo", revision=revision, cache_dir=tmp_path / "hf")
    assert not (tmp_path / "hf").exists() or not any((tmp_path / "hf").rglob("*.safetensors"))


def test_hub_without_network(monkeypatch, tmp_path):
    import huggingface_hub
    import huggingface_hub.constants as hf_constants

    class NoNetwork:
        def list_repo_files(self, *args, **kwargs):
            raise ConnectionError("[Errno 101] Network is unreachable")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "HfApi", NoNetwork)
    with pytest.raises(R2RWeightsNotFound, match=r"Could not reach the Hugging Face hub .*Network is unreachable.*"
                                                 r"set HF_HUB_OFFLINE=1"):
        weights.load_components(REPO, cache_dir=tmp_path / "hf")


@pytest.mark.parametrize("repo", ["not a repo", "a/b/c", "", "/abs/path"])
def test_hub_snapshot_refuses_what_is_not_a_repo_id(repo):
    with pytest.raises(R2RUserError, match="is not a Hugging Face repo id; expected 'owner/name'"):
        weights.hub_snapshot(repo)


# ---------------------------------------------------------------------------------------------- python -m r2r download
def test_download_cli_to_and_check_together(tmp_path, capsys):
    assert main(["download", "--to", str(tmp_path / "a"), "--check", str(tmp_path)]) == 2
    assert "not both" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_download_cli_to_an_existing_file(tmp_path, capsys):
    f = tmp_path / "weights"
    f.write_text("keep me")
    assert main(["download", "--to", str(f)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert f.read_text() == "keep me"


@pytest.mark.parametrize("args, match", [
    (["--repo", "not a repo"], "is not a Hugging Face repo id"),
    (["--revision", ""], "revision must be a branch, tag or commit name"),
])
def test_download_cli_bad_repo_or_revision(tmp_path, capsys, args, match):
    assert main(["download", "--to", str(tmp_path / "new"), *args]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_download_cli_check_on_a_file(tmp_path, capsys):
    (tmp_path / "x").write_text("")
    assert main(["download", "--check", str(tmp_path / "x")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_download_cli_check_reports_a_broken_scheduler_config(release_copy, capsys):
    (release_copy / SD / "scheduler" / "scheduler_config.json").write_text("{")
    assert main(["download", "--check", str(release_copy)]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] scheduler" in out and "not valid JSON" in out


def test_download_cli_offline_into_a_complete_folder(release_copy, capsys, monkeypatch):
    """Valid edge: offline, --to already holds the release -> checked, nothing downloaded or changed."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = tree_digest(release_copy)
    assert main(["download", "--to", str(release_copy)]) == 0
    assert "R2R weights ready" in capsys.readouterr().out
    assert tree_digest(release_copy) == before


def test_download_cli_offline_fresh_interpreter(tmp_path):
    dest = tmp_path / "models" / "r2r" / "region2region"
    r = run_fresh(["-m", "r2r", "download", "--to", str(dest)], tmp_path)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr + r.stdout
    assert f"copy these files into {dest}" in r.stderr and "clear_vae/config.json" in r.stderr
    assert not dest.exists() and not (tmp_path / "models").exists()


def test_harmonize_cli_offline_repo_id_fresh_interpreter(tmp_path):
    from PIL import Image

    Image.new("RGB", (64, 64), (120, 80, 40)).save(tmp_path / "comp.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    mask.save(tmp_path / "mask.png")
    r = run_fresh(["-m", "r2r", "harmonize", "--composite", str(tmp_path / "comp.png"), "--mask",
                   str(tmp_path / "mask.png"), "--out", str(tmp_path / "out.png"), "--weights", REPO,
                   "--max-side", "64", "--steps", "1", "--device", "cpu"], tmp_path)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr + r.stdout and "AttributeError" not in r.stderr
    assert "not available offline" in r.stderr and "clear_vae/diffusion_pytorch_model.safetensors" in r.stderr
    assert not (tmp_path / "out.png").exists()

