"""Run an API prompt inside ComfyUI's own executor (no HTTP), with the pack loaded the way ComfyUI loads
it, and report every ``model_management.load_models_gpu`` call as JSON on stdout. Started as a
subprocess by test_comfyui_integration.py (importing ComfyUI's model management changes process-wide
state, so it never runs inside the pytest process).

    python tests/comfy_inprocess.py COMFYUI_DIR PACK_DIR MODELS_R2R_DIR PROMPT.json OUT_DIR MODES

MODES: comma-separated, each run with a fresh executor cache and no model loaded: ``cpu`` (ComfyUI's
--cpu), ``lowvram`` / ``novram``: ComfyUI's LOW_VRAM / NO_VRAM states,
with the compute device treated as a GPU inside ``load_models_gpu`` (on a CPU-only machine ComfyUI
cannot start with --lowvram/--novram: they need CUDA), so ComfyUI's low-VRAM loading branch runs with
the pack's models.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time


class RecordingServer:
    """What ``execution.PromptExecutor`` sends to the server, recorded with wall / CPU times (also used by
    benchmarks/graph_executor.py)."""

    client_id = "r2r-inprocess"  # the executor sends its per-node messages only to a client
    last_node_id = None
    last_prompt_id = None
    sockets_metadata: dict = {}

    def __init__(self):
        self.events = []

    def send_sync(self, event, data, sid=None):
        if isinstance(data, dict):
            self.events.append((event, dict(data), time.perf_counter(), time.process_time()))


def main(comfyui_dir, pack_dir, models_dir, prompt_path, out_dir, modes):
    sys.path.insert(0, comfyui_dir)
    os.chdir(comfyui_dir)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.model_management as mm
    import execution
    import folder_paths

    import nodes

    folder_paths.set_output_directory(out_dir)
    folder_paths.set_temp_directory(os.path.join(out_dir, "temp"))
    folder_paths.folder_names_and_paths["r2r"] = ([models_dir], set())
    calls = []
    real_load, real_is_cpu = mm.load_models_gpu, mm.is_device_cpu
    state = {"in_load": False, "mode": "cpu"}

    def is_device_cpu(device):
        return False if state["in_load"] and state["mode"] != "cpu" else real_is_cpu(device)

    def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                        force_full_load=False):
        state["in_load"] = True
        try:
            real_load(models, memory_required=memory_required, force_patch_weights=force_patch_weights,
                      minimum_memory_required=minimum_memory_required, force_full_load=force_full_load)
        finally:
            state["in_load"] = False
        for m in models:
            holder = m.model
            inner = getattr(holder, "model", holder)
            calls.append({
                "mode": state["mode"], "model": type(inner).__name__, "memory_required": int(memory_required),
                "force_full_load": bool(force_full_load), "weights": int(m.model_size()),
                "loaded_after_call": int(m.loaded_size()),
            })

    def loaded_now():
        return {type(getattr(x.model.model, "model", x.model.model)).__name__: [int(x.model.loaded_size()),
                                                                                int(x.model.model_size())]
                for x in mm.current_loaded_models}

    mm.load_models_gpu = load_models_gpu
    mm.is_device_cpu = is_device_cpu
    if not asyncio.run(nodes.load_custom_node(pack_dir)):
        raise SystemExit("the pack did not load")
    with open(prompt_path, encoding="utf-8") as f:
        prompt = json.load(f)
    valid = asyncio.run(execution.validate_prompt("p1", prompt, None))
    if not valid[0]:
        raise SystemExit(f"validation failed: {valid}")
    runs = []
    default_state = mm.vram_state
    for mode in modes.split(","):
        state["mode"] = mode
        mm.unload_all_models()
        mm.vram_state = {"lowvram": mm.VRAMState.LOW_VRAM, "novram": mm.VRAMState.NO_VRAM}.get(mode, default_state)
        executor = execution.PromptExecutor(RecordingServer(), cache_type=execution.CacheType.CLASSIC)
        executor.execute(prompt, f"p-{mode}", {}, valid[2])
        runs.append({"mode": mode, "success": executor.success, "vram_state": mm.vram_state.name,
                     "loaded_models": loaded_now(), "outputs": sorted(executor.history_result.get("outputs", {})),
                     "messages": [m[0] for m in executor.status_messages],
                     "error": next((m[1] for m in executor.status_messages if m[0] == "execution_error"), None)})
    print(json.dumps({"runs": runs, "calls": calls}))


if __name__ == "__main__":
    main(*sys.argv[1:7])
