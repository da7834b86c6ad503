"""The R2R U-Net as a core ComfyUI MODEL (for KSampler, SamplerCustomAdvanced, model patches).

The R2R U-Net is a diffusers ``UNet2DConditionModel`` with the SD-1.5-inpainting layout (9 input
channels: noisy latent, latent mask, composite latent). Its diffusers state dict is handed to
ComfyUI's own loader (``comfy.sd.load_diffusion_model_state_dict``), which recognises it as an
SD1.5 inpainting U-Net and converts the keys. Scaled-down SD1.5 layouts (the tiny test models)
are not in ComfyUI's detection table; they are built through the same SD1.5 model class with a
config read from the diffusers config (and their GroupNorm group count, which ComfyUI fixes at 32).

One change to ComfyUI's sampling maths, so that KSampler reproduces the exact R2R path: at full
denoise ComfyUI starts from ``noise * sqrt(1 + sigma_max^2)``, diffusers' Euler schedulers with
the release's ``linspace`` timestep spacing (what R2R Sampler uses) from ``noise * sigma_max``.
The MODEL carries a ``model_sampling`` object patch that starts from ``noise * sigma_max``
(0.23 % smaller at SD1.5's sigma_max = 14.61); everything else is ComfyUI's SD1.5 model sampling.

Two choices so that the KSampler path costs what R2R Sampler costs (issue 23), both confined to this
MODEL (no global change to ComfyUI):

* **attention**: where ComfyUI's own choice for the device is its memory-saving sub-quadratic or
  split attention (its default on a CPU, where it measured ~20x slower than PyTorch's SDPA on the
  R2R U-Net's 4096-token self-attention at 512 px), the MODEL's ``transformer_options`` carry an
  ``optimized_attention_override`` that runs ComfyUI's own ``pytorch`` attention (SDPA, what
  diffusers and R2R Sampler use). Not when the user asked for split / sub-quadratic attention on
  the command line, nor when ComfyUI already picked SDPA, xformers, flash or sage attention.
* **weights**: the MODEL's U-Net tensors share the R2R U-Net's storage where the two agree in
  shape, dtype and device (ComfyUI's loader copies them): no second copy of the U-Net in memory at
  build time (ComfyUI makes its own copy when it moves the MODEL to another device or dtype).

No ComfyUI import at module level (the pack imports cleanly without ComfyUI).
"""

from __future__ import annotations

import logging
import threading
import weakref

from ..r2r.errors import R2RUserError

#: ComfyUI's SD1.5 U-Net (openaimodel) builds every GroupNorm with 32 groups
COMFY_NORM_GROUPS = 32

log = logging.getLogger("r2r.nodes")
#: ComfyUI's attention functions that the MODEL replaces with ComfyUI's PyTorch SDPA attention
SLOW_ATTENTION = ("attention_sub_quad", "attention_split")

_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _check_layout(config) -> None:
    """Errors for diffusers U-Nets that ComfyUI's SD1.5 U-Net cannot represent."""
    problems = []
    if int(config.in_channels) != 9:
        problems.append(f"in_channels={config.in_channels} (R2R's U-Net has 9: latent 4 + mask 1 + composite 4)")
    groups = int(config.norm_num_groups)
    if any(int(c) % groups for c in config.block_out_channels):
        problems.append(f"block_out_channels {list(config.block_out_channels)} not divisible by norm_num_groups={groups}")
    if config.class_embed_type is not None or config.addition_embed_type is not None:
        problems.append("class/addition embeddings (SD1.5 has none)")
    if list(config.up_block_types) != [t.replace("Down", "Up") for t in reversed(config.down_block_types)]:
        problems.append(f"up blocks {list(config.up_block_types)} that do not mirror the down blocks")
    base = int(config.block_out_channels[0])
    if any(int(c) % base for c in config.block_out_channels):
        problems.append(f"block_out_channels {list(config.block_out_channels)} that are not multiples of the first")
    if problems:
        raise R2RUserError(
            "R2R Model for KSampler: this U-Net cannot become a ComfyUI SD1.5 model: " + "; ".join(problems)
            + ". Load the official R2R U-Net (stable-diffusion-inpainting/unet), or use R2R Sampler, which runs "
            "any diffusers U-Net."
        )


def unet_config_from_diffusers(config) -> dict:
    """ComfyUI's ``unet_config`` (openaimodel keyword arguments) for an SD1.5-layout diffusers config.

    For the official R2R U-Net this equals what ComfyUI's detection gives (``SD15_diffusers_inpaint``).
    """
    _check_layout(config)
    layers = int(config.layers_per_block)
    depth = config.transformer_layers_per_block
    levels = len(config.down_block_types)
    depths = [int(depth)] * levels if isinstance(depth, int) else [int(d) for d in depth]
    attn = [d if "CrossAttn" in t else 0 for d, t in zip(depths, config.down_block_types)]
    heads = config.num_attention_heads or config.attention_head_dim  # diffusers' legacy naming
    if not isinstance(heads, int):
        raise R2RUserError(f"R2R Model for KSampler: per-block attention heads {heads!r} are not supported (SD1.5 uses 8).")
    base = int(config.block_out_channels[0])
    return {
        "use_checkpoint": False, "image_size": 32, "out_channels": int(config.out_channels),
        "use_spatial_transformer": True, "legacy": False, "adm_in_channels": None, "dtype": None,
        "in_channels": int(config.in_channels), "model_channels": base,
        "num_res_blocks": [layers] * levels, "transformer_depth": [d for d in attn for _ in range(layers)],
        "channel_mult": [int(c) // base for c in config.block_out_channels],
        "transformer_depth_middle": depths[-1], "use_linear_in_transformer": bool(config.use_linear_projection),
        "context_dim": int(config.cross_attention_dim), "num_heads": int(heads),
        "transformer_depth_output": [d for d in attn for _ in range(layers + 1)],
        "use_temporal_attention": False, "use_temporal_resblock": False,
    }


def _load_scaled_down(state_dict: dict, config):
    """ComfyUI's loading steps for an SD1.5-layout U-Net its detection table does not list."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    import comfy.utils
    import torch

    unet_config = unet_config_from_diffusers(config)
    model_config = comfy.supported_models.SD15(unet_config)
    keys = comfy.utils.unet_to_diffusers(unet_config)
    unmapped = sorted(k for k in state_dict if k not in keys)
    if unmapped:
        raise R2RUserError(f"R2R Model for KSampler: {len(unmapped)} U-Net weights have no place in ComfyUI's SD1.5 "
                           f"U-Net (e.g. {unmapped[0]}).")
    new_sd = {keys[k]: state_dict[k] for k in keys if k in state_dict}
    unet_dtype = mm.unet_dtype(model_params=comfy.utils.calculate_parameters(new_sd),
                               supported_dtypes=list(model_config.supported_inference_dtypes),
                               weight_dtype=comfy.utils.weight_dtype(new_sd))
    load_device = mm.get_torch_device()
    manual_cast = mm.unet_manual_cast(unet_dtype, load_device, model_config.supported_inference_dtypes)
    model_config.set_inference_dtype(unet_dtype, manual_cast)
    model = model_config.get_model(new_sd, "").to(mm.unet_offload_device())
    model.load_model_weights(new_sd, "")
    groups = int(config.norm_num_groups)
    if groups != COMFY_NORM_GROUPS:  # diffusers uses norm_num_groups for every GroupNorm of the U-Net
        for module in model.diffusion_model.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.num_groups = groups
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=mm.unet_offload_device())


def _patch_initial_noise(patcher) -> None:
    """Start full-denoise sampling from ``noise * sigma_max`` (diffusers' linspace Euler), see module doc."""
    base = type(patcher.get_model_object("model_sampling"))

    class R2RModelSampling(base):  # type: ignore[valid-type,misc]
        def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
            return super().noise_scaling(sigma, noise, latent_image, max_denoise=False)

    patcher.add_object_patch("model_sampling", R2RModelSampling(patcher.model.model_config))


def attention_choice() -> str | None:
    """The attention the MODEL should use instead of ComfyUI's global choice (``"pytorch"``), or None to
    keep ComfyUI's (see the module docstring)."""
    import comfy.ldm.modules.attention as attention
    from comfy.cli_args import args

    if args.use_split_cross_attention or args.use_quad_cross_attention:
        return None  # the user's explicit choice
    current = getattr(attention.optimized_attention, "__name__", "")
    if current not in SLOW_ATTENTION or attention.get_attention_function("pytorch", None) is None:
        return None
    return "pytorch"


def _use_attention(patcher, name: str) -> None:
    import comfy.ldm.modules.attention as attention

    chosen = attention.get_attention_function(name)

    def override(func, *args, **kwargs):
        if getattr(func, "__name__", "") in SLOW_ATTENTION:
            return chosen(*args, **kwargs)
        return func(*args, **kwargs)

    options = patcher.model_options.setdefault("transformer_options", {})
    if "optimized_attention_override" not in options:
        options["optimized_attention_override"] = override
        log.info("R2R Model for KSampler: %s attention (ComfyUI's choice here: %s)", name,
                 getattr(attention.optimized_attention, "__name__", "?"))


def _share_weights(patcher, unet) -> int:
    """Point the MODEL's U-Net tensors at the R2R U-Net's where shape, dtype and device agree; returns
    how many bytes are shared."""
    import comfy.utils

    keys = comfy.utils.unet_to_diffusers(patcher.model.model_config.unet_config)
    source = unet.state_dict()
    target = patcher.model.diffusion_model.state_dict(keep_vars=True)
    shared = 0
    for d_key, c_key in keys.items():
        src, dst = source.get(d_key), target.get(c_key)
        if src is None or dst is None or src.shape != dst.shape or src.dtype != dst.dtype \
                or src.device != dst.device:
            continue
        dst.data = src.detach()
        shared += src.numel() * src.element_size()
    return shared


def build_comfy_model(unet_managed):
    """A new ComfyUI ModelPatcher (SD1.5 inpainting) over the R2R U-Net's weights."""
    import comfy.sd

    unet = unet_managed.model
    _check_layout(unet.config)
    state_dict = {k: v.detach() for k, v in unet.state_dict().items()}
    patcher = None
    if int(unet.config.block_out_channels[0]) == 320 and int(unet.config.cross_attention_dim) == 768:
        patcher = comfy.sd.load_diffusion_model_state_dict(dict(state_dict))
    if patcher is None:
        patcher = _load_scaled_down(state_dict, unet.config)
    del state_dict
    shared = _share_weights(patcher, unet)
    log.info("R2R Model for KSampler: %.0f MiB of U-Net weights shared with the R2R U-Net", shared / 2**20)
    _patch_initial_noise(patcher)
    name = attention_choice()
    if name is not None:
        _use_attention(patcher, name)
    return patcher


def comfy_model(unet_managed):
    """The cached MODEL for an R2R U-Net (built once per loaded U-Net; callers get a clone)."""
    with _lock:
        patcher = _cache.get(unet_managed)
        if patcher is None:
            patcher = build_comfy_model(unet_managed)
            _cache[unet_managed] = patcher
    return patcher.clone()
