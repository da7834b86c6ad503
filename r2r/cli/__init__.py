"""``python -m r2r <command>``: one entry point, one module per command.

Each command module defines ``add_arguments(parser)`` and ``run(args) -> int``
and is imported only when its command is used, so ``make-dataset`` never loads
diffusers and ``harmonize`` never loads the dataset code.
"""

import argparse
import sys
from importlib import import_module

from ..errors import R2RUserError

# command -> (module, one-line help)
COMMANDS = {
    "harmonize": (".harmonize", "harmonize a composite image with R2R (or the weight-free harmonizer)"),
    "demo": (".demo", "harmonize the bundled example composites and write a before/after sheet"),
    "download": (".download", "download the official R2R weights from the Hugging Face hub"),
    "make-dataset": (".make_dataset", "generate a training set with Random Poisson Blending"),
    "evaluate": (".evaluate", "compute MSE/fMSE/PSNR/SSIM of predictions exactly as the official script"),
    "infer-dataset": (".infer_dataset", "harmonize a whole dataset split (batched, resumable, multi-GPU)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m r2r", description="R2R image harmonization tools.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        try:
            module = import_module(module_name, __name__)
        except ModuleNotFoundError as exc:  # a command whose module is not installed yet
            if exc.name and exc.name.startswith(__name__):
                p.set_defaults(_missing=str(exc))
                continue
            raise
        module.add_arguments(p)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    if getattr(args, "_missing", None):
        print(f"error: command {args.command!r} is not available in this build ({args._missing})", file=sys.stderr)
        return 2
    module = import_module(args._module, __name__)
    try:
        return int(module.run(args) or 0)
    except R2RUserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
