"""Reading weight files and checking them against a model, strictly.

* :func:`read_state_dict`: tensors of a ``.safetensors``, a sharded ``*.safetensors.index.json`` or a
  PyTorch checkpoint (``.ckpt/.bin/.pt/.pth``, read with ``torch.load(weights_only=True)``: a pickle
  never runs code).
* :func:`tensor_shapes`: the same keys as meta tensors, from the file headers where possible.
* :func:`to_diffusers_state_dict`: SD / ControlLDM layouts -> diffusers keys (via :mod:`r2r.weights.convert`).
* :func:`compare_state` / :func:`mismatch_error`: missing, unexpected and misshapen tensors, and a
  message saying what the file looks like (a stock SD VAE, a ControlNet, a text-to-image U-Net, ...).
* :func:`check_weight`: every tensor as it is loaded is floating point where the network's is and
  finite (one float32 sum per tensor): NaN weights would give a black image without a word.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import R2RUserError, R2RWeightsNotFound
from . import convert
from .layout import COMPONENT_LABELS, COMPONENT_SOURCES, describe_path, read_json

CHECKPOINT_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth")


def _bad_safetensors(path, exc) -> R2RUserError:
    return R2RUserError(
        f"{path} could not be read as safetensors ({exc}); the file is probably truncated or not a "
        "safetensors file: download it again."
    )


def _shard_files(index_file: Path) -> list[Path]:
    index = read_json(index_file, "sharded-weights index")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise R2RUserError(f"{index_file} is not a valid sharded-weights index (no weight_map); download it again.")
    shards = [index_file.parent / str(s) for s in sorted(set(weight_map.values()))]
    absent = [s.name for s in shards if not s.is_file()]
    if absent:
        raise R2RWeightsNotFound(
            f"{index_file} lists shards that are not beside it: {', '.join(absent[:4])}. Download them into "
            f"{index_file.parent}."
        )
    return shards


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise R2RWeightsNotFound(f"Weights file {describe_path(path)}; expected a weights file. Check the path "
                                 "(or download the weights).")


def read_state_dict(path, device="cpu") -> dict:
    """Tensors of a .safetensors / sharded index / .ckpt/.bin/.pt/.pth file (pickles via weights_only=True)."""
    import torch

    path = Path(path)
    _check_file(path)
    name = path.name
    if name.endswith(".index.json"):
        out = {}
        for shard in _shard_files(path):
            out.update(read_state_dict(shard, device))
        return out
    if name.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device=str(device))
        except Exception as exc:  # safetensors raises its own error types
            raise _bad_safetensors(path, exc) from exc
    if path.suffix in CHECKPOINT_SUFFIXES:
        import pickle

        try:
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
        except pickle.UnpicklingError as exc:
            raise R2RUserError(
                f"{path} contains pickled Python objects besides tensors, which r2r does not execute "
                "(torch.load weights_only=True). Extract its state_dict in a trusted environment and save it "
                "with safetensors.torch.save_file, then load that file."
            ) from exc
        except Exception as exc:
            raise R2RUserError(f"{path} could not be read as a PyTorch checkpoint ({exc}); download it again.") from exc
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]  # Lightning checkpoint
        if not isinstance(obj, dict):
            raise R2RUserError(f"{path} holds a {type(obj).__name__}, not a state_dict (a dict of tensors).")
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if not tensors:
            raise R2RUserError(f"{path} holds no tensors (keys: {list(obj)[:5]}); expected a state_dict.")
        if str(device) != "cpu":
            tensors = {k: v.to(device) for k, v in tensors.items()}
        return tensors
    raise R2RUserError(
        f"Unsupported weights file {path}: expected .safetensors, a .safetensors.index.json, or a PyTorch "
        f"checkpoint ({', '.join(CHECKPOINT_SUFFIXES)})."
    )


def tensor_shapes(file) -> dict:
    """{key: meta tensor with the file's shape and dtype}, reading only headers where possible."""
    import torch

    file = Path(file)
    _check_file(file)
    if file.name.endswith(".index.json"):
        out = {}
        for shard in _shard_files(file):
            out.update(tensor_shapes(shard))
        return out
    if file.name.endswith(".safetensors"):
        from safetensors import safe_open

        dtypes = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
                  "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8, "BOOL": torch.bool}
        out = {}
        try:
            with safe_open(str(file), framework="pt") as f:
                for k in f.keys():
                    sl = f.get_slice(k)
                    out[k] = torch.empty(sl.get_shape(), dtype=dtypes.get(sl.get_dtype(), torch.float32), device="meta")
        except Exception as exc:
            raise _bad_safetensors(file, exc) from exc
        return out
    return {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in read_state_dict(file).items()}


def check_weight(file, key: str, tensor, expected=None, label: str = "network", loaded=None) -> None:
    """R2RUserError naming ``file`` and the tensor ``key`` when ``tensor`` is not floating point where the
    network's tensor ``expected`` is (an integer or bool dtype), or holds NaN / infinite values. ``loaded``:
    the same tensor after the cast to the load dtype (checked instead of ``tensor``, so a value too large
    for fp16 is caught too; ``tensor`` is only looked at again to tell the two cases apart)."""
    import torch

    if (expected is None or expected.is_floating_point()) and not tensor.is_floating_point():
        raise R2RUserError(
            f"{file}: the tensor {key} is stored as {str(tensor.dtype).removeprefix('torch.')}, but the {label} "
            "needs floating-point weights (fp32, fp16 or bf16) there. The file is damaged or was exported wrongly; "
            "download it again (or re-export it with float weights)."
        )
    if not tensor.is_floating_point():
        return
    probe = tensor if loaded is None else loaded
    # a NaN or an infinity anywhere makes the float32 sum non-finite; the sum of finite weights never
    # overflows float32. One pass without a temporary (about 30x faster than isfinite().all() for fp32
    # tensors on a CPU); the exact element test runs only when the sum is not finite.
    if bool(torch.isfinite(probe.sum(dtype=torch.float32))) or bool(torch.isfinite(probe).all()):
        return
    if probe is not tensor and bool(torch.isfinite(tensor).all()):
        peak = float(tensor.detach().abs().max())
        raise R2RUserError(
            f"{file}: the tensor {key} holds values up to {peak:.3g}, too large for {str(probe.dtype).removeprefix('torch.')} "
            f"(they would become infinite). Load the {label} in fp32 or bf16 (dtype fp32 / bf16)."
        )
    bad = int((~torch.isfinite(tensor)).sum())
    raise R2RUserError(
        f"{file}: the tensor {key} holds {bad} NaN or infinite value(s) (of {tensor.numel()}); the {label} would "
        "give a black or garbage image. The file is damaged (or the training run that wrote it diverged): "
        "download it again or use an earlier checkpoint."
    )


def detect_format(kind: str, keys) -> tuple[str, str]:
    """(format, prefix) of a state_dict for component ``kind``: ``'diffusers'`` or ``'sd'``."""
    keys = list(keys)
    if kind == "clear_vae":
        prefix = convert.detect_vae_prefix(keys)
        if any(re.match(re.escape(prefix) + r"(encoder\.down\.|decoder\.up\.|encoder\.mid\.)", k) for k in keys):
            return "sd", prefix
        return "diffusers", ""
    if kind == "unet":
        if any(k.startswith(convert.UNET_PREFIX) for k in keys):
            return "sd", convert.UNET_PREFIX
        if any(k.startswith("input_blocks.") for k in keys) and not any(k.startswith("input_hint_block.") for k in keys):
            return "sd", ""
        return "diffusers", ""
    if any(k.startswith(convert.CONTROLLER_PREFIX) for k in keys):
        return "sd", convert.CONTROLLER_PREFIX
    if any(k.startswith("input_hint_block.") for k in keys):
        return "sd", ""
    return "diffusers", ""


def to_diffusers_state_dict(kind: str, state: dict, config: dict) -> tuple[dict, list[str], str]:
    """(diffusers-format dict, keys that fit no rule, ``'diffusers'`` | ``'sd'``)."""
    fmt, prefix = detect_format(kind, state)
    if fmt == "diffusers":
        return state, [], fmt
    L = int(config.get("layers_per_block", 2))
    if kind == "clear_vae":
        out, unmatched = convert.clear_vae_to_diffusers(state, len(config.get("block_out_channels", [0] * 4)))
    elif kind == "unet":
        out, unmatched = convert.unet_to_diffusers(state, L, prefix)
    else:
        hint = len(config.get("conditioning_embedding_out_channels") or (16, 32, 96, 256)) * 2
        out, unmatched = convert.controller_to_diffusers(state, L, prefix, hint)
    if not out:
        unmatched = list(state)
    return out, unmatched, fmt


def compare_state(expected: dict, state: dict, unmatched=()) -> tuple[list, list, list]:
    """(missing keys, unexpected keys, [(key, file shape, model shape)]) of ``state`` against ``expected``."""
    missing = [k for k in expected if k not in state]
    unexpected = list(unmatched) + [k for k in state if k not in expected]
    bad = [(k, tuple(state[k].shape), tuple(expected[k].shape))
           for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    return missing, unexpected, bad


def _what_it_is(kind: str, missing, unexpected) -> str | None:
    what = COMPONENT_LABELS[kind]
    if kind == "clear_vae" and missing and all(k.startswith("filters.") or "skip_connect" in k for k in missing):
        return ("It is a stock Stable Diffusion VAE, not the Clear-VAE: it has no AdaptiveFilters (filters.*) "
                "and no decoder skip convs (skip_connect / lora).")
    if kind == "controller" and missing and all(k.startswith("PCCAs.") for k in missing):
        return "It is a stock ControlNet without the MACA modules (PCCAs.*) of the Harmony Controller."
    if kind == "unet" and any("controlnet_" in k or "input_hint_block" in k for k in unexpected):
        return "It is a ControlNet / Harmony Controller, not the U-Net."
    if kind == "controller" and any(k.startswith(("up_blocks.", "output_blocks.")) for k in unexpected):
        return "It is a U-Net, not the Harmony Controller."
    if kind in ("unet", "controller") and any(k.startswith(("encoder.", "decoder.")) for k in unexpected):
        return f"It is a VAE, not the {what}."
    if kind == "clear_vae" and any(k.startswith(("down_blocks.", "input_blocks.")) for k in unexpected):
        return "It is a U-Net or ControlNet, not the Clear-VAE."
    return None


def mismatch_error(kind: str, file, state_keys, missing, unexpected, bad_shapes) -> R2RUserError:
    """The error for a file whose tensors do not fit the network ``kind``: what it looks like, what differs."""
    lines = [f"{file} does not match the {COMPONENT_LABELS[kind]}."]
    special = _what_it_is(kind, missing, unexpected)
    if special:
        lines.append(special)
    lines.append(f"It looks like: {convert.describe_sd_keys(state_keys)}.")
    if missing:
        lines.append(f"Missing {len(missing)} tensors, e.g. {', '.join(missing[:4])}.")
    if unexpected:
        lines.append(f"Unexpected {len(unexpected)} tensors, e.g. {', '.join(unexpected[:4])}.")
    if bad_shapes:
        ex = "; ".join(f"{k}: file {a} vs model {b}" for k, a, b in bad_shapes[:3])
        lines.append(f"{len(bad_shapes)} tensors have the wrong shape ({ex}).")
        if kind == "unet" and any(k == "conv_in.weight" for k, _, _ in bad_shapes):
            lines.append("R2R needs the 9-input-channel SD-1.5-inpainting U-Net, not a text-to-image U-Net.")
        else:
            lines.append("The config does not fit these weights (pass the config.json that came with them).")
    lines.append(f"Expected: {COMPONENT_SOURCES[kind]}.")
    return R2RUserError(" ".join(lines))
