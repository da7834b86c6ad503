"""Clear-VAE: the SD kl-f8 VAE whose decoder receives 12 filtered encoder skips (ref §b).

Built on diffusers' ``AutoencoderKL`` (same Encoder/Decoder blocks; stock ``encode``/``decode``
behaviour) with three additions that match the official checkpoint key for key:

* ``filters.0..N-1``: one :class:`AdaptiveFilters` per encoder skip (``use_skip``);
* every decoder resnet is a :class:`SkipResnetBlock2D` that owns ``skip_connect.conv`` (1x1,
  no bias, zero-initialised, dropout 0.1 in train mode) and adds
  ``skip_connect(SiLU(GN1(x)) + s)`` to ``conv1``'s output;
* ``encode_with_skips`` / ``filter_skips`` / ``decode_with_skips``.

Skip order: conv_in output, then for each down block every resnet output and (all but the last
block) the downsampler output. Decoder resnet k (global order) receives skip N-1-k (LIFO); a skip
with half the resnet's input channels is tiled along channels as [s, s].
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from ..errors import R2RUserError
from .filters import AdaptiveFilters

_DOWN_TYPES = {"DownEncoderSkipBlock2D": "DownEncoderBlock2D", "DownEncoderBlock2D": "DownEncoderBlock2D"}
_UP_TYPES = {"UpDecoderSkipBlock2D": "UpDecoderBlock2D", "UpDecoderBlock2D": "UpDecoderBlock2D"}


def _reorder(module: nn.Module, order: list[str]) -> None:
    """Put the named children first, in this order (state_dict key order = official order)."""
    mods = module._modules
    new = OrderedDict((k, mods[k]) for k in order if k in mods)
    new.update((k, v) for k, v in mods.items() if k not in new)
    module._modules = new


class SkipConv2d(nn.Module):
    """1x1 conv without bias (zero-initialised) + dropout, times ``scale`` (official ``SkipConv2d``)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.1, scale: float = 1.0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        nn.init.zeros_(self.conv.weight)
        self.dropout = nn.Dropout(dropout)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.conv(x)) * self.scale


class SkipResnetBlock2D(ResnetBlock2D):
    """A decoder ``ResnetBlock2D`` that can take an encoder skip (official ``ResnetBlockSkip``)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.skip_connect = SkipConv2d(self.in_channels, self.out_channels)
        _reorder(self, ["norm1", "conv1", "skip_connect", "norm2"])

    def forward(self, input_tensor, temb=None, skip: torch.Tensor | None = None, *args, **kwargs):
        if skip is None:
            return super().forward(input_tensor, temb, *args, **kwargs)
        if self.upsample is not None or self.downsample is not None or self.time_emb_proj is not None:
            raise RuntimeError("skip injection is only defined for plain decoder resnets")
        h = self.nonlinearity(self.norm1(input_tensor))
        c_h, c_s = h.shape[1], skip.shape[1]
        if c_s != c_h:
            if c_h != 2 * c_s:
                raise R2RUserError(
                    f"Clear-VAE skip has {c_s} channels but the decoder resnet expects {c_h} (or half of it); "
                    "pass the 12 skips from encode_with_skips() of the same model, in their original order."
                )
            skip = torch.cat([skip, skip], dim=1)
        if skip.shape[-2:] != h.shape[-2:]:
            raise R2RUserError(
                f"Clear-VAE skip of size {tuple(skip.shape[-2:])} does not match the decoder feature size "
                f"{tuple(h.shape[-2:])}; the latent must come from an image of the same size as the one the "
                "skips were computed from (latent size = image size / 8)."
            )
        h = self.conv1(h) + self.skip_connect(h + skip.to(h.dtype))
        h = self.nonlinearity(self.norm2(h))
        h = self.conv2(self.dropout(h))
        x = self.conv_shortcut(input_tensor) if self.conv_shortcut is not None else input_tensor
        return (x + h) / self.output_scale_factor


class ClearVAE(AutoencoderKL):
    """AutoencoderKL + encoder skips + AdaptiveFilters + decoder skip fusion (official ``ClearVAE``).

    Accepts the official ``clear_vae/config.json`` as is (``_class_name`` "AutoencoderKL_Skip",
    ``*SkipBlock2D`` block types, ``use_skip``, ``training``). ``encode``/``decode``/``forward`` are
    the stock AutoencoderKL methods (no skips).
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: tuple[str, ...] = ("DownEncoderSkipBlock2D",) * 4,
        up_block_types: tuple[str, ...] = ("UpDecoderSkipBlock2D",) * 4,
        block_out_channels: tuple[int, ...] = (128, 256, 512, 512),
        layers_per_block: int = 2,
        act_fn: str = "silu",
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        sample_size: int = 512,
        scaling_factor: float = 0.18215,
        shift_factor: float | None = None,
        latents_mean: tuple[float] | None = None,
        latents_std: tuple[float] | None = None,
        force_upcast: bool = False,
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
        mid_block_add_attention: bool = True,
        use_skip: bool = True,
        training: bool = False,  # official flag; only gated dead code there, ignored here
    ):
        bad = [t for t in down_block_types if t not in _DOWN_TYPES] + [t for t in up_block_types if t not in _UP_TYPES]
        if bad:
            raise R2RUserError(
                f"Clear-VAE config has unsupported block types {bad}; expected DownEncoderSkipBlock2D / "
                "UpDecoderSkipBlock2D (official) or DownEncoderBlock2D / UpDecoderBlock2D. Use the official "
                "clear_vae/config.json."
            )
        if len(down_block_types) != len(block_out_channels) or len(up_block_types) != len(block_out_channels):
            raise R2RUserError(
                f"Clear-VAE config: {len(block_out_channels)} block_out_channels but {len(down_block_types)} down "
                f"and {len(up_block_types)} up block types; they must be equal. Use the official config."
            )
        official_down, official_up = list(down_block_types), list(up_block_types)
        super().__init__(
            in_channels=in_channels,
            out_channels=out_channels,
            down_block_types=tuple(_DOWN_TYPES[t] for t in down_block_types),
            up_block_types=tuple(_UP_TYPES[t] for t in up_block_types),
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            act_fn=act_fn,
            latent_channels=latent_channels,
            norm_num_groups=norm_num_groups,
            sample_size=sample_size,
            scaling_factor=scaling_factor,
            shift_factor=shift_factor,
            latents_mean=latents_mean,
            latents_std=latents_std,
            force_upcast=force_upcast,
            use_quant_conv=use_quant_conv,
            use_post_quant_conv=use_post_quant_conv,
            mid_block_add_attention=mid_block_add_attention,
        )
        # AutoencoderKL.__init__ re-registered its own view of the config; restore ours
        self.register_to_config(down_block_types=official_down, up_block_types=official_up)

        # decoder resnets -> skip-capable resnets (same hyper-parameters, fresh init)
        for block in self.decoder.up_blocks:
            for j, r in enumerate(block.resnets):
                block.resnets[j] = SkipResnetBlock2D(
                    in_channels=r.in_channels,
                    out_channels=r.out_channels,
                    temb_channels=None,
                    eps=r.norm1.eps,
                    groups=r.norm1.num_groups,
                    dropout=r.dropout.p,
                    non_linearity=act_fn,
                    output_scale_factor=r.output_scale_factor,
                )
        if use_skip:
            self.filters = nn.ModuleList([AdaptiveFilters(c) for c in self.skip_channels])
        else:
            self.filters = None
        _reorder(self, ["encoder", "filters", "decoder", "quant_conv", "post_quant_conv"])

    # ------------------------------------------------------------------ geometry
    @property
    def skip_channels(self) -> list[int]:
        """Channels of the encoder skips in order (official: [128]*4 + [256]*3 + [512]*5)."""
        ch = list(self.config.block_out_channels)
        out = [ch[0]]
        for i, c in enumerate(ch):
            out += [c] * self.config.layers_per_block
            if i < len(ch) - 1:
                out.append(c)
        return out

    @property
    def num_skips(self) -> int:
        return len(self.skip_channels)

    # ------------------------------------------------------------------ skips
    def encode_with_skips(self, x: torch.Tensor) -> tuple[DiagonalGaussianDistribution, list[torch.Tensor]]:
        """Encode ``x`` ([-1,1], ``[B,3,H,W]``) -> (posterior, the 12 raw encoder skips)."""
        self._check_image(x)
        enc = self.encoder
        h = enc.conv_in(x)
        skips = [h]
        for block in enc.down_blocks:
            for resnet in block.resnets:
                h = resnet(h, temb=None)
                skips.append(h)
            if block.downsamplers is not None:
                for down in block.downsamplers:
                    h = down(h)
                skips.append(h)
        h = enc.mid_block(h)
        h = enc.conv_out(enc.conv_act(enc.conv_norm_out(h)))
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        return DiagonalGaussianDistribution(h), skips

    def filter_skips(self, skips: list[torch.Tensor]) -> list[torch.Tensor]:
        """Apply ``filters[i]`` to skip i (identity when ``use_skip`` is false)."""
        self._check_skips(skips)
        if self.filters is None:
            return list(skips)
        return [f(s) for f, s in zip(self.filters, skips)]

    def decode_with_skips(self, z: torch.Tensor, skips: list[torch.Tensor], consume: bool = False) -> torch.Tensor:
        """Decode ``z`` (already divided by the scaling factor) with the RAW encoder skips.

        Filters each skip itself right before the decoder resnet that takes it (the 12 filtered skips
        never exist at once) and returns the image in [-1, 1] (not clamped), ``[B,3,8h,8w]``.
        ``consume=True`` (``skips`` a list the caller no longer needs): each entry is set to None as soon
        as its resnet has taken it, so its memory is freed while the decoder goes on.
        """
        self._check_skips(skips)
        if z.ndim != 4 or z.shape[1] != self.config.latent_channels:
            raise R2RUserError(
                f"Clear-VAE decode expected a latent [B,{self.config.latent_channels},h,w], got {tuple(z.shape)}."
            )
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        dec = self.decoder
        h = dec.conv_in(z)
        h = dec.mid_block(h, None)
        n = len(skips)
        k = 0
        for block in dec.up_blocks:
            for resnet in block.resnets:
                idx = n - 1 - k
                skip = skips[idx] if self.filters is None else self.filters[idx](skips[idx])
                if consume and isinstance(skips, list):
                    skips[idx] = None  # type: ignore[call-overload]  # released: the caller gave it up
                h = resnet(h, None, skip=skip)
                del skip
                k += 1
            if block.upsamplers is not None:
                for up in block.upsamplers:
                    h = up(h)
        return dec.conv_out(dec.conv_act(dec.conv_norm_out(h)))

    # ------------------------------------------------------------------ checks
    def _check_image(self, x: torch.Tensor) -> None:
        if not torch.is_tensor(x) or x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise R2RUserError(
                f"Clear-VAE expected an image tensor [B,{self.config.in_channels},H,W] in [-1,1], got "
                f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}."
            )
        f = 2 ** (len(self.config.block_out_channels) - 1)
        m = 8 * f
        h, w = x.shape[-2:]
        if h % m or w % m or h < m or w < m:
            raise R2RUserError(
                f"Clear-VAE needs image sides that are multiples of {m} px and at least {m} px, got {h}x{w}; "
                "resize or pad the image (r2r.imaging.prepare does this)."
            )

    def _check_skips(self, skips) -> None:
        if not isinstance(skips, (list, tuple)) or len(skips) != self.num_skips:
            raise R2RUserError(
                f"Clear-VAE expected {self.num_skips} encoder skips (from encode_with_skips), got "
                f"{len(skips) if isinstance(skips, (list, tuple)) else type(skips).__name__}."
            )
        for i, (s, c) in enumerate(zip(skips, self.skip_channels)):
            if s.ndim != 4 or s.shape[1] != c:
                raise R2RUserError(
                    f"Clear-VAE skip {i} should have {c} channels, got shape {tuple(s.shape)}; pass the skips "
                    "from encode_with_skips() of this model, in their original order."
                )
