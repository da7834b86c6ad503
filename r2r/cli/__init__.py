"""``python -m r2r <command>``: one entry point, one module per command.

Each command module defines ``add_arguments(parser)`` and ``run(args) -> int``
and is imported only when its command is used, so ``make-dataset`` never loads
diffusers and ``harmonize`` never loads the dataset code.

Exit codes, the same for every command (:func:`main`): 0 done; 2 a usage problem
(argparse errors and :class:`~r2r.errors.R2RUserError`, whose message says what was
expected, what was given and how to fix it; no traceback); 130 interrupted (Ctrl-C;
outputs are written atomically, so none is left half-written); 1 anything else,
which is a bug: a short message, and the traceback with ``--debug`` or ``R2R_DEBUG=1``.
A command may also return 1 itself for a negative answer (``download --check``).
"""

import argparse
import logging
import os
import sys
import traceback
from importlib import import_module

from ..errors import R2RUserError

# command -> (module, one-line help)
COMMANDS = {
    "harmonize": (".harmonize", "harmonize a composite image with R2R (or the weight-free harmonizer)"),
    "harmonize-video": (".harmonize_video", "harmonize a pasted object through a whole video clip without flicker"),
    "demo": (".demo", "harmonize the bundled example composites and write a before/after sheet"),
    "download": (".download", "download the official R2R weights from the Hugging Face hub"),
    "make-dataset": (".make_dataset", "generate a training set with Random Poisson Blending"),
    "evaluate": (".evaluate", "compute MSE/fMSE/bMSE/PSNR/SSIM of predictions exactly as the official script"),
    "infer-dataset": (".infer_dataset", "harmonize a whole dataset split (batched, resumable, multi-GPU)"),
}
DEBUG_ENV = "R2R_DEBUG"
DEBUG_HELP = f"on an unexpected error, print the full traceback (also: {DEBUG_ENV}=1)"
EXIT_OK, EXIT_BUG, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


VERBOSE_HELP = "also show the decisions r2r takes (placements, banding, automatic sizes) on stderr"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m r2r", description="R2R image harmonization tools.")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        # also accepted after the command; SUPPRESS keeps the top-level value when it is not given here
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
        try:
            module = import_module(module_name, __name__)
        except ModuleNotFoundError as exc:  # a command whose module is not installed yet
            if exc.name and exc.name.startswith(__name__):
                p.set_defaults(_missing=str(exc))
                continue
            raise
        module.add_arguments(p)
    return parser


def _debug_wanted(argv) -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no") or "--debug" in argv


def main(argv=None) -> int:
    """Run one command; always returns the exit code (see the module docstring), never raises."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_wanted(argv)
    try:
        return _dispatch(argv)
    except R2RUserError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\ninterrupted (Ctrl-C)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 -- the last line of defence: a short message instead of a traceback
        if debug:
            traceback.print_exc()
        print(_unexpected_message(exc, debug), file=sys.stderr)
        return EXIT_BUG


def _dispatch(argv) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2, message already printed)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    if getattr(args, "_missing", None):
        raise R2RUserError(f"The command {args.command!r} is not available in this build ({args._missing}); "
                           "reinstall the package or pick another command (python -m r2r --help).")
    _show_log(getattr(args, "verbose", False))
    module = import_module(args._module, __name__)
    return int(module.run(args) or 0)


def _show_log(verbose: bool) -> None:
    """The ``r2r`` logger's warnings (and with ``--verbose`` its decisions) on stderr, once."""
    log = logging.getLogger("r2r")
    log.setLevel(logging.INFO if verbose else logging.WARNING)
    if not any(isinstance(h, StderrHandler) for h in log.handlers):
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        log.addHandler(handler)


class StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (it may be replaced between runs); the CLIs'
    and the trainer's log handler."""

    def emit(self, record):
        self.stream = sys.stderr
        super().emit(record)


def _unexpected_message(exc: BaseException, debug: bool) -> str:
    kind = type(exc).__name__
    if kind == "OutOfMemoryError" or isinstance(exc, MemoryError):
        return (f"error: out of memory ({kind}). Try --low-memory, a smaller --max-side, fewer images per batch, "
                "or --device cpu; rerun with --debug for the traceback.")
    where = "the traceback is above" if debug else f"rerun with --debug (or {DEBUG_ENV}=1) to see the traceback"
    return (f"error: unexpected {kind}: {exc}\n"
            f"This is a bug in r2r, not in your input. Please report it with the command line you ran; {where}.")
