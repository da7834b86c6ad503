"""Original-SD / ControlLDM format <-> diffusers key conversion for the three R2R networks (ref §g.2).

The official release ships diffusers folders, but also SD-format checkpoints: ``clear_vae.ckpt``
(unprefixed, or with ``first_stage_model.`` / Lightning ``model.`` prefixes) and the ControlLDM
``diff-base.ckpt`` (``model.diffusion_model.`` = U-Net, ``control_model.`` = controller). The rules
here map every key of those layouts onto :mod:`r2r.models` / ``UNet2DConditionModel`` keys and
back; the tests check them against the key maps produced by the official converters.

All functions work on plain ``dict[str, Tensor]`` and never import diffusers.
"""

from __future__ import annotations

import re

# ----------------------------------------------------------------------------------------------
# Clear-VAE (SD kl-f8 VAE + filters + "lora" skip convs)
# ----------------------------------------------------------------------------------------------
_VAE_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_VAE_ATTN_INV = {v: k for k, v in _VAE_ATTN.items()}
_VAE_RESHAPE = {"to_q", "to_k", "to_v", "to_out.0"}  # 1x1 conv [C,C,1,1] <-> Linear [C,C]

VAE_PREFIXES = ("first_stage_model.", "model.")  # full SD checkpoint / Lightning checkpoint
VAE_IGNORED_PREFIXES = ("cr_loss.", "loss.")  # training-only parts of a Lightning checkpoint


def _vae_resnet(rest: str) -> str:
    return rest.replace("nin_shortcut", "conv_shortcut").replace("lora.", "skip_connect.")


def _vae_resnet_inv(rest: str) -> str:
    return rest.replace("conv_shortcut", "nin_shortcut").replace("skip_connect.", "lora.")


def vae_key_to_diffusers(key: str, num_levels: int = 4) -> str | None:
    """Unprefixed SD-format Clear-VAE key -> diffusers key (None if it fits no rule)."""
    if key.startswith(("filters.", "quant_conv.", "post_quant_conv.")):
        return key
    m = re.fullmatch(r"(encoder|decoder)\.(.+)", key)
    if not m:
        return None
    part, rest = m.groups()
    if rest.startswith(("conv_in.", "conv_out.")):
        return key
    if rest.startswith("norm_out."):
        return f"{part}.conv_norm_out.{rest[len('norm_out.'):]}"
    if m2 := re.fullmatch(r"mid\.block_([12])\.(.+)", rest):
        return f"{part}.mid_block.resnets.{int(m2[1]) - 1}.{_vae_resnet(m2[2])}"
    if m2 := re.fullmatch(r"mid\.attn_1\.(norm|q|k|v|proj_out)\.(weight|bias)", rest):
        return f"{part}.mid_block.attentions.0.{_VAE_ATTN[m2[1]]}.{m2[2]}"
    if part == "encoder":
        if m2 := re.fullmatch(r"down\.(\d+)\.block\.(\d+)\.(.+)", rest):
            return f"encoder.down_blocks.{m2[1]}.resnets.{m2[2]}.{_vae_resnet(m2[3])}"
        if m2 := re.fullmatch(r"down\.(\d+)\.downsample\.conv\.(.+)", rest):
            return f"encoder.down_blocks.{m2[1]}.downsamplers.0.conv.{m2[2]}"
    else:
        if m2 := re.fullmatch(r"up\.(\d+)\.block\.(\d+)\.(.+)", rest):
            return f"decoder.up_blocks.{num_levels - 1 - int(m2[1])}.resnets.{m2[2]}.{_vae_resnet(m2[3])}"
        if m2 := re.fullmatch(r"up\.(\d+)\.upsample\.conv\.(.+)", rest):
            return f"decoder.up_blocks.{num_levels - 1 - int(m2[1])}.upsamplers.0.conv.{m2[2]}"
    return None


def vae_key_to_sd(key: str, num_levels: int = 4) -> str | None:
    """diffusers Clear-VAE key -> unprefixed SD-format key (inverse of :func:`vae_key_to_diffusers`)."""
    if key.startswith(("filters.", "quant_conv.", "post_quant_conv.")):
        return key
    m = re.fullmatch(r"(encoder|decoder)\.(.+)", key)
    if not m:
        return None
    part, rest = m.groups()
    if rest.startswith(("conv_in.", "conv_out.")):
        return key
    if rest.startswith("conv_norm_out."):
        return f"{part}.norm_out.{rest[len('conv_norm_out.'):]}"
    if m2 := re.fullmatch(r"mid_block\.resnets\.([01])\.(.+)", rest):
        return f"{part}.mid.block_{int(m2[1]) + 1}.{_vae_resnet_inv(m2[2])}"
    if m2 := re.fullmatch(r"mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(weight|bias)", rest):
        return f"{part}.mid.attn_1.{_VAE_ATTN_INV[m2[1]]}.{m2[2]}"
    if part == "encoder":
        if m2 := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
            return f"encoder.down.{m2[1]}.block.{m2[2]}.{_vae_resnet_inv(m2[3])}"
        if m2 := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", rest):
            return f"encoder.down.{m2[1]}.downsample.conv.{m2[2]}"
    else:
        if m2 := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
            return f"decoder.up.{num_levels - 1 - int(m2[1])}.block.{m2[2]}.{_vae_resnet_inv(m2[3])}"
        if m2 := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", rest):
            return f"decoder.up.{num_levels - 1 - int(m2[1])}.upsample.conv.{m2[2]}"
    return None


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
_RESNET = (
    ("in_layers.0.", "norm1."),
    ("in_layers.2.", "conv1."),
    ("emb_layers.1.", "time_emb_proj."),
    ("out_layers.0.", "norm2."),
    ("out_layers.3.", "conv2."),
    ("skip_connection.", "conv_shortcut."),
)

UNET_PREFIX = "model.diffusion_model."
CONTROLLER_PREFIX = "control_model."


def _resnet(rest: str) -> str | None:
    for a, b in _RESNET:
        if rest.startswith(a):
            return b + rest[len(a) :]
    return None


def _resnet_inv(rest: str) -> str | None:
    for a, b in _RESNET:
        if rest.startswith(b):
            return a + rest[len(b) :]
    return None


def _down_half_to_diffusers(key: str, L: int) -> str | None:
    """Keys shared by the U-Net and the controller: time embedding, input blocks, middle block."""
    if m := re.fullmatch(r"time_embed\.([02])\.(weight|bias)", key):
        return f"time_embedding.linear_{1 if m[1] == '0' else 2}.{m[2]}"
    if m := re.fullmatch(r"input_blocks\.0\.0\.(weight|bias)", key):
        return f"conv_in.{m[1]}"
    if m := re.fullmatch(r"input_blocks\.(\d+)\.(\d)\.(.+)", key):
        n, sub, rest = int(m[1]), int(m[2]), m[3]
        level, j = (n - 1) // (L + 1), (n - 1) % (L + 1)
        if j == L:  # downsampler
            if sub == 0 and (m2 := re.fullmatch(r"op\.(weight|bias)", rest)):
                return f"down_blocks.{level}.downsamplers.0.conv.{m2[1]}"
            return None
        if sub == 0:
            r = _resnet(rest)
            return None if r is None else f"down_blocks.{level}.resnets.{j}.{r}"
        if sub == 1:
            return f"down_blocks.{level}.attentions.{j}.{rest}"
        return None
    if m := re.fullmatch(r"middle_block\.([012])\.(.+)", key):
        i, rest = int(m[1]), m[2]
        if i == 1:
            return f"mid_block.attentions.0.{rest}"
        r = _resnet(rest)
        return None if r is None else f"mid_block.resnets.{i // 2}.{r}"
    return None


def _down_half_to_sd(key: str, L: int) -> str | None:
    if m := re.fullmatch(r"time_embedding\.linear_([12])\.(weight|bias)", key):
        return f"time_embed.{0 if m[1] == '1' else 2}.{m[2]}"
    if m := re.fullmatch(r"conv_in\.(weight|bias)", key):
        return f"input_blocks.0.0.{m[1]}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)", key):
        return f"input_blocks.{int(m[1]) * (L + 1) + L + 1}.0.op.{m[2]}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        r = _resnet_inv(m[3])
        return None if r is None else f"input_blocks.{int(m[1]) * (L + 1) + int(m[2]) + 1}.0.{r}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
        return f"input_blocks.{int(m[1]) * (L + 1) + int(m[2]) + 1}.1.{m[3]}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"mid_block\.resnets\.([01])\.(.+)", key):
        r = _resnet_inv(m[2])
        return None if r is None else f"middle_block.{int(m[1]) * 2}.{r}"
    return None


def unet_key_to_diffusers(key: str, layers_per_block: int = 2) -> str | None:
    """Unprefixed LDM U-Net key (``model.diffusion_model.`` stripped) -> diffusers key."""
    L = layers_per_block
    if (r := _down_half_to_diffusers(key, L)) is not None:
        return r
    if m := re.fullmatch(r"out\.([02])\.(weight|bias)", key):
        return f"{'conv_norm_out' if m[1] == '0' else 'conv_out'}.{m[2]}"
    if m := re.fullmatch(r"output_blocks\.(\d+)\.(\d)\.(.+)", key):
        n, sub, rest = int(m[1]), int(m[2]), m[3]
        level, j = n // (L + 1), n % (L + 1)
        if sub == 0:
            r = _resnet(rest)
            return None if r is None else f"up_blocks.{level}.resnets.{j}.{r}"
        if re.fullmatch(r"conv\.(weight|bias)", rest):  # upsampler (sub 1 without attention, else 2)
            return f"up_blocks.{level}.upsamplers.0.{rest}" if j == L else None
        if sub == 1:
            return f"up_blocks.{level}.attentions.{j}.{rest}"
    return None


def unet_key_to_sd(key: str, layers_per_block: int = 2,
                   attention_levels: frozenset[int] | set[int] = frozenset()) -> str | None:
    """diffusers U-Net key -> unprefixed LDM key; ``attention_levels``: up blocks that have attentions."""
    L = layers_per_block
    if (r := _down_half_to_sd(key, L)) is not None:
        return r
    if m := re.fullmatch(r"(conv_norm_out|conv_out)\.(weight|bias)", key):
        return f"out.{0 if m[1] == 'conv_norm_out' else 2}.{m[2]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        r = _resnet_inv(m[3])
        return None if r is None else f"output_blocks.{int(m[1]) * (L + 1) + int(m[2])}.0.{r}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
        return f"output_blocks.{int(m[1]) * (L + 1) + int(m[2])}.1.{m[3]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)", key):
        level = int(m[1])
        sub = 2 if level in attention_levels else 1
        return f"output_blocks.{level * (L + 1) + L}.{sub}.conv.{m[2]}"
    return None




def controller_key_to_diffusers(key: str, layers_per_block: int = 2, hint_layers: int = 8) -> str | None:
    """Unprefixed ControlNet_CA key (``control_model.`` stripped) -> HarmonyController key.

    ``hint_layers``: number of convs in the hint block (official: 8 = conv_in, 6 blocks, conv_out).
    """
    if (r := _down_half_to_diffusers(key, layers_per_block)) is not None:
        return r
    if m := re.fullmatch(r"input_hint_block\.(\d+)\.(weight|bias)", key):
        i = int(m[1])
        if i % 2:
            return None
        conv = i // 2
        if conv == 0:
            name = "conv_in"
        elif conv == hint_layers - 1:
            name = "conv_out"
        else:
            name = f"blocks.{conv - 1}"
        return f"controlnet_cond_embedding.{name}.{m[2]}"
    if m := re.fullmatch(r"zero_convs\.(\d+)\.0\.(weight|bias)", key):
        return f"controlnet_down_blocks.{m[1]}.{m[2]}"
    if m := re.fullmatch(r"middle_block_out\.0\.(weight|bias)", key):
        return f"controlnet_mid_block.{m[1]}"
    if re.fullmatch(r"PCCAs\.\d+\.(conv1|conv2|mlp\.0|mlp\.2)\.(weight|bias)", key):
        return key
    return None


def controller_key_to_sd(key: str, layers_per_block: int = 2, hint_layers: int = 8) -> str | None:
    if (r := _down_half_to_sd(key, layers_per_block)) is not None:
        return r
    if m := re.fullmatch(r"controlnet_cond_embedding\.(conv_in|conv_out|blocks\.(\d+))\.(weight|bias)", key):
        conv = 0 if m[1] == "conv_in" else hint_layers - 1 if m[1] == "conv_out" else int(m[2]) + 1
        return f"input_hint_block.{2 * conv}.{m[3]}"
    if m := re.fullmatch(r"controlnet_down_blocks\.(\d+)\.(weight|bias)", key):
        return f"zero_convs.{m[1]}.0.{m[2]}"
    if m := re.fullmatch(r"controlnet_mid_block\.(weight|bias)", key):
        return f"middle_block_out.0.{m[1]}"
    if key.startswith("PCCAs."):
        return key
    return None


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


def unet_to_sd(sd: dict, layers_per_block: int = 2, prefix: str = UNET_PREFIX) -> dict:
    levels = {int(m[1]) for k in sd if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", k))}
    out = {}
    for k, v in sd.items():
        new = unet_key_to_sd(k, layers_per_block, levels)
        if new is None:
            raise KeyError(f"no LDM name for U-Net key {k!r}")
        out[prefix + new] = v
    return out


def controller_to_sd(sd: dict, layers_per_block: int = 2, prefix: str = CONTROLLER_PREFIX, hint_layers: int = 8) -> dict:
    out = {}
    for k, v in sd.items():
        new = controller_key_to_sd(k, layers_per_block, hint_layers)
        if new is None:
            raise KeyError(f"no LDM name for controller key {k!r}")
        out[prefix + new] = v
    return out


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
