"""Original-SD / ControlLDM format <-> diffusers key conversion for the three R2R networks (ref §g.2).

The official release ships diffusers folders, but also SD-format checkpoints: ``clear_vae.ckpt``
(unprefixed, or with ``first_stage_model.`` / Lightning ``model.`` prefixes) and the ControlLDM
``diff-base.ckpt`` (``model.diffusion_model.`` = U-Net, ``control_model.`` = controller). The rules
here (key rules written once for both directions in :mod:`r2r.weights.key_rules`) map every key of
those layouts onto :mod:`r2r.models` / ``UNet2DConditionModel`` keys and back; the tests check them
against the key maps produced by the official converters.

All functions work on plain ``dict[str, Tensor]`` and never import diffusers.
"""

from __future__ import annotations

import re

from .key_rules import CONTROLLER_RULES, UNET_RULES, VAE_RULES, translate

# ----------------------------------------------------------------------------------------------
# Clear-VAE (SD kl-f8 VAE + filters + "lora" skip convs); the key rules: r2r.weights.key_rules
# ----------------------------------------------------------------------------------------------
_VAE_RESHAPE = {"to_q", "to_k", "to_v", "to_out.0"}  # 1x1 conv [C,C,1,1] <-> Linear [C,C]

VAE_PREFIXES = ("first_stage_model.", "model.")  # full SD checkpoint / Lightning checkpoint
VAE_IGNORED_PREFIXES = ("cr_loss.", "loss.")  # training-only parts of a Lightning checkpoint


def vae_key_to_diffusers(key: str, num_levels: int = 4) -> str | None:
    """Unprefixed SD-format Clear-VAE key -> diffusers key (None if it fits no rule)."""
    return translate(key, VAE_RULES, True, {"num_levels": num_levels})


def vae_key_to_sd(key: str, num_levels: int = 4) -> str | None:
    """diffusers Clear-VAE key -> unprefixed SD-format key (inverse of :func:`vae_key_to_diffusers`)."""
    return translate(key, VAE_RULES, False, {"num_levels": num_levels})


def _needs_reshape(diffusers_key: str) -> bool:
    return ".mid_block.attentions.0." in diffusers_key and diffusers_key.endswith(".weight") and any(
        f".{n}.weight" in diffusers_key for n in _VAE_RESHAPE
    )


def detect_vae_prefix(keys) -> str:
    """'' (unprefixed, as train_VAE.py saves), 'first_stage_model.' or 'model.' (Lightning)."""
    keys = list(keys)
    for prefix in VAE_PREFIXES:
        if any(k.startswith(prefix + "encoder.") or k.startswith(prefix + "decoder.") for k in keys):
            return prefix
    return ""


def clear_vae_to_diffusers(sd: dict, num_levels: int = 4) -> tuple[dict, list[str]]:
    """SD-format Clear-VAE state_dict (any of the three prefix layouts) -> (diffusers dict, unmatched keys).

    Keys outside the VAE (another prefix, a Lightning loss's VGG weights) are ignored; keys under the
    VAE prefix that fit no rule are returned as unmatched.
    """
    prefix = detect_vae_prefix(sd)
    out, unmatched = {}, []
    for k, v in sd.items():
        if prefix and not k.startswith(prefix):
            continue
        rest = k[len(prefix) :]
        if rest.startswith(VAE_IGNORED_PREFIXES):
            continue
        new = vae_key_to_diffusers(rest, num_levels)
        if new is None:
            unmatched.append(k)
            continue
        if _needs_reshape(new) and getattr(v, "ndim", 0) == 4:
            v = v[:, :, 0, 0]
        out[new] = v
    return out, unmatched


def clear_vae_to_sd(sd: dict, num_levels: int = 4, prefix: str = "") -> dict:
    """diffusers Clear-VAE state_dict -> SD-format state_dict with ``prefix`` ('' = clear_vae.ckpt)."""
    out = {}
    for k, v in sd.items():
        new = vae_key_to_sd(k, num_levels)
        if new is None:
            raise KeyError(f"no SD-format name for Clear-VAE key {k!r}")
        if _needs_reshape(k) and getattr(v, "ndim", 0) == 2:
            v = v[:, :, None, None]
        out[prefix + new] = v
    return out


# ----------------------------------------------------------------------------------------------
# U-Net / controller (LDM openaimodel layout)
# ----------------------------------------------------------------------------------------------
UNET_PREFIX = "model.diffusion_model."
CONTROLLER_PREFIX = "control_model."


def unet_key_to_diffusers(key: str, layers_per_block: int = 2) -> str | None:
    """Unprefixed LDM U-Net key (``model.diffusion_model.`` stripped) -> diffusers key."""
    return translate(key, UNET_RULES, True, {"L": layers_per_block})


def unet_key_to_sd(key: str, layers_per_block: int = 2,
                   attention_levels: frozenset[int] | set[int] = frozenset()) -> str | None:
    """diffusers U-Net key -> unprefixed LDM key; ``attention_levels``: up blocks that have attentions."""
    return translate(key, UNET_RULES, False, {"L": layers_per_block, "levels": attention_levels})


def controller_key_to_diffusers(key: str, layers_per_block: int = 2, hint_layers: int = 8) -> str | None:
    """Unprefixed ControlNet_CA key (``control_model.`` stripped) -> HarmonyController key.

    ``hint_layers``: number of convs in the hint block (official: 8 = conv_in, 6 blocks, conv_out).
    """
    return translate(key, CONTROLLER_RULES, True, {"L": layers_per_block, "hint_layers": hint_layers})


def controller_key_to_sd(key: str, layers_per_block: int = 2, hint_layers: int = 8) -> str | None:
    return translate(key, CONTROLLER_RULES, False, {"L": layers_per_block, "hint_layers": hint_layers})


def _convert(sd: dict, prefix: str, fn) -> tuple[dict, list[str]]:
    out, unmatched = {}, []
    for k, v in sd.items():
        if not k.startswith(prefix):
            continue
        new = fn(k[len(prefix) :])
        if new is None:
            unmatched.append(k)
        else:
            out[new] = v
    return out, unmatched


def unet_to_diffusers(sd: dict, layers_per_block: int = 2, prefix: str = UNET_PREFIX) -> tuple[dict, list[str]]:
    """U-Net part (keys under ``prefix``) of an LDM/ControlLDM state_dict -> (diffusers dict, unmatched)."""
    return _convert(sd, prefix, lambda k: unet_key_to_diffusers(k, layers_per_block))


def controller_to_diffusers(
    sd: dict, layers_per_block: int = 2, prefix: str = CONTROLLER_PREFIX, hint_layers: int = 8
) -> tuple[dict, list[str]]:
    """Controller part (keys under ``prefix``) of a ControlLDM state_dict -> (diffusers dict, unmatched)."""
    return _convert(sd, prefix, lambda k: controller_key_to_diffusers(k, layers_per_block, hint_layers))


def _to_sd(sd: dict, prefix: str, fn, what: str) -> dict:
    out = {}
    for k, v in sd.items():
        new = fn(k)
        if new is None:
            raise KeyError(f"no LDM name for {what} key {k!r}")
        out[prefix + new] = v
    return out


def unet_to_sd(sd: dict, layers_per_block: int = 2, prefix: str = UNET_PREFIX) -> dict:
    levels = {int(m[1]) for k in sd if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", k))}
    return _to_sd(sd, prefix, lambda k: unet_key_to_sd(k, layers_per_block, levels), "U-Net")


def controller_to_sd(sd: dict, layers_per_block: int = 2, prefix: str = CONTROLLER_PREFIX, hint_layers: int = 8) -> dict:
    return _to_sd(sd, prefix, lambda k: controller_key_to_sd(k, layers_per_block, hint_layers), "controller")


def describe_sd_keys(keys) -> str:
    """A short human description of what a state_dict looks like (for error messages)."""
    keys = list(keys)
    if not keys:
        return "an empty state_dict"
    parts = []
    checks = (
        ("control_model.", "a ControlLDM controller (control_model.*)"),
        ("model.diffusion_model.", "an SD/ControlLDM U-Net (model.diffusion_model.*)"),
        ("first_stage_model.", "an SD first-stage VAE (first_stage_model.*)"),
        ("cond_stage_model.", "a CLIP text encoder (cond_stage_model.*)"),
    )
    for prefix, text in checks:
        n = sum(k.startswith(prefix) for k in keys)
        if n:
            parts.append(f"{text}: {n} tensors")
    if not parts:
        has_filters = any(".filters." in k or k.startswith("filters.") for k in keys)
        has_skip = any(".lora." in k or "skip_connect" in k for k in keys)
        if any(k.startswith(("encoder.", "decoder.", "model.encoder.")) for k in keys):
            kind = "a VAE"
            if has_filters or has_skip:
                kind += " with Clear-VAE filters/skip convs"
            else:
                kind += " WITHOUT the Clear-VAE filters/skip convs (a stock SD VAE?)"
            parts.append(f"{kind}: {len(keys)} tensors")
        elif any(k.startswith(("down_blocks.", "input_blocks.")) for k in keys):
            hint = any("cond_embedding" in k or "input_hint_block" in k for k in keys)
            parts.append(f"{'a ControlNet' if hint else 'a U-Net'}: {len(keys)} tensors")
        else:
            parts.append(f"{len(keys)} tensors, first keys {keys[:3]}")
    return "; ".join(parts)


def text_encoder_sd_to_transformers(sd: dict, prefix: str = "cond_stage_model.transformer.") -> dict:
    """CLIP text tower from an SD checkpoint (``cond_stage_model.transformer.*``) -> CLIPTextModel keys."""
    out = {}
    for k, v in sd.items():
        if k.startswith(prefix):
            rest = k[len(prefix) :]
            if rest == "text_model.embeddings.position_ids":
                continue
            out[rest] = v
    return out
