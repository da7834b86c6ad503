"""The three training stages: which network is trained, how it is initialised, and its loss.

* ``clear_vae`` (ref §b.6): encoder and quant convs frozen; decoder (with the skip convs) and the
  filters' ``alpha``/``beta`` trained; ``L1(pred, real) + cr_weight * CR``; the latent is a posterior
  sample of the REAL image, the skips come from the COMPOSITE.
* ``unet`` (ref §d): the whole 9-channel U-Net; masked area-reweighted epsilon MSE; timesteps with
  probability 0.3 from [0, 500), else [0, 1000); input ``[noisy real latent, latent mask, composite latent]``.
* ``controller`` (ref §c.5, §g.3): the Harmony Controller (initialised from the U-Net's encoder half
  unless given, MACA zero-initialised); the U-Net frozen; same loss, residuals added to the U-Net.

Each stage builds a :class:`StageModule` (an ``nn.Module`` whose ``forward`` returns the loss, so DDP
wraps exactly the trained network) plus frozen helpers kept outside the module.
"""

from __future__ import annotations

import json
import os

import torch
import torch.nn.functional as F
from torch import nn

from r2r.errors import R2RUserError

from .config import STAGE_COMPONENT_DIR, TrainingConfig
from .losses import ContrastiveRegularization, load_vgg16_features, masked_epsilon_loss


# ============================================================================ weights helpers
def _clear_vae_config(release: str | None) -> dict:
    from importlib import resources

    if release and os.path.isfile(os.path.join(release, "clear_vae", "config.json")):
        path = os.path.join(release, "clear_vae", "config.json")
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    text = resources.files("r2r").joinpath("configs/official/clear_vae/config.json").read_text(encoding="utf-8")
    return json.loads(text)


def _clear_vae_from_config(config: dict):
    """A Clear-VAE (filters + skip convs) with the geometry of an SD-VAE or Clear-VAE config."""
    from r2r.models import ClearVAE

    cfg = {k: v for k, v in config.items() if not k.startswith("_")}
    cfg["use_skip"] = True
    return ClearVAE.from_config(cfg)


def _load_vae_into_clear_vae(vae, state: dict, source: str) -> None:
    """Load SD-VAE / Clear-VAE weights (diffusers keys) strictly, except that a plain SD VAE may lack
    the Clear-VAE additions (``filters.*``, ``*.skip_connect.*``), which keep their initialisation."""
    expected = vae.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    allowed = [k for k in missing if k.startswith("filters.") or ".skip_connect." in k]
    other_missing = [k for k in missing if k not in allowed]
    if other_missing or unexpected:
        raise R2RUserError(
            f"{source} does not match the Clear-VAE/SD-VAE architecture of the config: missing {other_missing[:5]}"
            f"{'...' if len(other_missing) > 5 else ''}, unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}. "
            "Give an SD-1.x VAE (diffusers folder or SD-format .ckpt/.safetensors) or a Clear-VAE of the same size."
        )
    shape_bad = [k for k in state if tuple(state[k].shape) != tuple(expected[k].shape)]
    if shape_bad:
        raise R2RUserError(
            f"{source}: tensor shapes differ from the model config for {shape_bad[:5]}; "
            "the VAE must have the config's channel sizes."
        )
    merged = dict(expected)
    merged.update({k: v.to(expected[k].dtype) for k, v in state.items()})
    vae.load_state_dict(merged, strict=True)


def load_clear_vae_init(spec: str, release: str | None):
    """Clear-VAE for stage 1 from an SD VAE (diffusers folder / SD-format file) or an existing Clear-VAE.

    A plain SD VAE gives the encoder/decoder; the filters and zero-initialised skip convs start fresh
    (ref §b.6). Everything else must match (strict).
    """
    from r2r.weights import find_weights_file, read_state_dict, to_diffusers_state_dict

    if os.path.isdir(spec):
        folder = spec
        if os.path.isfile(os.path.join(spec, "vae", "config.json")) and not os.path.isfile(os.path.join(spec, "config.json")):
            folder = os.path.join(spec, "vae")  # an SD pipeline folder
        cfg_path = os.path.join(folder, "config.json")
        if not os.path.isfile(cfg_path):
            raise R2RUserError(
                f"{spec!r} is a folder without config.json: expected a diffusers VAE folder (config.json + "
                "diffusion_pytorch_model.safetensors), an SD pipeline folder with vae/, or a Clear-VAE folder"
            )
        with open(cfg_path, encoding="utf-8") as fh:
            config = json.load(fh)
        weights = str(find_weights_file(folder, "VAE"))
    elif os.path.isfile(spec):
        config, weights = _clear_vae_config(release), spec
    else:
        raise R2RUserError(
            f"init.weights {spec!r} does not exist: give an SD VAE (diffusers folder, SD-format .ckpt or "
            ".safetensors) or an existing Clear-VAE"
        )
    vae = _clear_vae_from_config(config)
    state, unmatched, _fmt = to_diffusers_state_dict("clear_vae", read_state_dict(weights), dict(vae.config))
    if unmatched:
        raise R2RUserError(
            f"{weights!r}: {len(unmatched)} tensor(s) fit no SD-VAE key rule, e.g. {unmatched[:4]}; "
            "give an SD-1.x VAE or a Clear-VAE checkpoint"
        )
    _load_vae_into_clear_vae(vae, state, repr(weights))
    return vae


def _controller_config_from_unet(unet_config: dict) -> dict:
    keys = ("block_out_channels", "layers_per_block", "cross_attention_dim", "attention_head_dim",
            "down_block_types", "norm_num_groups", "norm_eps", "flip_sin_to_cos", "freq_shift",
            "downsample_padding", "act_fn", "use_linear_projection", "only_cross_attention",
            "upcast_attention", "transformer_layers_per_block", "num_attention_heads")
    cfg = {k: unet_config[k] for k in keys if k in unet_config and unet_config[k] is not None}
    cfg["in_channels"] = 4
    cfg["conditioning_channels"] = 7
    return cfg


def controller_from_unet(unet, controller_config: dict | None = None, seed: int = 0):
    """Harmony Controller initialised from the U-Net's encoder half (ref §g.3).

    Every controller key that the U-Net has with the same shape is copied (time embedding, down
    blocks, mid block) except ``conv_in`` (9 vs 4 channels; never used). Hint embedding, zero convs
    and MACA keep their fresh (zero) initialisation.
    """
    from r2r.models import HarmonyController

    cfg = dict(controller_config) if controller_config else _controller_config_from_unet(dict(unet.config))
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    with torch.random.fork_rng(devices=[]):  # fresh layers (hint block) get the same init for a given seed
        torch.manual_seed(seed)
        ctrl = HarmonyController.from_config(cfg)
    c_sd, u_sd = ctrl.state_dict(), unet.state_dict()
    copied = {k: u_sd[k] for k in c_sd if k in u_sd and not k.startswith("conv_in.") and u_sd[k].shape == c_sd[k].shape}
    if not any(k.startswith("down_blocks.") for k in copied):
        raise R2RUserError(
            "the controller config does not match the U-Net (no down-block weights could be copied); use the "
            "release's controlnet/config.json for this U-Net or omit it to derive one from the U-Net config"
        )
    ctrl.load_state_dict({**c_sd, **copied}, strict=True)
    return ctrl


# ============================================================================ stage modules
class StageModule(nn.Module):
    """Holds the trained network as ``self.net``; ``forward(batch, generator)`` returns ``(loss, logs)``
    (``generator``: one torch.Generator, or a list with one per sample).

    Frozen helpers (VAE encoder, frozen U-Net, VGG) live in ``self.aux`` (a plain dict, so they are not
    part of the state dict, the optimizer or DDP).
    """

    def __init__(self, net: nn.Module, aux: dict):
        super().__init__()
        self.net = net
        self.aux = aux


class ClearVAEStageModule(StageModule):
    def forward(self, batch, generator):
        vae = self.net.module if hasattr(self.net, "module") else self.net
        real, comp, mask = batch["real"], batch["composite"], batch["mask"]
        with torch.no_grad():
            post_real = vae.encode(real).latent_dist
            z = _posterior_sample(post_real, generator)  # unscaled, as decode_with_skips expects
            _, skips = vae.encode_with_skips(comp)
            skips = [s.detach() for s in skips]
        pred = vae.decode_with_skips(z, skips)
        l1 = F.l1_loss(pred.float(), real.float())
        logs = {"l1": l1.detach()}
        loss = l1
        cr = self.aux.get("cr")
        if cr is not None and self.aux["cr_weight"] > 0:
            c = cr(pred, real, comp, mask)
            loss = loss + self.aux["cr_weight"] * c
            logs["cr"] = c.detach()
        return loss, logs


def _gens(generator, batch_size: int) -> list:
    """One generator per sample: a list is used as is; a single generator is shared."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != batch_size:
            raise ValueError(f"{len(generator)} generators for a batch of {batch_size}")
        return list(generator)
    return [generator] * batch_size


def _randn(shape, generator, device) -> torch.Tensor:
    """Standard normal noise drawn on the CPU (per-sample generators), moved to ``device``."""
    gens = _gens(generator, shape[0])
    return torch.cat([torch.randn((1, *shape[1:]), generator=g) for g in gens]).to(device)


def _sample_timesteps(batch_size: int, generator, low_prob: float, low_max: int, num_train: int) -> torch.Tensor:
    """Per sample: with probability ``low_prob`` uniform in [0, low_max), else in [0, num_train) (ref §c.5)."""
    out = []
    for g in _gens(generator, batch_size):
        u = torch.rand(1, generator=g)
        low = torch.randint(0, low_max, (1,), generator=g)
        full = torch.randint(0, num_train, (1,), generator=g)
        out.append(torch.where(u < low_prob, low, full))
    return torch.cat(out)


def _posterior_sample(dist, generator) -> torch.Tensor:
    """``mean + std * N(0, I)`` with per-sample generators (DiagonalGaussianDistribution.sample semantics)."""
    noise = _randn(dist.mean.shape, generator, dist.mean.device).to(dist.mean.dtype)
    return dist.mean + dist.std * noise


class DiffusionStageModule(StageModule):
    """U-Net stage (``controller=False``) or controller stage (the net is the controller)."""

    def forward(self, batch, generator):
        aux = self.aux
        vae, scheduler, prompt = aux["vae"], aux["noise_scheduler"], aux["prompt_embeds"]
        real, comp, mask = batch["real"], batch["composite"], batch["mask"]
        b = real.shape[0]
        dev = real.device
        s = vae.config.scaling_factor
        with torch.no_grad():
            wd = next(vae.parameters()).dtype
            x0 = _posterior_sample(vae.encode(real.to(wd)).latent_dist, generator).float() * s
            zc = _posterior_sample(vae.encode(comp.to(wd)).latent_dist, generator).float() * s
        noise = _randn(x0.shape, generator, dev)
        t = _sample_timesteps(b, generator, aux["low_prob"], aux["low_max"], scheduler.config.num_train_timesteps).to(dev)
        noisy = scheduler.add_noise(x0, noise, t)
        latent_mask = F.interpolate(mask, size=x0.shape[-2:], mode="nearest")
        enc = prompt.to(dev).expand(b, -1, -1)
        model_in = torch.cat([noisy, latent_mask, zc], dim=1)
        if aux["stage"] == "unet":
            eps = self.net(model_in, t, encoder_hidden_states=enc).sample
        else:
            unet = aux["unet"]
            down, mid = self.net(batch["hint"], t, enc, latent_mask)
            udt = next(unet.parameters()).dtype
            eps = unet(model_in.to(udt), t, encoder_hidden_states=enc.to(udt),
                       down_block_additional_residuals=[r.to(udt) for r in down],
                       mid_block_additional_residual=mid.to(udt)).sample
        loss = masked_epsilon_loss(eps, noise, latent_mask)
        return loss, {}


# ============================================================================ building
def _gradient_checkpoint_modules(modules) -> None:
    """Wrap each module's forward in torch.utils.checkpoint (for models whose own flag does not reach
    every block, e.g. the Clear-VAE decoder that decode_with_skips drives block by block)."""
    from functools import partial

    from torch.utils.checkpoint import checkpoint

    for m in modules:
        orig = m.forward

        def fwd(*args, _orig=orig, **kwargs):
            if torch.is_grad_enabled():
                return checkpoint(_orig, *args, use_reentrant=False, **kwargs)
            return _orig(*args, **kwargs)

        m.forward = partial(fwd)


def build_stage(cfg: TrainingConfig, device, weight_dtype) -> tuple[StageModule, dict]:
    """Create the stage module (trained net + frozen helpers) and the info recorded in the metadata."""
    stage = cfg.stage
    info: dict = {"stage": stage}
    if stage == "clear_vae":
        if cfg.init.weights:
            vae = load_clear_vae_init(cfg.init.weights, cfg.init.release)
            info["init"] = cfg.init.weights
        else:
            from r2r.weights import load_components

            vae = load_components(cfg.init.release, components=("clear_vae",)).clear_vae
            info["init"] = f"{cfg.init.release} (clear_vae)"
        if not vae.config.use_skip:
            raise R2RUserError("the Clear-VAE to train has use_skip false (no filters); stage 1 trains the filters: use use_skip true")
        vae.to(device=device, dtype=torch.float32)
        vae.requires_grad_(False)
        trainable = list(vae.decoder.parameters())
        for p in trainable:
            p.requires_grad_(True)
        for f in vae.filters:
            f.alpha.requires_grad_(True)
            f.beta.requires_grad_(True)
        aux = {"cr_weight": cfg.loss.cr_weight, "cr": None}
        if cfg.loss.cr_weight > 0:
            vgg = load_vgg16_features(cfg.loss.vgg16, seed=cfg.seed).to(device)
            aux["cr"] = ContrastiveRegularization(vgg)
            info["vgg16"] = "RANDOM (tests only)" if vgg.is_random else cfg.loss.vgg16
        module = ClearVAEStageModule(vae, aux)
        if cfg.train.gradient_checkpointing is True:  # "auto": the trainer decides once the models are loaded
            enable_gradient_checkpointing(module)
        return module, info

    # ---- unet / controller
    from diffusers import DDPMScheduler

    from r2r.weights import load_components

    need = ["clear_vae"]
    if (stage == "unet" and not cfg.init.weights) or (stage == "controller" and not cfg.init.unet):
        need.append("unet")
    comps = load_components(cfg.init.release, components=tuple(need))
    info["release"] = cfg.init.release
    vae = comps.clear_vae
    if cfg.init.vae:
        vae = load_clear_vae_init(cfg.init.vae, cfg.init.release)
        info["vae"] = cfg.init.vae
    vae.to(device=device, dtype=weight_dtype).requires_grad_(False).eval()
    noise_scheduler = DDPMScheduler.from_config(comps.scheduler_config)
    aux = {
        "vae": vae,
        "noise_scheduler": noise_scheduler,
        "prompt_embeds": comps.prompt_embeds.detach().to(device=device, dtype=torch.float32),
        "low_prob": cfg.train.low_timestep_prob,
        "low_max": cfg.train.low_timestep_max,
        "stage": stage,
        "scheduler_config": dict(comps.scheduler_config),
    }
    unet = comps.unet
    if stage == "unet":
        if cfg.init.weights:
            unet = _load_unet_init(cfg.init.weights, cfg.init.release)
            info["init"] = cfg.init.weights
        else:
            info["init"] = f"{cfg.init.release} (unet)"
        unet.to(device=device, dtype=torch.float32).requires_grad_(True).train()
        module = DiffusionStageModule(unet, aux)
        if cfg.train.gradient_checkpointing is True:
            enable_gradient_checkpointing(module)
        return module, info

    # controller
    if cfg.init.unet:
        unet = _load_unet_init(cfg.init.unet, cfg.init.release)
        info["unet"] = cfg.init.unet
    unet.to(device=device, dtype=weight_dtype).requires_grad_(False).eval()
    if cfg.init.weights == "from_unet" or not cfg.init.weights:
        ctrl = controller_from_unet(unet, _release_controller_config(cfg.init.release), seed=cfg.seed)
        info["init"] = "the U-Net's encoder half (MACA, hint block and zero convs freshly initialised)"
    else:
        from r2r.weights import load_controller

        single_file = os.path.isfile(cfg.init.weights)
        ctrl = load_controller(cfg.init.weights, config=_release_controller_config(cfg.init.release) if single_file else None,
                               torch_dtype=torch.float32)
        info["init"] = cfg.init.weights
    ctrl.to(device=device, dtype=torch.float32).requires_grad_(True).train()
    ctrl.conv_in.requires_grad_(False)  # the controller ignores the noisy latent: conv_in is dead weight
    aux["unet"] = unet
    module = DiffusionStageModule(ctrl, aux)
    if cfg.train.gradient_checkpointing is True:
        enable_gradient_checkpointing(module)
    return module, info


def enable_gradient_checkpointing(module: StageModule) -> None:
    """Recompute the trained network's activations in the backward pass (less memory, ~30 % slower steps)."""
    net = module.net
    if isinstance(module, ClearVAEStageModule):
        blocks = [net.decoder.mid_block] + [r for b in net.decoder.up_blocks for r in b.resnets]
        _gradient_checkpoint_modules(blocks)
    else:
        net.enable_gradient_checkpointing()


def _release_controller_config(release: str | None) -> dict | None:
    """The release's controlnet/config.json when the release is a local folder (else derived from the U-Net)."""
    if release and os.path.isdir(release):
        path = os.path.join(release, "stable-diffusion-inpainting", "controlnet", "config.json")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as fh:
                return json.load(fh)
    return None


def _load_unet_init(spec: str, release: str | None = None):
    """U-Net from a diffusers folder, an SD pipeline folder (its unet/), or a single file (SD-format
    DiffHarmony-style .ckpt or .safetensors; the geometry then comes from the release's unet/config.json)."""
    from r2r.weights import load_unet

    if os.path.isdir(spec) and os.path.isdir(os.path.join(spec, "unet")) and not os.path.isfile(os.path.join(spec, "config.json")):
        spec = os.path.join(spec, "unet")  # an SD-1.5-inpainting pipeline folder
    config = None
    if os.path.isfile(spec) and release and os.path.isdir(release):
        cand = os.path.join(release, "stable-diffusion-inpainting", "unet", "config.json")
        config = cand if os.path.isfile(cand) else None
    return load_unet(spec, config=config, torch_dtype=torch.float32)


def component_dir(stage: str) -> str:
    return STAGE_COMPONENT_DIR[stage]
