"""The one place where the node pack touches ComfyUI.

Inside ComfyUI (``comfy.model_management`` already imported by ComfyUI's ``main.py``)
this module uses ``folder_paths`` for the ``models/r2r`` folder, ``model_management``
for devices and memory (every diffusers model is wrapped in a plain ``nn.Module``
holder and handed to a ``ModelPatcher`` loaded with an estimate of the memory the work
needs, so ComfyUI frees other models first, offloads ours when idle and frees them on
"Unload models"), ``comfy.utils.ProgressBar`` + ``latent_preview`` for the node's progress
bar and sampling previews, and the interrupt flag for Cancel.

Anywhere else (tests, scripts, CI) it behaves plainly: the compute device is chosen
automatically (``R2R_DEVICE`` overrides), the models folder comes from
``R2R_MODELS_DIR`` (``os.pathsep``-separated; default ``./models/r2r``), progress goes
to ``tqdm`` and there is no interrupt.

Nothing here imports ComfyUI at import time; ``R2R_HOST=plain`` forces plain mode.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

FOLDER_NAME = "r2r"
#: files the checkpoint loaders list (single files); folders are listed separately
MODEL_EXTENSIONS = {".safetensors", ".ckpt", ".bin", ".pt", ".pth", ".sft"}


def in_comfyui() -> bool:
    """True when running inside a ComfyUI process (its model management is loaded)."""
    if os.environ.get("R2R_HOST", "").lower() == "plain":
        return False
    return "comfy.model_management" in sys.modules and "folder_paths" in sys.modules


# ----------------------------------------------------------------------------- folders


def register_model_folder() -> None:
    """Register ``models/r2r`` with ComfyUI's ``folder_paths``, merging with an existing
    entry (``extra_model_paths.yaml`` is applied before packs import and may have made one)."""
    if not in_comfyui():
        return
    import folder_paths

    default_dir = os.path.join(folder_paths.models_dir, FOLDER_NAME)
    entry = folder_paths.folder_names_and_paths.get(FOLDER_NAME)
    if entry is None:
        folder_paths.folder_names_and_paths[FOLDER_NAME] = ([default_dir], set(MODEL_EXTENSIONS))
        return
    paths, extensions = entry
    if default_dir not in paths:
        paths.append(default_dir)
    if extensions:  # an empty set means "every file": keep it that way
        extensions.update(MODEL_EXTENSIONS)


def _pack_folder_name() -> str:
    """The pack's folder name under custom_nodes, as ComfyUI's template listing keys it (the link's name when
    the pack is linked in: ComfyUI imports it from that path, which abspath keeps)."""
    return os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def order_templates(order) -> bool:
    """Make GET /workflow_templates list this pack's templates in ``order`` (names not in it follow,
    alphabetically). The 1.27 frontend shows a pack's templates in the order the server lists them, which
    is the folder's directory order (arbitrary on ext4), and it reads no index file for custom nodes; so an
    aiohttp middleware re-sorts this pack's entry of that one route's JSON (other packs' lists are left
    as they are; any surprise leaves the response untouched). Returns whether it was installed."""
    if not in_comfyui():
        return False
    server = sys.modules.get("server")
    instance = getattr(getattr(server, "PromptServer", None), "instance", None)
    web = getattr(server, "web", None)  # ComfyUI's server module holds aiohttp's web (its own dependency)
    folder = _pack_folder_name()
    if instance is None or web is None or getattr(instance.app, "frozen", False):
        return False
    import json

    rank = {name: i for i, name in enumerate(order)}

    @web.middleware
    async def sort_r2r_templates(request, handler):
        response = await handler(request)
        if request.method != "GET" or request.path not in ("/workflow_templates", "/api/workflow_templates"):
            return response
        try:
            listing = json.loads(response.body)
            names = listing[folder]
            listing[folder] = sorted(names, key=lambda n: (rank.get(n, len(rank)), n))
            return web.json_response(listing, status=response.status)
        except Exception as exc:  # noqa: BLE001 -- a listing we do not understand is passed on unchanged, said once
            if not getattr(sort_r2r_templates, "warned", False):
                sort_r2r_templates.warned = True  # type: ignore[attr-defined]
                logging.getLogger("r2r.nodes").warning("R2R: templates listed in the server's order (%s: %s)",
                                                       type(exc).__name__, exc)
            return response

    instance.app.middlewares.append(sort_r2r_templates)
    return True


def model_dirs() -> list[str]:
    """Every folder where R2R weights are looked for, in priority order."""
    if in_comfyui():
        import folder_paths

        return list(folder_paths.get_folder_paths(FOLDER_NAME))
    env = os.environ.get("R2R_MODELS_DIR")
    if env:
        return [p for p in env.split(os.pathsep) if p]
    return [os.path.abspath(os.path.join("models", FOLDER_NAME))]


def default_download_dir() -> str:
    """Where the loader puts a downloaded release: the first models/r2r folder."""
    return model_dirs()[0]


def output_dir() -> str:
    """ComfyUI's output folder; outside ComfyUI ``R2R_OUTPUT_DIR`` or ``./output``."""
    if in_comfyui():
        import folder_paths

        return folder_paths.get_output_directory()
    return os.path.abspath(os.environ.get("R2R_OUTPUT_DIR") or "output")


# ----------------------------------------------------------------------------- devices


def compute_device():

    if in_comfyui():
        import comfy.model_management as mm

        return mm.get_torch_device()
    from ..r2r.devices import resolve_device

    return resolve_device(os.environ.get("R2R_DEVICE") or "auto")


def offload_device():
    import torch

    if in_comfyui():
        import comfy.model_management as mm

        return mm.unet_offload_device()
    return torch.device("cpu")


def intermediate_device():
    """Where IMAGE / MASK / LATENT tensors live between nodes (the CPU)."""
    import torch

    if in_comfyui():
        import comfy.model_management as mm

        return mm.intermediate_device()
    return torch.device("cpu")


def free_device_memory(device) -> int | None:
    """Free memory on the compute device for what waits between stages: ComfyUI's own figure inside
    ComfyUI (what its model management plans with) less what ``--reserve-vram`` keeps for other
    software, ``torch.cuda.mem_get_info`` elsewhere; capped by a per-process memory limit
    (``r2r.pipeline.memory.capped_free_bytes``); None on a CPU."""
    from ..r2r.pipeline.memory import capped_free_bytes

    if getattr(device, "type", "cpu") == "cpu":
        return None
    if in_comfyui():
        import comfy.model_management as mm

        return capped_free_bytes(device, max(0, int(mm.get_free_memory(device)) - int(mm.extra_reserved_memory())))
    from ..r2r.pipeline.model_sources import cuda_free_memory

    return cuda_free_memory(device)  # capped as well


def show_text(text: str, node_id=None) -> None:
    """A short text on the node in ComfyUI's frontend (as core's Get Image Size shows its result), and a
    warning in the log (ComfyUI's console)."""
    import logging

    logging.getLogger("r2r.nodes").warning(text)
    server = sys.modules.get("server")  # ComfyUI's server module; absent when ComfyUI runs without its server
    instance = getattr(getattr(server, "PromptServer", None), "instance", None)
    if in_comfyui() and node_id is not None and instance is not None:
        instance.send_progress_text(text, str(node_id))


def auto_dtype():
    """fp16 on CUDA (as the official release runs), fp32 elsewhere."""
    import torch

    device = compute_device()
    if in_comfyui():
        import comfy.model_management as mm

        return torch.float16 if mm.should_use_fp16(device) else torch.float32
    return torch.float16 if device.type == "cuda" else torch.float32


# ----------------------------------------------------------------------------- models


def _holder_class():
    import torch

    class R2RModuleHolder(torch.nn.Module):
        """A plain module around a diffusers model: ModelPatcher assigns ``.device``,
        which is a read-only property on diffusers' ModelMixin."""

        def __init__(self, model):
            super().__init__()
            self.model = model

    return R2RModuleHolder


class ManagedModel:
    """A diffusers model whose placement is owned by the host.

    :meth:`load` gives the model on the compute device. Inside ComfyUI this goes through
    ``model_management.load_models_gpu`` with an estimate of the memory the computation needs
    besides the weights, so ComfyUI unloads other models first; the model is offloaded when
    ComfyUI needs the memory and unloaded on "Unload models". Outside ComfyUI the model is
    simply moved to the compute device.
    """

    def __init__(self, model, name: str):
        self.model = model
        self.name = name
        self._patcher = None
        self._lock = threading.Lock()

    def patcher(self):
        """ComfyUI's ModelPatcher for this model (made on first use; only inside ComfyUI)."""
        if self._patcher is None:
            import comfy.model_management as mm
            import comfy.model_patcher

            holder = _holder_class()(self.model)
            self._patcher = comfy.model_patcher.ModelPatcher(
                holder, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
            )
        return self._patcher

    def load(self, memory_required: int | None = None):
        """Put the weights on the compute device and return the model.

        ``memory_required``: bytes the computation needs on the device besides the weights
        (activations, caches); ComfyUI frees that much (plus the weights) before loading.
        """
        with self._lock:
            if in_comfyui():
                import comfy.model_management as mm

                patcher = self.patcher()
                mm.load_models_gpu([patcher], memory_required=int(memory_required or 0), force_full_load=True)
                if patcher.loaded_size() < patcher.model_size():
                    # --novram: ComfyUI loads 0 bytes of a model that is not made of comfy.ops layers
                    # (these diffusers modules cannot run partly offloaded), so load it whole, accounted
                    patcher.partially_load(patcher.load_device, extra_memory=patcher.model_size() + 1)
            else:
                device = compute_device()
                if self.model.device != device:
                    self.model.to(device)
            return self.model

    def ensure_loaded(self, memory_required: int | None = None):
        """The model on the compute device without asking ComfyUI to free memory when it is there already
        (inside sampling, where ComfyUI loaded it with the U-Net); loaded whole through :meth:`load` when
        ComfyUI left it partly offloaded (diffusers modules cannot run partly offloaded)."""
        import torch

        device = torch.device(self.patcher().load_device) if in_comfyui() else compute_device()
        for p in self.model.parameters():
            if p.device.type != device.type or (device.index is not None and p.device.index != device.index):
                return self.load(memory_required)
        return self.model

    @property
    def dtype(self):
        return self.model.dtype


# ----------------------------------------------------------------------------- progress


_interrupt_flag = threading.Event()


def request_interrupt(value: bool = True) -> None:
    """Plain-mode interrupt (what Cancel does inside ComfyUI); used by scripts and tests."""
    if value:
        _interrupt_flag.set()
    else:
        _interrupt_flag.clear()


def check_interrupt() -> None:
    """Raise the host's interrupt exception if the user cancelled."""
    if in_comfyui():
        import comfy.model_management as mm

        mm.throw_exception_if_processing_interrupted()
    elif _interrupt_flag.is_set():
        _interrupt_flag.clear()
        raise InterruptedError("R2R: processing was interrupted.")


class Progress:
    """A node progress bar: ComfyUI's ProgressBar (with latent previews) inside ComfyUI, tqdm elsewhere.

    ``update()`` also honours the interrupt, so calling it between steps makes the loop
    cancellable. ``preview_latent`` is the predicted clean latent x0, scaled as the U-Net sees it
    (SD1.5 latent space), ``[B,4,h,w]``; inside ComfyUI it is turned into a preview picture with
    ComfyUI's previewer (Latent2RGB or TAESD, as ``--preview-method`` says) and sent with the
    progress; elsewhere it is ignored.
    """

    def __init__(self, total: int, desc: str = "R2R"):
        self.total = max(int(total), 1)
        self.value = 0
        self._bar = None
        self._tqdm = None
        self._previewer = None
        if in_comfyui():
            import comfy.utils

            self._bar = comfy.utils.ProgressBar(self.total)
        else:
            from tqdm.auto import tqdm

            self._tqdm = tqdm(total=self.total, desc=desc, leave=False, disable=None)

    def _preview(self, latent):
        import comfy.latent_formats
        import latent_preview

        if self._previewer is None:
            self._previewer = latent_preview.get_previewer(compute_device(), comfy.latent_formats.SD15()) or False
        if not self._previewer:  # --preview-method none
            return None
        return self._previewer.decode_latent_to_preview_image("JPEG", latent.detach()[:1].float())

    def update(self, n: int = 1, preview_latent=None) -> None:
        check_interrupt()
        self.value = min(self.value + n, self.total)
        if self._bar is not None:
            preview = None if preview_latent is None else self._preview(preview_latent)
            self._bar.update_absolute(self.value, self.total, preview)
        elif self._tqdm is not None:
            self._tqdm.update(n)

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class LazyProgress:
    """A :class:`Progress` made at its first step (``step(i, total)``), so a phase that turns out to have
    nothing to do shows no bar."""

    def __init__(self, desc: str):
        self.desc = desc
        self.bar: Progress | None = None

    def step(self, i: int, total: int) -> None:
        if self.bar is None:
            self.bar = Progress(total, desc=self.desc)
        self.bar.update(1)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
        return False
