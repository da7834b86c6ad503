"""Inference speed options and the arithmetic of each stage (issue 17).

:func:`speed_options` applies, to a pipeline's resident networks, the options that pay off on a GPU, each
behind a flag and off by default until the GPU check has measured it (benchmarks/gpu_check.py):

* ``channels_last``: the U-Net, the controller and the Clear-VAE in NHWC memory format (cuDNN's fast
  path for fp16 convolutions on tensor cores; the banded Clear-VAE keeps the format band by band);
* ``compile``: ``torch.compile`` of the U-Net (the loop's 10-20 forwards amortise the compile);
  ``compile_mode="reduce-overhead"`` also replays the U-Net forward as CUDA graphs;
* attention: diffusers' default processor is PyTorch's ``scaled_dot_product_attention`` (flash /
  memory-efficient kernels on CUDA); :func:`attention_processors` says what each network uses.

:func:`stage_flops` counts the floating-point operations of each stage for a working size, with
``torch.utils.flop_counter`` over the official configs on the meta device (no weights, no memory):
what docs/performance.md divides by the measured stage times to say how far each stage is from the
card's peak.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

log = logging.getLogger(__name__)

NETWORKS = ("unet", "controller", "clear_vae")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


def attention_processors(module) -> set[str]:
    """Class names of the attention processors a diffusers network uses (``AttnProcessor2_0`` = SDPA)."""
    procs = getattr(module, "attn_processors", None)
    return {type(p).__name__ for p in procs.values()} if procs else set()


def speed_options(models, *, channels_last: bool = False, compile: bool = False,
                  compile_mode: str = "default") -> dict:
    """Apply the options to ``models`` (a model source with resident ``components``: ``R2RPipeline.models``
    of ``from_pretrained``) and return what was applied, per network."""
    import torch

    from ..errors import R2RUserError

    if compile_mode not in COMPILE_MODES:
        raise R2RUserError(f"compile_mode must be one of {', '.join(COMPILE_MODES)}; got {compile_mode!r}.")
    components = getattr(models, "components", None)
    if components is None:
        raise R2RUserError("speed_options needs resident networks (R2RPipeline.from_pretrained); this pipeline's "
                           f"model source is {type(models).__name__}.")
    applied: dict = {}
    for name in NETWORKS:
        module = getattr(components, name, None)
        if module is None:
            continue
        done: dict = {"attention": sorted(attention_processors(module))}
        if channels_last:
            module.to(memory_format=torch.channels_last)
            done["channels_last"] = True
        if compile and name == "unet":
            setattr(components, name, torch.compile(module, mode=compile_mode))
            done["compile"] = compile_mode
        applied[name] = done
    log.info("speed options: %s", applied)
    return applied


def _meta_networks(configs: Mapping | None):
    """The three networks built from ``configs`` (default: the official ones) on the meta device."""
    import torch
    from diffusers import UNet2DConditionModel

    from ..models import ClearVAE, HarmonyController
    from ..weights.layout import official_config

    cfg = {name: dict((configs or {}).get(name) or official_config(name)) for name in NETWORKS}
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(cfg["unet"])
        controller = HarmonyController.from_config(cfg["controller"])
        vae = ClearVAE.from_config(cfg["clear_vae"])
    return unet.eval(), controller.eval(), vae.eval()


def stage_flops(working_hw, *, batch: int = 1, configs: Mapping | None = None) -> dict:
    """Floating-point operations (multiply-adds count 2) of one pass of each stage at ``working_hw``:
    ``encode`` (Clear-VAE encoder with skips), ``controller_step`` and ``unet_step`` (one forward each,
    per timestep), ``decode`` (Clear-VAE decoder with the skips). Counted by ``torch.utils.flop_counter``
    (convolutions, matrix products, attention) on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    h, w = int(working_hw[0]), int(working_hw[1])
    lh, lw = h // 8, w // 8
    unet, controller, vae = _meta_networks(configs)
    text = torch.zeros(batch, 77, int(unet.config.cross_attention_dim), device="meta")
    t = torch.tensor(999.0, device="meta")
    out = {}

    def count(name, fn):
        mode = FlopCounterMode(display=False)
        with mode, torch.no_grad():
            fn()
        out[name] = int(mode.get_total_flops())

    x = torch.zeros(batch, 3, h, w, device="meta")
    latent = torch.zeros(batch, 4, lh, lw, device="meta")
    mask = torch.zeros(batch, 1, lh, lw, device="meta")
    count("encode", lambda: vae.encode_with_skips(x))
    hint = torch.zeros(batch, int(controller.config.conditioning_channels), h, w, device="meta")
    count("controller_step", lambda: controller(hint, t, text, mask))
    count("unet_step", lambda: unet(torch.zeros(batch, int(unet.config.in_channels), lh, lw, device="meta"), t,
                                    encoder_hidden_states=text))
    _, skips = vae.encode_with_skips(x)
    count("decode", lambda: vae.decode_with_skips(latent, skips))
    return out


def pipeline_flops(working_hw, steps: int = 10, **kwargs) -> dict:
    """:func:`stage_flops` and the totals of one call with ``steps`` steps (controller and U-Net per step)."""
    per = stage_flops(working_hw, **kwargs)
    per["controller"] = per["controller_step"] * steps
    per["unet"] = per["unet_step"] * steps
    per["total"] = per["encode"] + per["controller"] + per["unet"] + per["decode"]
    return per
