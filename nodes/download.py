"""R2R Checkpoint Loader's download of the official release (``download_if_missing``).

* First a quick look at whether the Hugging Face hub can be reached at all (name lookup and one TCP
  connection, :data:`CONNECT_TIMEOUT` seconds each): with no network the node stops at once with a
  message in the UI's words that names the destination folder and the command to download elsewhere,
  instead of waiting ~25 s through huggingface_hub's retries.
* Then ``python -m r2r download --to <models/r2r/region2region>`` (the pack's own command line, the
  one the message tells people to run elsewhere) in a child process. The node's progress bar follows
  the bytes arriving in the folder; Cancel stops the child (the files already complete are kept,
  the next Run resumes).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

from ..r2r.errors import R2RWeightsNotFound
from . import _files, _host

#: seconds for the name lookup and for the TCP connection of the reachability check
CONNECT_TIMEOUT = 5.0
#: what the needed files of the official release weigh, when the hub does not say (README: about 5.3 GB)
NOMINAL_BYTES = 5_300_000_000
MB = 1_000_000
PACK_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODE = "R2R Checkpoint Loader"


def hub_endpoint() -> str:
    """The hub's address: ``HF_ENDPOINT`` as set now, else huggingface_hub's own setting."""
    endpoint = os.environ.get("HF_ENDPOINT", "").strip()
    if not endpoint:
        try:
            import huggingface_hub.constants as hf_constants

            endpoint = str(hf_constants.ENDPOINT or "")
        except ImportError:  # pragma: no cover - huggingface_hub is a dependency of diffusers
            endpoint = ""
    return (endpoint or "https://huggingface.co").rstrip("/")


def _resolve(host: str, port: int, timeout: float):
    """``socket.getaddrinfo`` with a time limit (it has none of its own)."""
    result: dict = {}

    def lookup():
        try:
            result["addresses"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            result["error"] = exc

    worker = threading.Thread(target=lookup, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        return None, f"the name {host} got no answer within {timeout:.0f} s"
    if "error" in result:
        return None, f"the name {host} cannot be looked up ({result['error']})"
    return result["addresses"], None


def unreachable_reason(endpoint: str | None = None, timeout: float = CONNECT_TIMEOUT) -> str | None:
    """None when a TCP connection to the hub succeeds; else why not, in plain words (a few seconds at most)."""
    url = urllib.parse.urlsplit(endpoint or hub_endpoint())
    host = url.hostname or ""
    port = url.port or (80 if url.scheme == "http" else 443)
    addresses, why = _resolve(host, port, timeout)
    if why:
        return f"this computer cannot reach the Hugging Face hub: {why}"
    errors = []
    for family, kind, proto, _, address in addresses[:4]:
        try:
            with socket.socket(family, kind, proto) as s:
                s.settimeout(timeout)
                s.connect(address)
            return None
        except OSError as exc:
            errors.append(exc.strerror or str(exc) or type(exc).__name__)
    return f"this computer cannot reach the Hugging Face hub: no connection to {host}:{port} ({errors[0]})"


def cannot_download(target: str, reason: str, fix_here: str) -> R2RWeightsNotFound:
    """The message of a download that cannot happen now, in the UI's words: where the weights belong and
    how to get them there."""
    from ..r2r import weights

    name = os.path.basename(target)
    folders: dict = {}
    for f in weights.expected_hub_files(weights.RELEASE_COMPONENTS):
        folder, _, file = f.rpartition("/")
        folders.setdefault(folder, []).append(file)
    files = [f"{folder}/ ({', '.join(names)})" for folder, names in folders.items()]
    return R2RWeightsNotFound(
        f"{NODE}: the R2R weights cannot be downloaded now: {reason}. Nothing was downloaded. The weights belong "
        f"in the folder {target} (that is models/r2r/{name} inside ComfyUI's models folder). To get them: "
        f"{fix_here}; or, on a computer with internet, open a terminal in this pack's folder "
        f"({os.path.basename(PACK_ROOT)}, in ComfyUI/custom_nodes), run  python -m r2r download --to {name}  "
        f"(about 5.3 GB), and copy the "
        f"{name} folder it makes into models/r2r/ of this ComfyUI; then press R in the browser and Run. "
        f"The folder must hold: {'; '.join(files)}."
    )


def release_bytes(repo: str = _files.OFFICIAL_REPO) -> int:
    """How many bytes the download brings (the hub's listing of the files r2r takes); a nominal figure
    when the hub does not list sizes."""
    try:
        import huggingface_hub

        from ..r2r.weights.hub import _select_repo_files
        from ..r2r.weights.layout import RELEASE_COMPONENTS

        entries = [e for e in huggingface_hub.HfApi().list_repo_tree(repo, recursive=True)
                   if getattr(e, "size", None) is not None]
        wanted, _ = _select_repo_files([e.path for e in entries], RELEASE_COMPONENTS)
        import fnmatch

        total = sum(int(getattr(e, "size", 0) or 0) for e in entries if any(fnmatch.fnmatch(e.path, w) for w in wanted))
        return int(total) or NOMINAL_BYTES
    except Exception:  # noqa: BLE001 -- only the bar's length: the download itself reports real failures
        return NOMINAL_BYTES


def folder_bytes(folder: str) -> int:
    """Bytes of every file under ``folder`` (huggingface_hub's partial downloads included)."""
    total = 0
    for dirpath, _, filenames in os.walk(folder):
        for fn in filenames:
            try:
                total += os.stat(os.path.join(dirpath, fn)).st_size
            except OSError:  # renamed while we looked
                pass
    return total


def download_command(target: str) -> list[str]:
    """The pack's own command line, in ComfyUI's Python (``python -m r2r download --to TARGET``)."""
    return [sys.executable, "-m", "r2r", "download", "--to", target]


def run_download(target: str, command: list[str], total_bytes: int, poll_s: float = 0.5) -> None:
    """Run ``command`` (which fills ``target``) in a child process; the node's progress bar follows the
    bytes in ``target`` (in MB, up to ``total_bytes``). Cancel (an exception from the bar) stops the child.
    A failed child becomes an R2RWeightsNotFound with its message."""
    units = max(1, -(-int(total_bytes) // MB))
    before = folder_bytes(target) if os.path.isdir(target) else 0
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(command, cwd=PACK_ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            with _host.Progress(units, desc="R2R download") as bar:
                while proc.poll() is None:
                    time.sleep(poll_s)
                    got = (folder_bytes(target) - before) // MB if os.path.isdir(target) else 0
                    bar.update(max(0, min(got, units - 1) - bar.value))  # also where Cancel is honoured
                if proc.returncode == 0:
                    bar.update(units - bar.value)
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(15)
        if proc.returncode != 0:
            log.seek(0)
            lines = [ln.strip() for ln in log.read().decode("utf-8", "replace").splitlines() if ln.strip()]
            errors = [ln.removeprefix("error:").strip() for ln in lines if ln.startswith("error:")]
            detail = errors[-1] if errors else (lines[-1] if lines else f"exit status {proc.returncode}")
            raise cannot_download(target, f"the download stopped ({detail})",
                                  "check the connection and the free disk space, then press Run again (files "
                                  "already complete are kept)")


def download_official_release(target: str) -> str:
    """Download the official release into ``target`` (a folder under models/r2r) with progress on the node;
    quick, plain-worded refusals when it cannot happen (offline mode, no network)."""
    from ..r2r import weights

    if weights.is_offline():
        raise cannot_download(target, "offline mode is on (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set)",
                              "turn offline mode off (unset HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE), restart "
                              "ComfyUI and press Run again")
    reason = unreachable_reason()
    if reason is not None:
        raise cannot_download(target, reason, "connect this computer to the internet and press Run again")
    run_download(target, download_command(target), release_bytes())
    return target
