"""A tiny random-weight R2R release in the EXACT official hub layout (for tests; deterministic).

    make_tiny_release(root) -> root/
        stable-diffusion-inpainting/
            model_index.json
            unet/{config.json,diffusion_pytorch_model.safetensors}
            controlnet/{config.json,diffusion_pytorch_model.safetensors}
            text_encoder/{config.json,model.safetensors}
            tokenizer/   (the official CLIP tokenizer files)
            scheduler/scheduler_config.json
        clear_vae/{config.json,diffusion_pytorch_model.safetensors}   (float16, like the release)

The configs are the official ones with smaller widths only: 4 blocks everywhere, 2 layers per
block (so /8 latents, 12 skips/residuals and the 64-px minimum are as in the real models), block
channels (32, 32, 64, 64), 8 norm groups, a 32-wide 2-layer CLIP text tower with the real
vocabulary (49408). Every tensor that the official code zero-initialises (controller zero convs,
hint conv_out, MACA last layer, Clear-VAE skip convs) is made random so tests exercise it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

OFFICIAL = Path(__file__).resolve().parents[1] / "r2r" / "configs" / "official"
SD = "stable-diffusion-inpainting"

TINY_CHANNELS = [32, 32, 64, 64]
TINY_GROUPS = 8
TINY_TEXT_DIM = 32
TINY_HINT_CHANNELS = [8, 16, 16, 32]


def _load(rel: str) -> dict:
    return json.loads((OFFICIAL / rel).read_text())


def tiny_configs() -> dict[str, dict]:
    """The official configs with tiny widths (same structure)."""
    unet = _load(f"{SD}/unet/config.json")
    unet.update(block_out_channels=TINY_CHANNELS, norm_num_groups=TINY_GROUPS, cross_attention_dim=TINY_TEXT_DIM)
    cn = _load(f"{SD}/controlnet/config.json")
    cn.update(
        block_out_channels=TINY_CHANNELS,
        norm_num_groups=TINY_GROUPS,
        cross_attention_dim=TINY_TEXT_DIM,
        conditioning_embedding_out_channels=TINY_HINT_CHANNELS,
    )
    vae = _load("clear_vae/config.json")
    vae.update(block_out_channels=TINY_CHANNELS, norm_num_groups=TINY_GROUPS)
    te = _load(f"{SD}/text_encoder/config.json")
    te.update(
        hidden_size=TINY_TEXT_DIM,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        projection_dim=TINY_TEXT_DIM,
        torch_dtype="float32",
    )
    return {"unet": unet, "controlnet": cn, "clear_vae": vae, "text_encoder": te}


def _randomize_zero_init(model, seed: int, std: float = 0.05) -> None:
    """Give every all-zero weight tensor (zero-initialised layers) random values."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.numel() and not p.any() and not name.endswith("beta"):
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * std)


def build_tiny_models(seed: int = 0):
    """(unet, controller, clear_vae, text_encoder) tiny float32 models, deterministic."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from r2r.models import ClearVAE, HarmonyController

    cfg = tiny_configs()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(cfg["unet"])
    _randomize_zero_init(unet, seed + 1)
    torch.manual_seed(seed + 10)
    controller = HarmonyController.from_config(cfg["controlnet"])
    _randomize_zero_init(controller, seed + 11)
    torch.manual_seed(seed + 20)
    vae = ClearVAE.from_config(cfg["clear_vae"])
    _randomize_zero_init(vae, seed + 21)
    with torch.no_grad():  # learned filter mixing weights away from their init
        g = torch.Generator().manual_seed(seed + 22)
        for f in vae.filters:
            f.alpha.copy_(1 + 0.2 * torch.randn(f.alpha.shape, generator=g))
            f.beta.copy_(0.2 * torch.randn(f.beta.shape, generator=g))
    torch.manual_seed(seed + 30)
    te_cfg = {k: v for k, v in cfg["text_encoder"].items() if k not in ("architectures", "transformers_version")}
    text_encoder = CLIPTextModel(CLIPTextConfig(**te_cfg))
    for m in (unet, controller, vae, text_encoder):
        m.eval()
    return unet, controller, vae, text_encoder


MODEL_INDEX = {
    "_class_name": "StableDiffusionInpaintPipeline",
    "_diffusers_version": "0.14.0",
    "feature_extractor": [None, None],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "DDIMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": [None, None],
}


def make_tiny_release(root: Path, seed: int = 0) -> Path:
    """Write the tiny release under ``root`` (created) and return ``root``."""
    import torch

    root = Path(root)
    sd = root / SD
    unet, controller, vae, text_encoder = build_tiny_models(seed)
    unet.save_pretrained(sd / "unet", safe_serialization=True)
    controller.save_pretrained(sd / "controlnet", safe_serialization=True)
    text_encoder.save_pretrained(sd / "text_encoder", safe_serialization=True)
    vae.to(torch.float16).save_pretrained(root / "clear_vae", safe_serialization=True)
    (sd / "tokenizer").mkdir(parents=True, exist_ok=True)
    for f in (OFFICIAL / SD / "tokenizer").iterdir():
        shutil.copyfile(f, sd / "tokenizer" / f.name)
    (sd / "scheduler").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(OFFICIAL / SD / "scheduler" / "scheduler_config.json", sd / "scheduler" / "scheduler_config.json")
    # configs exactly as the official files look (official _class_name / stray keys), tiny widths
    cfg = tiny_configs()
    for rel, key in (("clear_vae", "clear_vae"), (f"{SD}/controlnet", "controlnet"), (f"{SD}/unet", "unet")):
        (root / rel / "config.json").write_text(json.dumps(cfg[key], indent=2) + "\n")
    (sd / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2) + "\n")
    return root


if __name__ == "__main__":  # python tests/tiny.py OUT_DIR
    import sys

    print(make_tiny_release(Path(sys.argv[1])))
