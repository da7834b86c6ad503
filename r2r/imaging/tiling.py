"""Tiled (banded) Clear-VAE encode / decode with consistent skips, for big images.

Why not classic overlapping tiles: every Clear-VAE resnet starts with a GroupNorm whose statistics are
taken over the *whole* feature map (per-tile statistics give seams and colour shifts), and the decoder's
12 skips come from the encoder at six resolutions, so both passes must agree on every tile edge.

Method -- operator-level tiling with exact global GroupNorm:

* the network runs layer by layer; each convolution is computed in horizontal *bands* of output rows
  (full width), reading only the input rows it needs plus a halo (1 row for the 3x3 convs, the stride-2
  downsampler's bottom padding row, nearest-2x upsampling rows, 8 rows for the skip filters' 15x15
  Gaussian + 3x3 kernels), with the zero/reflect padding the untiled layer applies at the border;
* every GroupNorm is two passes: per-band channel statistics merged exactly over all bands
  (parallel-variance formula in float32), then each band normalised (+ SiLU) on the fly right before
  the convolution that consumes it, so normalised/activated tensors never exist at full size;
* the decoder filters each skip band by band as it is consumed (the filtered skips are never
  materialised) and can drop each raw skip right after its resnet (``consume_skips``);
* the latent-resolution parts (mid-blocks with their attention, quant convs) run as the stock modules.

The result is the untiled computation re-associated, not an approximation (differences are float
rounding, ~1e-6): no seams. It saves every full-size temporary (GroupNorm/SiLU outputs, padded copies,
filtered skips, the [s, s] channel-tiled skips); it still holds the layer's input/output maps and the
raw skips. See docs/performance.md.

Entry points: :func:`tiled_encode_with_skips`, :func:`tiled_decode_with_skips`, :func:`estimate_vae_memory`,
:func:`should_tile` and the wrappers :func:`encode_with_skips_auto` / :func:`decode_with_skips_auto`
(banded above a memory budget, and as the out-of-memory fallback).
"""

from __future__ import annotations

import logging
import os

from ..errors import R2RUserError

log = logging.getLogger(__name__)

# default memory budget for the untiled Clear-VAE (bytes); R2R_VAE_MEMORY_BUDGET_MB overrides
DEFAULT_BUDGET_BYTES = 6 * 1024**3
# elements of one band's largest temporary (about 64 MB in float32)
DEFAULT_BAND_ELEMENTS = 1 << 24
_FILTER_HALO = 8  # 15x15 Gaussian (reflect 7) and 3x3 kernels of AdaptiveFilters


def _torch():
    import torch

    return torch


# ----------------------------------------------------------------------------- band helpers
def _bands(n_rows: int, rows: int):
    r = 0
    while r < n_rows:
        yield r, min(n_rows, r + rows)
        r += rows


def _band_rows(channels: int, width: int, batch: int, band_elements: int) -> int:
    return max(8, band_elements // max(1, channels * width * batch))


def _gn_scale_shift(x, gn, rows: int):
    """Global GroupNorm statistics of ``x`` -> per-channel (scale, shift) so that
    ``gn(x) == x * scale + shift``.

    Band by band: per-channel mean/variance of each band (``torch.var_mean`` in float32, no copy of
    the band), merged in float32 with the parallel-variance formula ``var = mean_i(var_i + (mean_i -
    mean)^2)`` (no cancellation), then channels -> groups. No float64 anywhere (Apple's MPS has none).
    """
    torch = _torch()
    b, c = x.shape[:2]
    g = gn.num_groups
    if c % g:
        raise R2RUserError(f"GroupNorm with {g} groups cannot normalise {c} channels; check the VAE config.")
    acc = torch.float32
    means, vars_, counts = [], [], []
    for r0, r1 in _bands(x.shape[2], rows):
        v, m = torch.var_mean(x[:, :, r0:r1].to(acc), dim=(2, 3), correction=0)
        means.append(m)
        vars_.append(v)
        counts.append(float(r1 - r0))
    n = torch.tensor(counts, dtype=acc, device=x.device)[:, None, None] / sum(counts)
    m_i = torch.stack(means)  # [bands, B, C]
    v_i = torch.stack(vars_)
    mean_c = (n * m_i).sum(0)
    var_c = (n * (v_i + (m_i - mean_c) ** 2)).sum(0)
    mean_cg = mean_c.view(b, g, c // g)
    mean_g = mean_cg.mean(-1, keepdim=True)
    var_g = (var_c.view(b, g, c // g) + (mean_cg - mean_g) ** 2).mean(-1, keepdim=True)
    rstd_c = torch.rsqrt(var_g + gn.eps).expand(b, g, c // g).reshape(b, c)
    mean_gc = mean_g.expand(b, g, c // g).reshape(b, c)
    w = gn.weight.to(acc) if gn.weight is not None else torch.ones(c, dtype=acc, device=x.device)
    bias = gn.bias.to(acc) if gn.bias is not None else torch.zeros(c, dtype=acc, device=x.device)
    scale = rstd_c * w[None]
    shift = bias[None] - mean_gc * scale
    return (scale.to(x.dtype)[:, :, None, None], shift.to(x.dtype)[:, :, None, None])


def _norm_silu_rows(x, scale, shift):
    """rows-getter: SiLU(GroupNorm(x)) for rows [a, b), computed on demand."""
    torch = _torch()

    def get(a, b):
        t = torch.addcmul(shift, x[:, :, a:b], scale)
        return torch.nn.functional.silu(t, inplace=True)

    return get


def _raw_rows(x):
    return lambda a, b: x[:, :, a:b]


def _upsampled_rows(x):
    """rows-getter for the nearest-2x upsampling of ``x`` (never built at full size)."""
    torch = _torch()

    def get(a, b):
        i0, i1 = a // 2, (b - 1) // 2 + 1
        t = torch.nn.functional.interpolate(x[:, :, i0:i1], scale_factor=2.0, mode="nearest")
        return t[:, :, a - 2 * i0: a - 2 * i0 + (b - a)]

    return get


def _is_cl(x) -> bool:
    torch = _torch()
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _empty_like_fmt(like, channels, h, w, dtype=None):
    torch = _torch()
    fmt = torch.channels_last if _is_cl(like) else torch.contiguous_format
    return torch.empty(like.shape[0], channels, h, w, dtype=dtype or like.dtype, device=like.device,
                       memory_format=fmt)


def _conv_band(conv, rows_fn, h_in: int, r0: int, r1: int, pads):
    """Output rows [r0, r1) of ``conv`` applied to the (virtual) input given by ``rows_fn``.

    ``pads`` = (top, bottom, left, right) zero padding the untiled layer applies. Symmetric
    horizontal padding is left to the convolution itself and the memory format (channels_last or
    not) of the band is preserved, so oneDNN never reorders between bands.
    """
    torch = _torch()
    F = torch.nn.functional
    if getattr(conv, "padding_mode", "zeros") != "zeros" or conv.groups != 1 or conv.dilation != (1, 1):
        raise R2RUserError("tiled VAE supports plain zero-padded convolutions only; this VAE config is not supported.")
    k = conv.kernel_size[0]
    s = conv.stride[0]
    top, bottom, left, right = pads
    a = r0 * s - top
    b = (r1 - 1) * s - top + k
    a_c, b_c = max(a, 0), min(b, h_in)
    t = rows_fn(a_c, b_c)
    cl = _is_cl(t)
    pad_top, pad_bottom = a_c - a, b - b_c
    hpad = (0, 0) if left == right else (left, right)
    if pad_top or pad_bottom or hpad != (0, 0):
        t = F.pad(t, (*hpad, pad_top, pad_bottom))
        if cl:
            t = t.contiguous(memory_format=torch.channels_last)
    return F.conv2d(t, conv.weight, conv.bias, stride=conv.stride, padding=(0, left if left == right else 0))


def _conv_full(conv, rows_fn, x_shape, pads, rows: int, dtype, device, like=None):
    torch = _torch()
    b, _, h_in, w_in = x_shape
    k, s = conv.kernel_size[0], conv.stride[0]
    top, bottom, left, right = pads
    h_out = (h_in + top + bottom - k) // s + 1
    w_out = (w_in + left + right - conv.kernel_size[1]) // conv.stride[1] + 1
    if like is not None:
        out = _empty_like_fmt(like, conv.out_channels, h_out, w_out, dtype)
    else:
        out = torch.empty(b, conv.out_channels, h_out, w_out, dtype=dtype, device=device)
    for r0, r1 in _bands(h_out, rows):
        out[:, :, r0:r1] = _conv_band(conv, rows_fn, h_in, r0, r1, pads)
    return out


def _pads_same(conv):
    p = conv.padding
    if isinstance(p, str):
        raise R2RUserError("tiled VAE needs numeric conv padding; this VAE config is not supported.")
    return (p[0], p[0], p[1], p[1])


def _resnet(res, x, rows_for, skip_rows=None, inplace: bool = False):
    """Banded ResnetBlock2D (no time embedding), optionally with a Clear-VAE decoder skip."""
    if getattr(res, "time_emb_proj", None) is not None or getattr(res, "upsample", None) is not None \
            or getattr(res, "downsample", None) is not None:
        raise R2RUserError("tiled VAE: unexpected resnet type (time embedding or resampling); unsupported config.")
    b, c_in, h, w = x.shape
    c_out = res.conv1.out_channels
    rows = rows_for(max(c_in, c_out), w)
    sc1, sh1 = _gn_scale_shift(x, res.norm1, rows)
    act1 = _norm_silu_rows(x, sc1, sh1)
    hid = _empty_like_fmt(x, c_out, h, w)
    pads = _pads_same(res.conv1)
    for r0, r1 in _bands(h, rows):
        y = _conv_band(res.conv1, act1, h, r0, r1, pads)
        if skip_rows is not None:
            y += res.skip_connect(act1(r0, r1) + skip_rows(r0, r1, c_in))
        hid[:, :, r0:r1] = y
        del y
    sc2, sh2 = _gn_scale_shift(hid, res.norm2, rows)
    act2 = _norm_silu_rows(hid, sc2, sh2)
    shortcut = res.conv_shortcut
    out = x if (inplace and shortcut is None) else _empty_like_fmt(x, c_out, h, w)
    pads2 = _pads_same(res.conv2)
    osf = res.output_scale_factor
    for r0, r1 in _bands(h, rows):
        y = _conv_band(res.conv2, act2, h, r0, r1, pads2)
        xs = x[:, :, r0:r1]
        y += shortcut(xs) if shortcut is not None else xs
        if osf != 1.0:
            y /= osf
        out[:, :, r0:r1] = y
        del y
    return out


def _check_vae(vae) -> None:
    for name in ("encoder", "decoder"):
        if not hasattr(vae, name):
            raise R2RUserError(
                f"tiled VAE expects a Clear-VAE (r2r.models.ClearVAE); got {type(vae).__name__} without .{name}."
            )
    if vae.training:
        raise R2RUserError("tiled VAE runs in inference mode only; call vae.eval() first.")


def _rows_for(batch: int, band_elements: int):
    return lambda channels, width: _band_rows(channels, width, batch, band_elements)


# ----------------------------------------------------------------------------- encode
def tiled_encode_with_skips(vae, x_pm1, *, band_elements: int = DEFAULT_BAND_ELEMENTS):
    """Banded ``vae.encode_with_skips(x_pm1)``: same (posterior, 12 raw skips), less memory.

    ``x_pm1``: ``[B,3,H,W]`` in [-1, 1], sides multiples of 64. ``band_elements`` bounds the
    size of one band's temporaries (elements; smaller = less memory, more Python overhead).
    """
    torch = _torch()
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    _check_vae(vae)
    if hasattr(vae, "_check_image"):
        vae._check_image(x_pm1)
    rows_for = _rows_for(x_pm1.shape[0], band_elements)
    enc = vae.encoder
    with torch.no_grad():
        x = x_pm1.to(dtype=enc.conv_in.weight.dtype)
        h = _conv_full(enc.conv_in, _raw_rows(x), x.shape, _pads_same(enc.conv_in),
                       rows_for(enc.conv_in.out_channels, x.shape[3]), x.dtype, x.device, like=x)
        skips = [h]
        for block in enc.down_blocks:
            for res in block.resnets:
                h = _resnet(res, h, rows_for)
                skips.append(h)
            if block.downsamplers is not None:
                for down in block.downsamplers:
                    if getattr(down, "norm", None) is not None or not getattr(down, "use_conv", True):
                        raise R2RUserError("tiled VAE: unsupported downsampler (norm or pooling); unsupported config.")
                    conv = down.conv
                    pads = (0, 1, 0, 1) if down.padding == 0 else (down.padding,) * 4
                    h = _conv_full(conv, _raw_rows(h), h.shape, pads,
                                   rows_for(conv.out_channels * 2, h.shape[3]), h.dtype, h.device, like=h)
                skips.append(h)
        # latent-resolution tail: stock modules (64x fewer pixels than the image)
        m = enc.mid_block(h)
        m = enc.conv_out(enc.conv_act(enc.conv_norm_out(m)))
        if vae.quant_conv is not None:
            m = vae.quant_conv(m)
    return DiagonalGaussianDistribution(m), skips


# ----------------------------------------------------------------------------- decode
def tiled_decode_with_skips(vae, z, skips, *, band_elements: int = DEFAULT_BAND_ELEMENTS,
                            consume_skips: bool = False):
    """Banded ``vae.decode_with_skips(z, skips)`` (filters the raw skips itself, band by band).

    ``z``: latent already divided by the scaling factor; ``skips``: the 12 RAW skips from
    (tiled_)encode_with_skips. Returns ``[B,3,8h,8w]`` in [-1,1] (not clamped). With
    ``consume_skips=True`` and a list, each entry is set to None right after use so its memory
    can be freed during decoding (the caller must not need them afterwards).
    """
    torch = _torch()
    _check_vae(vae)
    if hasattr(vae, "_check_skips"):
        vae._check_skips(skips)
    lc = vae.config.latent_channels
    if not torch.is_tensor(z) or z.ndim != 4 or z.shape[1] != lc:
        raise R2RUserError(
            f"Clear-VAE decode expected a latent [B,{lc},h,w]; got "
            f"{tuple(z.shape) if torch.is_tensor(z) else type(z).__name__}."
        )
    exp = (z.shape[2] * 8, z.shape[3] * 8)
    if tuple(skips[0].shape[-2:]) != exp:
        raise R2RUserError(
            f"Clear-VAE skip 0 is {tuple(skips[0].shape[-2:])} but the latent {tuple(z.shape[-2:])} decodes to "
            f"{exp}; encode the composite at the same size as the latent (latent size = image size / 8)."
        )
    rows_for = _rows_for(z.shape[0], band_elements)
    dec = vae.decoder
    filters = getattr(vae, "filters", None)
    n = len(skips)
    dtype = dec.conv_in.weight.dtype

    def skip_getter(idx):
        raw = skips[idx]
        filt = filters[idx] if filters is not None else None
        hs = raw.shape[2]

        def get(r0, r1, c_target):
            if filt is None:
                s = raw[:, :, r0:r1]
            else:
                a, b = max(0, r0 - _FILTER_HALO), min(hs, r1 + _FILTER_HALO)
                s = filt(raw[:, :, a:b])[:, :, r0 - a: r1 - a]
            s = s.to(dtype)
            if s.shape[1] != c_target:
                if c_target != 2 * s.shape[1]:
                    raise R2RUserError(
                        f"Clear-VAE skip {idx} has {s.shape[1]} channels but the decoder expects {c_target} "
                        "(or half); pass the skips from encode_with_skips() of the same model, in order."
                    )
                s = torch.cat([s, s], dim=1)
            return s

        return get

    with torch.no_grad():
        zz = z.to(dtype)
        if vae.post_quant_conv is not None:
            zz = vae.post_quant_conv(zz)
        h = dec.conv_in(zz)
        h = dec.mid_block(h, None)
        owned = True  # h is ours (fresh tensor), may be overwritten in place
        k = 0
        for block in dec.up_blocks:
            for res in block.resnets:
                idx = n - 1 - k
                if tuple(skips[idx].shape[-2:]) != tuple(h.shape[-2:]):
                    raise R2RUserError(
                        f"Clear-VAE skip {idx} of size {tuple(skips[idx].shape[-2:])} does not match the decoder "
                        f"feature size {tuple(h.shape[-2:])}; use the skips of the same image."
                    )
                h = _resnet(res, h, rows_for, skip_rows=skip_getter(idx), inplace=owned)
                if consume_skips and isinstance(skips, list):
                    skips[idx] = None
                k += 1
            if block.upsamplers is not None:
                for up in block.upsamplers:
                    conv = getattr(up, "conv", None)
                    if conv is None or getattr(up, "norm", None) is not None or getattr(up, "use_conv_transpose", False):
                        raise R2RUserError("tiled VAE: unsupported upsampler; unsupported config.")
                    shape = (h.shape[0], h.shape[1], h.shape[2] * 2, h.shape[3] * 2)
                    h = _conv_full(conv, _upsampled_rows(h), shape, _pads_same(conv),
                                   rows_for(conv.out_channels, shape[3]), h.dtype, h.device, like=h)
        rows = rows_for(h.shape[1], h.shape[3])
        sc, sh = _gn_scale_shift(h, dec.conv_norm_out, rows)
        act = _norm_silu_rows(h, sc, sh)
        out = _conv_full(dec.conv_out, act, h.shape, _pads_same(dec.conv_out), rows, h.dtype, h.device, like=h)
    return out


# ----------------------------------------------------------------------------- memory model
def estimate_vae_memory(height: int, width: int, *, batch: int = 1, dtype=None,
                        block_out_channels=(128, 256, 512, 512)) -> dict:
    """Rough activation-memory model (bytes) of the UNTILED Clear-VAE encode_with_skips and
    decode_with_skips at ``height x width`` (weights not included).

    Calibrated against measured CPU peaks (docs/performance.md, benchmarks/decode_memory.py): the
    untiled encoder keeps the 12 skips plus ~4 full-size temporaries of the widest full-resolution
    layer; the untiled decoder holds the 12 raw skips (filtered one at a time, each right before its
    resnet) and ~6 temporaries of its widest full-resolution layer (the 2x-upsampled input of the
    last up block).
    """
    torch = _torch()
    es = torch.empty((), dtype=dtype or torch.float32).element_size()
    px = height * width * batch
    ch = list(block_out_channels)
    # skip element count: conv_in + per block (layers resnets + downsampler except last)
    skip = ch[0] * px
    scale = 1
    for i, c in enumerate(ch):
        skip += 2 * c * px / (scale * scale)
        if i < len(ch) - 1:
            scale *= 2
            skip += c * px / (scale * scale)
    enc = skip + 4 * ch[0] * px
    dec = skip + 6 * ch[1] * px
    return {"encode": int(enc * es), "decode": int(dec * es), "skips": int(skip * es)}


def memory_budget_bytes(default: int = DEFAULT_BUDGET_BYTES) -> int:
    """The budget above which the VAE is tiled: env R2R_VAE_MEMORY_BUDGET_MB or ``default``."""
    env = os.environ.get("R2R_VAE_MEMORY_BUDGET_MB")
    if env:
        try:
            mb = float(env)
        except ValueError as e:
            raise R2RUserError(
                f"R2R_VAE_MEMORY_BUDGET_MB must be a number of megabytes; got {env!r}. Example: 4096."
            ) from e
        if mb <= 0:
            raise R2RUserError(f"R2R_VAE_MEMORY_BUDGET_MB must be > 0; got {env!r}.")
        return int(mb * 1024**2)
    return default


def should_tile(height: int, width: int, *, batch: int = 1, dtype=None, budget_bytes: int | None = None,
                which: str = "decode", block_out_channels=(128, 256, 512, 512)) -> bool:
    """True when the untiled Clear-VAE pass ``which`` ('encode'/'decode') would exceed the budget."""
    if which not in ("encode", "decode"):
        raise R2RUserError(f"should_tile: which must be 'encode' or 'decode'; got {which!r}.")
    budget = memory_budget_bytes() if budget_bytes is None else budget_bytes
    est = estimate_vae_memory(height, width, batch=batch, dtype=dtype, block_out_channels=block_out_channels)
    return est[which] > budget


def _is_oom(err: BaseException) -> bool:
    torch = _torch()
    if isinstance(err, getattr(torch, "OutOfMemoryError", ())):
        return True
    msg = str(err).lower()
    return isinstance(err, (RuntimeError, MemoryError)) and (
        "out of memory" in msg or "can't allocate memory" in msg or "not enough memory" in msg
        or isinstance(err, MemoryError)
    )


def _empty_cache(device) -> None:
    torch = _torch()
    if getattr(device, "type", "cpu") == "cuda":
        torch.cuda.empty_cache()


def encode_with_skips_auto(vae, x_pm1, *, tiled: bool | None = None, budget_bytes: int | None = None):
    """``encode_with_skips`` that tiles above the memory budget (``tiled=None``) and falls back to
    tiling when the untiled pass runs out of memory. ``tiled=True/False`` forces the choice."""
    torch = _torch()
    b, _, h, w = x_pm1.shape
    if tiled is None:
        tiled = should_tile(h, w, batch=b, dtype=x_pm1.dtype, budget_bytes=budget_bytes, which="encode",
                            block_out_channels=tuple(vae.config.block_out_channels))
    if tiled:
        log.info("Clear-VAE encode %dx%d in bands (above the memory budget)", w, h)
        return tiled_encode_with_skips(vae, x_pm1)
    try:
        with torch.no_grad():
            return vae.encode_with_skips(x_pm1)
    except (RuntimeError, MemoryError) as e:
        if not _is_oom(e):
            raise
    log.warning("Clear-VAE encode %dx%d ran out of memory; running it again in bands (same result)", w, h)
    _empty_cache(x_pm1.device)
    return tiled_encode_with_skips(vae, x_pm1)


class SkipsConsumedError(RuntimeError):
    """The untiled decode ran out of memory after it had released some of the skips it was given to
    consume, so it cannot run again in bands: the caller encodes the composite again (same skips)."""


def decode_with_skips_auto(vae, z, skips, *, tiled: bool | None = None, budget_bytes: int | None = None,
                           consume_skips: bool = False):
    """``decode_with_skips`` that tiles above the memory budget and as the out-of-memory fallback.

    ``consume_skips=True`` (``skips`` a list the caller no longer needs): every skip is released as soon
    as the decoder has used it, banded or not. When the untiled pass runs out of memory after releasing
    some, :class:`SkipsConsumedError` is raised (its cause is the out-of-memory error)."""
    torch = _torch()
    b, _, h, w = z.shape
    if tiled is None:
        tiled = should_tile(h * 8, w * 8, batch=b, dtype=z.dtype, budget_bytes=budget_bytes, which="decode",
                            block_out_channels=tuple(vae.config.block_out_channels))
    if not tiled:
        try:
            with torch.no_grad():
                return vae.decode_with_skips(z, skips, consume=consume_skips)
        except (RuntimeError, MemoryError) as e:
            if not _is_oom(e):
                raise
            if any(s is None for s in skips):
                _empty_cache(z.device)
                raise SkipsConsumedError(f"Clear-VAE decode {w * 8}x{h * 8} ran out of memory after releasing "
                                         "skips") from e
        log.warning("Clear-VAE decode %dx%d ran out of memory; running it again in bands (same result)", w * 8, h * 8)
        _empty_cache(z.device)
    else:
        log.info("Clear-VAE decode %dx%d in bands (above the memory budget)", w * 8, h * 8)
    return tiled_decode_with_skips(vae, z, skips, consume_skips=consume_skips)
