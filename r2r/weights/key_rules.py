"""The SD-format <-> diffusers key rules of the three R2R networks, written once, for both directions.

A :class:`KeyRule` pairs an SD-format key template with a diffusers key template, e.g.
``"encoder.down.{i}.block.{j}.{rest}"`` and ``"encoder.down_blocks.{i}.resnets.{j}.{rest}"``. A field
``{name}`` matches digits, ``{name:regex}`` the regex (``part``, ``wb`` and ``rest`` have their own
defaults); ``fields`` maps a field's value from one side to the other (a pair of functions, SD ->
diffusers and back, given the network's geometry), and ``index`` does it for rules whose indices
combine (``input_blocks.{n}`` <-> ``down_blocks.{level}.resnets.{j}``). :func:`translate` runs a rule
list in either direction; a function returning None means "this rule does not apply".
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field

_DEFAULTS = {"part": r"encoder|decoder", "wb": r"weight|bias", "rest": r".+"}
_DIGITS = r"\d+"
_FIELD = re.compile(r"\{(\w+)(?::([^}]+))?\}")

FieldMap = Callable[[str, dict], "str | None"]
IndexMap = Callable[[dict, dict], "dict | None"]


@functools.cache
def _compile(template: str) -> tuple[re.Pattern, str]:
    """Template -> (regex with named groups, output template with plain ``{name}`` fields)."""
    pattern, out, pos = "", "", 0
    for m in _FIELD.finditer(template):
        regex = m[2] or _DEFAULTS.get(m[1], _DIGITS)
        pattern += re.escape(template[pos:m.start()]) + f"(?P<{m[1]}>{regex})"
        out += template[pos:m.start()] + "{" + m[1] + "}"
        pos = m.end()
    return re.compile(pattern + re.escape(template[pos:])), out + template[pos:]


@dataclass(frozen=True)
class KeyRule:
    sd: str
    diffusers: str
    #: field -> (SD value -> diffusers value, diffusers value -> SD value), each given the geometry
    fields: dict[str, tuple[FieldMap, FieldMap]] = field(default_factory=dict)
    #: (SD fields -> diffusers fields, diffusers fields -> SD fields) for indices that combine
    index: tuple[IndexMap, IndexMap] | None = None

    def apply(self, key: str, to_diffusers: bool, geometry: dict) -> str | None:
        src, dst = (self.sd, self.diffusers) if to_diffusers else (self.diffusers, self.sd)
        m = _compile(src)[0].fullmatch(key)
        if m is None:
            return None
        values: dict = m.groupdict()
        side = 0 if to_diffusers else 1
        if self.index is not None:
            combined = self.index[side](values, geometry)
            if combined is None:
                return None
            values = combined
        for name, maps in self.fields.items():
            mapped = maps[side](values[name], geometry)
            if mapped is None:
                return None
            values[name] = mapped
        return _compile(dst)[1].format(**values)


def translate(key: str, rules: list[KeyRule], to_diffusers: bool, geometry: dict) -> str | None:
    """``key`` through the first rule that applies (None: no rule does)."""
    for rule in rules:
        out = rule.apply(key, to_diffusers, geometry)
        if out is not None:
            return out
    return None


def renames(pairs) -> tuple[FieldMap, FieldMap]:
    """A field renamed by prefix, both ways (None when no pair applies)."""
    def fwd(v, g):
        return next((b + v[len(a):] for a, b in pairs if v.startswith(a)), None)

    def inv(v, g):
        return next((a + v[len(b):] for a, b in pairs if v.startswith(b)), None)

    return fwd, inv


def shift(delta: int) -> tuple[FieldMap, FieldMap]:
    return (lambda v, g: str(int(v) + delta)), (lambda v, g: str(int(v) - delta))


def table(mapping: dict) -> tuple[FieldMap, FieldMap]:
    inverse = {b: a for a, b in mapping.items()}
    return (lambda v, g: mapping.get(v)), (lambda v, g: inverse.get(v))


def same(template: str) -> KeyRule:
    return KeyRule(template, template)


# ----------------------------------------------------------------------------------------------- Clear-VAE
def _vae_resnet() -> tuple[FieldMap, FieldMap]:
    def fwd(v, g):
        return v.replace("nin_shortcut", "conv_shortcut").replace("lora.", "skip_connect.")

    def inv(v, g):
        return v.replace("conv_shortcut", "nin_shortcut").replace("skip_connect.", "lora.")

    return fwd, inv


_FLIP = (lambda v, g: str(g["num_levels"] - 1 - int(v)), lambda v, g: str(g["num_levels"] - 1 - int(v)))
VAE_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}

VAE_RULES = [
    same("{head:filters|quant_conv|post_quant_conv}.{rest}"),
    same("{part}.{conv:conv_in|conv_out}.{rest}"),
    KeyRule("{part}.norm_out.{rest}", "{part}.conv_norm_out.{rest}"),
    KeyRule("{part}.mid.block_{i:[12]}.{rest}", "{part}.mid_block.resnets.{i:[01]}.{rest}",
            {"i": shift(-1), "rest": _vae_resnet()}),
    KeyRule("{part}.mid.attn_1.{name:norm|q|k|v|proj_out}.{wb}",
            "{part}.mid_block.attentions.0.{name:group_norm|to_q|to_k|to_v|to_out\\.0}.{wb}",
            {"name": table(VAE_ATTN)}),
    KeyRule("encoder.down.{i}.block.{j}.{rest}", "encoder.down_blocks.{i}.resnets.{j}.{rest}",
            {"rest": _vae_resnet()}),
    KeyRule("encoder.down.{i}.downsample.conv.{rest}", "encoder.down_blocks.{i}.downsamplers.0.conv.{rest}"),
    KeyRule("decoder.up.{i}.block.{j}.{rest}", "decoder.up_blocks.{i}.resnets.{j}.{rest}",
            {"i": _FLIP, "rest": _vae_resnet()}),
    KeyRule("decoder.up.{i}.upsample.conv.{rest}", "decoder.up_blocks.{i}.upsamplers.0.conv.{rest}", {"i": _FLIP}),
]

# ----------------------------------------------------------------------------------------------- U-Net / controller
LDM_RESNET = (("in_layers.0.", "norm1."), ("in_layers.2.", "conv1."), ("emb_layers.1.", "time_emb_proj."),
              ("out_layers.0.", "norm2."), ("out_layers.3.", "conv2."), ("skip_connection.", "conv_shortcut."))


def _blocks(first: int, want_last: bool | None) -> tuple[IndexMap, IndexMap]:
    """``{n}`` (an input/output block index) <-> ``{level}`` + ``{j}`` with ``L + 1`` blocks a level, the first
    at ``first``; ``want_last``: only the level's last block (its down/upsampler: True), only the others
    (False), any (None)."""
    def fwd(f, g):
        level, j = divmod(int(f["n"]) - first, g["L"] + 1)
        if level < 0 or (want_last is not None and (j == g["L"]) != want_last):
            return None
        return {**f, "level": str(level), "j": str(j)}

    def inv(f, g):
        j = g["L"] if want_last else int(f.get("j", 0))
        return {**f, "n": str(int(f["level"]) * (g["L"] + 1) + j + first)}

    return fwd, inv


def _upsampler_sub() -> tuple[IndexMap, IndexMap]:
    fwd_blocks, inv_blocks = _blocks(0, True)

    def inv(f, g):
        f = inv_blocks(f, g)
        return {**f, "sub": "2" if int(f["level"]) in g["levels"] else "1"}

    return fwd_blocks, inv


def _hint_conv() -> tuple[FieldMap, FieldMap]:
    def fwd(v, g):
        i = int(v)
        if i % 2:
            return None  # the SiLU slots hold no weights
        conv = i // 2
        return "conv_in" if conv == 0 else "conv_out" if conv == g["hint_layers"] - 1 else f"blocks.{conv - 1}"

    def inv(v, g):
        conv = 0 if v == "conv_in" else g["hint_layers"] - 1 if v == "conv_out" else int(v.split(".")[1]) + 1
        return str(2 * conv)

    return fwd, inv


DOWN_HALF_RULES = [  # shared by the U-Net and the controller
    KeyRule("time_embed.{i:[02]}.{wb}", "time_embedding.linear_{i:[12]}.{wb}", {"i": table({"0": "1", "2": "2"})}),
    KeyRule("input_blocks.0.0.{wb}", "conv_in.{wb}"),
    KeyRule("input_blocks.{n}.0.op.{wb}", "down_blocks.{level}.downsamplers.0.conv.{wb}", index=_blocks(1, True)),
    KeyRule("input_blocks.{n}.0.{rest}", "down_blocks.{level}.resnets.{j}.{rest}", {"rest": renames(LDM_RESNET)},
            index=_blocks(1, False)),
    KeyRule("input_blocks.{n}.1.{rest}", "down_blocks.{level}.attentions.{j}.{rest}", index=_blocks(1, False)),
    KeyRule("middle_block.1.{rest}", "mid_block.attentions.0.{rest}"),
    KeyRule("middle_block.{i:[02]}.{rest}", "mid_block.resnets.{i:[01]}.{rest}",
            {"i": table({"0": "0", "2": "1"}), "rest": renames(LDM_RESNET)}),
]

UNET_RULES = DOWN_HALF_RULES + [
    KeyRule("out.{i:[02]}.{wb}", "{i:conv_norm_out|conv_out}.{wb}", {"i": table({"0": "conv_norm_out",
                                                                                "2": "conv_out"})}),
    KeyRule("output_blocks.{n}.0.{rest}", "up_blocks.{level}.resnets.{j}.{rest}", {"rest": renames(LDM_RESNET)},
            index=_blocks(0, None)),
    KeyRule("output_blocks.{n}.{sub:[12]}.conv.{wb}", "up_blocks.{level}.upsamplers.0.conv.{wb}",
            index=_upsampler_sub()),
    KeyRule("output_blocks.{n}.1.{rest}", "up_blocks.{level}.attentions.{j}.{rest}", index=_blocks(0, None)),
]

CONTROLLER_RULES = DOWN_HALF_RULES + [
    KeyRule("input_hint_block.{i}.{wb}", "controlnet_cond_embedding.{i:conv_in|conv_out|blocks\\.\\d+}.{wb}",
            {"i": _hint_conv()}),
    KeyRule("zero_convs.{i}.0.{wb}", "controlnet_down_blocks.{i}.{wb}"),
    KeyRule("middle_block_out.0.{wb}", "controlnet_mid_block.{wb}"),
    same("PCCAs.{i}.{p:conv1|conv2|mlp\\.0|mlp\\.2}.{wb}"),
]
