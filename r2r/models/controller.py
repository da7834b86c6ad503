"""Harmony Controller: diffusers ``ControlNetModel`` + 4 MACA modules, driven by the hint only (ref §c).

Differences from the stock ControlNet (all from the official model):

* the noisy latent is never used: the down path starts from the hint embedding alone
  (``conv_in`` still exists so the checkpoint loads unchanged);
* after each down block the block output (downsampler output, or the last resnet output of the
  final block) is modulated by ``PCCAs[k]`` (MACA) with the latent mask nearest-resized to its
  size; the modulated feature replaces the block's last residual and feeds the next block;
* ``forward(hint, timestep, encoder_hidden_states, mask)`` -> (12 down residuals, mid residual).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import register_to_config
from diffusers.models.controlnets.controlnet import ControlNetModel
from torch import nn

from ..errors import R2RUserError
from .clear_vae import _reorder
from .maca import MACA


class HarmonyController(ControlNetModel):
    """The R2R Harmony Controller (official ``ControlNetModel`` with ``PCCAs``)."""

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        conditioning_channels: int = 7,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        mid_block_type: str | None = "UNetMidBlock2DCrossAttn",
        only_cross_attention: bool | tuple[bool] = False,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        act_fn: str = "silu",
        norm_num_groups: int | None = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 768,
        transformer_layers_per_block: int | tuple[int, ...] = 1,
        encoder_hid_dim: int | None = None,
        encoder_hid_dim_type: str | None = None,
        attention_head_dim: int | tuple[int, ...] = 8,
        num_attention_heads: int | tuple[int, ...] | None = None,
        use_linear_projection: bool = False,
        class_embed_type: str | None = None,
        addition_embed_type: str | None = None,
        addition_time_embed_dim: int | None = None,
        num_class_embeds: int | None = None,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
        projection_class_embeddings_input_dim: int | None = None,
        controlnet_conditioning_channel_order: str = "rgb",
        conditioning_embedding_out_channels: tuple[int, ...] | None = (16, 32, 96, 256),
        global_pool_conditions: bool = False,
        addition_embed_type_num_heads: int = 64,
    ):
        if class_embed_type is not None or addition_embed_type is not None or encoder_hid_dim_type is not None:
            raise R2RUserError(
                "The Harmony Controller config must not use class/addition embeddings or an encoder_hid "
                f"projection (got class_embed_type={class_embed_type!r}, addition_embed_type={addition_embed_type!r}, "
                f"encoder_hid_dim_type={encoder_hid_dim_type!r}); use the official controlnet/config.json."
            )
        super().__init__(
            in_channels=in_channels,
            conditioning_channels=conditioning_channels,
            flip_sin_to_cos=flip_sin_to_cos,
            freq_shift=freq_shift,
            down_block_types=down_block_types,
            mid_block_type=mid_block_type,
            only_cross_attention=only_cross_attention,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            downsample_padding=downsample_padding,
            mid_block_scale_factor=mid_block_scale_factor,
            act_fn=act_fn,
            norm_num_groups=norm_num_groups,
            norm_eps=norm_eps,
            cross_attention_dim=cross_attention_dim,
            transformer_layers_per_block=transformer_layers_per_block,
            encoder_hid_dim=encoder_hid_dim,
            encoder_hid_dim_type=encoder_hid_dim_type,
            attention_head_dim=attention_head_dim,
            num_attention_heads=num_attention_heads,
            use_linear_projection=use_linear_projection,
            class_embed_type=class_embed_type,
            addition_embed_type=addition_embed_type,
            addition_time_embed_dim=addition_time_embed_dim,
            num_class_embeds=num_class_embeds,
            upcast_attention=upcast_attention,
            resnet_time_scale_shift=resnet_time_scale_shift,
            projection_class_embeddings_input_dim=projection_class_embeddings_input_dim,
            controlnet_conditioning_channel_order=controlnet_conditioning_channel_order,
            conditioning_embedding_out_channels=conditioning_embedding_out_channels,
            global_pool_conditions=global_pool_conditions,
            addition_embed_type_num_heads=addition_embed_type_num_heads,
        )
        # one MACA per down block, with that block's output channels (official: 320, 640, 1280, 1280)
        self.PCCAs = nn.ModuleList([MACA(c) for c in block_out_channels])
        order = [k for k in self._modules if k != "PCCAs"]
        i = order.index("controlnet_mid_block")
        _reorder(self, order[:i] + ["PCCAs"] + order[i:])

    @property
    def maca_channels(self) -> list[int]:
        return list(self.config.block_out_channels)

    def forward(
        self,
        hint: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        mask: torch.Tensor,
        conditioning_scale: float = 1.0,
        reference_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict | None = None,
        reference_hint: torch.Tensor | None = None,
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Residuals for the U-Net.

        Args:
            hint: ``[B,7,H,W]`` (Canny/composite map and composite in [-1,1], mask in {0,1}).
            timestep: scalar or ``[B]`` tensor / number.
            encoder_hidden_states: ``[B or 1,77,768]`` text embedding.
            mask: ``[B,1,H/8,W/8]`` latent-resolution foreground mask.
            conditioning_scale: multiplies every residual (1.0 = official).
            reference_mask: optional ``[B,1,H/8,W/8]`` region whose statistics replace the
                background's inside MACA (None = official behaviour). With ``reference_hint``: the
                region of the reference photo (``[R,1,H/8,W/8]``).
            reference_hint: optional ``[R,7,H,W]`` hint of a reference photo on the same grid
                (:func:`r2r.imaging.prepare_reference_photo`), ``R`` = 1 or B. The photo runs through
                the down path beside the composite (MACA on it as on any composite, its "object" being
                everything outside its region), and at every MACA block the composite's background
                statistic comes from the photo's features over its region (:class:`~r2r.models.MACA`).
                Costs one more pass of the down path (the photo's own, so the composite's numbers stay those
                of a run without a reference); the mid block and residuals are the composite's.

        Returns:
            (tuple of 12 down residuals, mid residual).
        """
        hint, mask, reference_mask, encoder_hidden_states = self._check_inputs(
            hint, mask, reference_mask, encoder_hidden_states, reference_hint
        )
        b = hint.shape[0]
        dtype = self.dtype
        hint = hint.to(dtype)
        encoder_hidden_states = encoder_hidden_states.to(dtype)
        timesteps = timestep
        if not torch.is_tensor(timesteps):
            timesteps = torch.tensor([float(timesteps)], dtype=torch.float32, device=hint.device)
        elif timesteps.ndim == 0:
            timesteps = timesteps[None]
        if timesteps.ndim != 1 or timesteps.shape[0] not in (1, b):
            raise R2RUserError(
                f"Harmony Controller timestep must be a number or a tensor of shape [] / [1] / [{b}] (one per "
                f"hint), got shape {tuple(timesteps.shape)}."
            )
        timesteps = timesteps.to(hint.device).expand(b)
        emb = self.time_embedding(self.time_proj(timesteps).to(dtype), None)
        # the official controller ignores the noisy latent: the hint embedding alone starts the path
        sample = self.controlnet_cond_embedding(hint)
        photo = photo_mask = photo_text = None
        n_ref = 0
        if reference_hint is not None:
            # the photo takes its own pass through the down path beside the composite's (not one batch with
            # it), so the composite's features are computed exactly as without a reference (same batch, same
            # kernels): the composite as its own photo with its background as the region gives, to the last
            # bit, the result without a reference
            n_ref = reference_hint.shape[0]
            photo = self.controlnet_cond_embedding(reference_hint.to(hint.device, dtype))
            photo_mask = 1 - reference_mask
            photo_text = encoder_hidden_states[:n_ref]
        down_res = (sample,)
        for k, block in enumerate(self.down_blocks):
            sample, res = self._down(block, sample, emb, encoder_hidden_states, cross_attention_kwargs)
            size = sample.shape[-2:]
            m_k = F.interpolate(mask, size=size)  # nearest, top-left sampling (as the official code)
            r_k = None if reference_mask is None else F.interpolate(reference_mask, size=size)
            if photo is not None:
                photo, _ = self._down(block, photo, emb[:n_ref], photo_text, cross_attention_kwargs)
                features = photo  # the photo's features before its own MACA give the statistic
                photo = self.PCCAs[k](photo, F.interpolate(photo_mask, size=size))
                sample = self.PCCAs[k](sample, m_k, r_k, reference_features=features)
            else:
                sample = self.PCCAs[k](sample, m_k, r_k)
            down_res += tuple(res[:-1]) + (sample,)
        if self.mid_block is not None:
            if getattr(self.mid_block, "has_cross_attention", False):
                sample = self.mid_block(
                    sample, emb, encoder_hidden_states=encoder_hidden_states, cross_attention_kwargs=cross_attention_kwargs
                )
            else:
                sample = self.mid_block(sample, emb)
        down = tuple(conv(r) * conditioning_scale for r, conv in zip(down_res, self.controlnet_down_blocks))
        mid = self.controlnet_mid_block(sample) * conditioning_scale
        return down, mid

    @staticmethod
    def _down(block, sample, emb, text, cross_attention_kwargs):
        """One down block -> (sample, its residuals)."""
        if getattr(block, "has_cross_attention", False):
            return block(hidden_states=sample, temb=emb, encoder_hidden_states=text,
                         cross_attention_kwargs=cross_attention_kwargs)
        return block(hidden_states=sample, temb=emb)

    def _check_inputs(self, hint, mask, reference_mask, text, reference_hint=None):
        c = self.config.conditioning_channels
        if not torch.is_tensor(hint) or hint.ndim != 4 or hint.shape[1] != c:
            raise R2RUserError(
                f"Harmony Controller expected a hint [B,{c},H,W] (Canny map, composite, mask), got "
                f"{tuple(hint.shape) if torch.is_tensor(hint) else type(hint).__name__}; build it with "
                "r2r.imaging.prepare."
            )
        b, _, h, w = hint.shape
        f = 2 ** (len(self.config.block_out_channels) - 1)
        if h % (8 * f) or w % (8 * f):
            raise R2RUserError(
                f"Harmony Controller needs hint sides that are multiples of {8 * f} px, got {h}x{w}; "
                "resize or pad the image (r2r.imaging.prepare does this)."
            )
        n_ref = b
        if reference_hint is not None:
            if not torch.is_tensor(reference_hint) or tuple(reference_hint.shape[1:]) != (c, h, w) or \
                    reference_hint.shape[0] not in (1, b):
                raise R2RUserError(
                    f"Harmony Controller reference_hint must be [1 or {b},{c},{h},{w}] (the reference photo on the "
                    f"composite's grid), got {tuple(getattr(reference_hint, 'shape', ()))}.")
            if reference_mask is None:
                raise R2RUserError("Harmony Controller: a reference_hint needs its region as reference_mask.")
            n_ref = reference_hint.shape[0]
        out = []
        for name, m, batch in (("mask", mask, b), ("reference_mask", reference_mask, n_ref)):
            if m is None:
                if name == "mask":
                    raise R2RUserError("Harmony Controller needs the latent-resolution mask [B,1,H/8,W/8], got None.")
                out.append(None)
                continue
            if not torch.is_tensor(m) or m.ndim != 4 or m.shape[1] != 1 or tuple(m.shape[-2:]) != (h // 8, w // 8):
                raise R2RUserError(
                    f"Harmony Controller {name} must be [B,1,{h // 8},{w // 8}] (the hint size / 8), got "
                    f"{tuple(m.shape) if torch.is_tensor(m) else type(m).__name__}."
                )
            if m.shape[0] not in (1, batch):
                raise R2RUserError(f"Harmony Controller {name} has batch {m.shape[0]} but the hint has batch {batch}.")
            out.append(m.to(device=hint.device, dtype=self.dtype).expand(batch, -1, -1, -1))
        if not torch.is_tensor(text) or text.ndim != 3 or text.shape[-1] != self.config.cross_attention_dim:
            raise R2RUserError(
                f"Harmony Controller expected text embeddings [B,77,{self.config.cross_attention_dim}], got "
                f"{tuple(text.shape) if torch.is_tensor(text) else type(text).__name__}."
            )
        if text.shape[0] not in (1, b):
            raise R2RUserError(f"text embeddings have batch {text.shape[0]} but the hint has batch {b}.")
        text = text.expand(b, -1, -1)
        return hint, out[0], out[1], text
