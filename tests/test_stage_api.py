"""The stage API's rules (issue "One stage API"): callers only call the pipeline's stages, the official
random-number order is written once, each user-facing limit is defined once, no float64 on the compute
device, and every dotted ``r2r.*`` name in the docs resolves."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# what only r2r/pipeline may do: build timesteps / posteriors / noise, call the sampling module
FORBIDDEN_IN_CALLERS = re.compile(
    r"sampling\.(set_timesteps|denoise|controller_residuals|draw_start|make_scheduler)|DiagonalGaussianDistribution"
    r"|torch\.randn(_like)?\(|randn_tensor|\.manual_seed\(|posterior\.sample\(")


def _code_lines(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = set()
    for node in ast.walk(tree):  # docstrings may name these things
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)) and node.body and \
                isinstance(node.body[0], ast.Expr) and isinstance(getattr(node.body[0], "value", None), ast.Constant):
            docs.update(range(node.body[0].lineno, node.body[0].end_lineno + 1))
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if i not in docs and not line.lstrip().startswith("#"):
            yield i, line


@pytest.mark.parametrize("folder", ["nodes", "benchmarks", "r2r/cli"])
def test_callers_build_no_scheduler_posterior_or_noise(folder):
    """nodes/, benchmarks/ and the CLI call the stages. Random numbers that are not sampling noise (random
    weights, synthetic training batches) carry a "not sampling noise" comment on their line."""
    hits = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for i, line in _code_lines(path):
            code = line.split("#", 1)[0]
            if FORBIDDEN_IN_CALLERS.search(code) and "not sampling noise" not in line:
                hits.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert hits == [], "callers must use the pipeline's stages:\n" + "\n".join(hits)


def test_one_place_holds_the_official_random_number_order():
    """Inside r2r, only r2r/pipeline/sampling.py draws sampling noise (noise sources only make generators)."""
    draws = re.compile(r"randn_tensor\(|torch\.randn(_like)?\(|\.sample\(generator")
    owners = set()
    for path in sorted((ROOT / "r2r").rglob("*.py")):
        for _, line in _code_lines(path):
            if draws.search(line.split("#", 1)[0]):
                owners.add(str(path.relative_to(ROOT)))
    assert owners == {"r2r/pipeline/sampling.py"}, owners


def test_each_limit_is_defined_once():
    """The CLI, the node schemas and the pipeline accept exactly the table's range."""
    from comfy_pack import load_pack, node_classes

    from r2r import params
    from r2r.cli import build_parser
    from r2r.errors import R2RUserError

    load_pack()
    nodes = node_classes()
    widgets = {("R2RSampler", "steps"): "steps", ("R2RSampler", "seed"): "seed",
               ("R2RMACAControllerApplyV2", "strength"): "strength", ("R2RHarmonize", "strength"): "strength",
               ("R2RConditioning", "strength"): "strength", ("R2RClearVAEEncode", "max_side"): "max_side",
               ("R2RClearVAEDecodeV2", "feather"): "feather", ("R2RConditioning", "composite_seed"): "seed",
               ("R2RHarmonize", "steps"): "steps", ("R2RSampler", "sampler"): "scheduler"}
    for (node_id, name), key in widgets.items():
        p = params.PARAMS[key]
        info = nodes[node_id].GET_NODE_INFO_V1()["input"]
        spec = {**info.get("required", {}), **info.get("optional", {})}[name][1]
        if p.choices is not None:
            assert tuple(spec["options"]) == p.choices, (node_id, name)
            continue
        assert (spec["min"], spec["max"]) == p.widget_range(), (node_id, name)
    parser = build_parser()
    for key, flag in (("steps", "--steps"), ("seed", "--seed"), ("max_side", "--max-side")):
        p = params.PARAMS[key]
        action = next(a for sub in parser._subparsers._group_actions[0].choices.values() if sub.prog.endswith(
            "harmonize") for a in sub._actions if flag in a.option_strings)
        assert p.describe() in action.help, (key, action.help)
        params.check(key, p.maximum, flag)
        with pytest.raises(R2RUserError, match=re.escape(flag)):
            params.check(key, p.maximum + 1, flag)
    # the pipeline's own checks use the same entries
    from r2r.pipeline.sampling import SamplingPlan

    with pytest.raises(R2RUserError, match="from 1 to 1000"):
        SamplingPlan.make({}, 1001)


def test_no_float64_on_the_compute_device(tiny_components, monkeypatch):
    """A tiny run, the Clear-VAE banded as for a big picture, creates no float64 tensor (MPS has none)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from r2r.pipeline import R2RPipeline

    seen = []

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            # lift_fresh wraps host data (torch.tensor / from_numpy: diffusers' scheduler tables), which is
            # always made on the CPU and moved to the device in float32
            if func is torch.ops.aten.lift_fresh.default:
                return out
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and t.dtype == torch.float64:
                    seen.append(str(func))
            return out

    monkeypatch.setenv("R2R_VAE_MEMORY_BUDGET_MB", "0.01")  # band the Clear-VAE passes
    pipe = R2RPipeline(tiny_components)
    comp = (torch.rand(1, 3, 96, 128) * 0.8 + 0.1)
    mask = torch.zeros(1, 1, 96, 128)
    mask[..., 30:70, 40:90] = 1
    prepared = pipe.prepare(comp, mask, max_side=128)
    with Spy():
        plan = pipe.plan(2)
        encoded = pipe.encode(prepared)
        res = pipe.residuals(prepared, plan)
        latents = pipe.sample(prepared, encoded, res, plan, 0)
        pipe.decode(latents, encoded, prepared)
    assert seen == [], sorted(set(seen))


def _doc_names():
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    files += [p for p in sorted((ROOT / "r2r").rglob("*.py"))]
    names = set()
    for path in files:
        for m in re.finditer(r"(?<![\w./-])r2r(?:\.[A-Za-z_][A-Za-z0-9_]*)+", path.read_text(encoding="utf-8")):
            names.add((m.group(0).rstrip("."), str(path.relative_to(ROOT))))
    return sorted(names)


def _logger_names():
    names = set()
    for path in [*(ROOT / "r2r").rglob("*.py"), *(ROOT / "nodes").rglob("*.py"), *(ROOT / "training").rglob("*.py")]:
        names |= set(re.findall(r'getLogger\("(r2r[\w.]*)"\)', path.read_text(encoding="utf-8")))
    return names


def test_every_dotted_r2r_name_in_the_docs_resolves():
    missing = []
    loggers = _logger_names()
    for name, where in _doc_names():
        if name in loggers:
            continue
        parts = name.split(".")
        obj, i = None, len(parts)
        while i > 0:  # the longest importable module prefix, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:i]))
                break
            except ModuleNotFoundError:
                i -= 1
        for attr in parts[i:]:
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if obj is None:
            missing.append(f"{name} ({where})")
    assert missing == [], "names in docs/docstrings that do not exist:\n" + "\n".join(missing)
