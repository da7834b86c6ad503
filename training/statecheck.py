"""A checkpoint's ``trainer_state.json`` checked like a config, before anything is resumed from it.

Every field the trainer reads back is checked for its type and range. A hand-edited or damaged file stops
the run with an :class:`r2r.errors.R2RUserError` naming the file, the field, what was expected, what it
holds and the fix -- never a raw ``ValueError``/``KeyError`` or a run that starts from step -4.
"""

from __future__ import annotations

import math

from r2r.errors import R2RUserError

from .config import STAGES

#: counters: an integer >= the given minimum
_COUNTERS = {"global_step": 0, "micro_step": 0, "epoch": 0, "batch_in_epoch": 0, "seed": 0, "skipped_items": 0,
             "num_processes": 1}
_FIX = ("resume from another checkpoint (--resume <output>/checkpoints/checkpoint-NNNNNN), restore the file from a "
        "copy, or start over with --overwrite (the old run is moved aside)")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _kind(v) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(v), "a number" if isinstance(v, (int, float)) else type(v).__name__)


class _Checker:
    def __init__(self, path: str):
        self.path = path

    def fail(self, field: str, expected: str, value) -> None:
        shown = repr(value) if not isinstance(value, (dict, list)) else f"{_kind(value)} of {len(value)}"
        raise R2RUserError(f"checkpoint file {self.path}: field {field!r} should be {expected}, but it holds {shown} "
                           f"({_kind(value)}). The file was edited or damaged; {_FIX}")

    def need(self, d: dict, field: str, prefix: str = ""):
        if field not in d:
            raise R2RUserError(f"checkpoint file {self.path}: the field {prefix + field!r} is missing. The file was "
                               f"edited or damaged; {_FIX}")
        return d[field]

    def mapping(self, d: dict, field: str, prefix: str = "", optional: bool = False) -> dict | None:
        v = d.get(field) if optional else self.need(d, field, prefix)
        if v is None and optional:
            return None
        if not isinstance(v, dict):
            self.fail(prefix + field, "a mapping" + (" or null" if optional else ""), v)
        return v

    def integer(self, d: dict, field: str, minimum: int, prefix: str = "") -> int:
        v = self.need(d, field, prefix)
        if not _is_int(v) or v < minimum:
            self.fail(prefix + field, f"an integer >= {minimum}", v)
        return v


def validate_trainer_state(state, path: str) -> dict:
    """Check a parsed ``trainer_state.json`` (``path`` is named in the messages); returns it unchanged."""
    c = _Checker(path)
    if not isinstance(state, dict):
        c.fail("(top level)", "a mapping of fields", state)
    for field, minimum in _COUNTERS.items():
        c.integer(state, field, minimum)
    stage = c.need(state, "stage")
    if stage not in STAGES:
        c.fail("stage", f"one of {', '.join(STAGES)}", stage)
    history = c.need(state, "history")
    if not isinstance(history, list):
        c.fail("history", "a list of [step, loss] pairs", history)
    for i, item in enumerate(history):
        if not (isinstance(item, list) and len(item) == 2 and _is_int(item[0]) and item[0] >= 0
                and isinstance(item[1], (int, float)) and not isinstance(item[1], bool)):
            c.fail(f"history[{i}]", "a [step, loss] pair (an integer >= 0 and a number)", item)
    val = c.need(state, "val")
    if not isinstance(val, list) or not all(isinstance(v, dict) for v in val):
        c.fail("val", "a list of validation results (mappings)", val)
    c.mapping(state, "config")
    fp = c.mapping(state, "data_fingerprint")
    if fp:
        c.integer(fp, "items", 0, "data_fingerprint.")
        if not isinstance(c.need(fp, "sha256", "data_fingerprint."), str):
            c.fail("data_fingerprint.sha256", "a hash string", fp["sha256"])
    _check_optimizer(c, c.mapping(state, "optimizer"))
    sched = c.mapping(state, "lr_scheduler")
    c.integer(sched, "last_epoch", -1, "lr_scheduler.")
    base = c.need(sched, "base_lrs", "lr_scheduler.")
    if not isinstance(base, list) or not base or not all(_is_number(x) for x in base):
        c.fail("lr_scheduler.base_lrs", "a list of learning rates (numbers)", base)
    scaler = c.mapping(state, "grad_scaler", optional=True)
    if scaler:
        if not _is_number(c.need(scaler, "scale", "grad_scaler.")) or scaler["scale"] <= 0:
            c.fail("grad_scaler.scale", "a positive number", scaler["scale"])
        c.integer(scaler, "_growth_tracker", 0, "grad_scaler.")
    ema = c.mapping(state, "ema", optional=True)
    if ema:
        decay = c.need(ema, "decay", "ema.")
        if not _is_number(decay) or not 0 < decay < 1:
            c.fail("ema.decay", "a number in (0, 1)", decay)
        c.integer(ema, "optimization_step", 0, "ema.")
    return state


def _check_optimizer(c: _Checker, opt: dict) -> None:
    groups = c.need(opt, "param_groups", "optimizer.")
    if not isinstance(groups, list) or not groups:
        c.fail("optimizer.param_groups", "a non-empty list of parameter groups", groups)
    for i, g in enumerate(groups):
        key = f"optimizer.param_groups[{i}]"
        if not isinstance(g, dict):
            c.fail(key, "a mapping", g)
        for name in ("lr", "eps", "weight_decay"):
            if not _is_number(c.need(g, name, key + ".")) or g[name] < 0:
                c.fail(f"{key}.{name}", "a number >= 0", g[name])
        betas = c.need(g, "betas", key + ".")
        if not (isinstance(betas, list) and len(betas) == 2 and all(_is_number(b) and 0 <= b < 1 for b in betas)):
            c.fail(f"{key}.betas", "two numbers in [0, 1)", betas)
        params = c.need(g, "params", key + ".")
        if not isinstance(params, list) or not all(_is_int(p) and p >= 0 for p in params):
            c.fail(f"{key}.params", "a list of parameter indices (integers >= 0)", params)
    state = c.need(opt, "state", "optimizer.")
    if not isinstance(state, dict):
        c.fail("optimizer.state", "a mapping of per-parameter values", state)
    for idx, values in state.items():
        if not str(idx).isdigit() or not isinstance(values, dict):
            c.fail(f"optimizer.state[{idx!r}]", "a parameter index mapped to its values", values)
