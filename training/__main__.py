"""``python -m training <stage> --config FILE.yaml [--set key=value ...] [--resume latest|DIR | --overwrite]``.

Also works under ``accelerate launch -m training ...`` (multi-GPU / multi-node).
Exit codes: 0 done (or stopped with --stop-after), 2 a problem with the input (message says how to fix
it; nothing was changed), 1 a file could not be written during training (the checkpoints written
so far are kept), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys

from r2r.errors import R2RUserError

from .checkpoint import TrainingWriteError
from .config import STAGES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training",
        description="Train one R2R stage (clear_vae -> unet -> controller). Multi-GPU: accelerate launch -m training ...",
    )
    p.add_argument("stage", choices=STAGES, help="which network to train")
    p.add_argument("--config", required=True, help="YAML config (see training/configs/ and docs/training.md)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.max_steps=100 (repeatable)")
    p.add_argument("--resume", default=None, metavar="latest|DIR",
                   help="continue the run in output.dir from its newest checkpoint ('latest'; starts at step 0 when "
                        "the folder is empty) or from a checkpoint folder")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in a used output folder: the old run is moved to <dir>.previous-<time>")
    p.add_argument("--force-resume", action="store_true",
                   help="resume although seed, data, batch size, learning rate ... differ from the checkpoint's")
    p.add_argument("--skip-bad-files", action="store_true",
                   help="train without the items whose files are unreadable, mismatched or have empty masks "
                        "(default: list them and stop)")
    p.add_argument("--output-dir", default=None, help="shortcut for --set output.dir=DIR")
    p.add_argument("--output-release", default=None, metavar="DIR",
                   help="also write/update a full release folder (hub layout) with the trained component; the other "
                        "components are copied from init.release")
    p.add_argument("--max-steps", type=int, default=None, help="shortcut for --set train.max_steps=N")
    p.add_argument("--stop-after", type=int, default=None, metavar="N",
                   help="save a checkpoint and stop after optimizer step N (continue later with --resume latest)")
    return p


def _show_decisions() -> None:
    """The trainer's decisions (``r2r.training`` logger: precision, gradient checkpointing, ...) on stderr."""
    import logging

    from r2r.cli import StderrHandler

    logger = logging.getLogger("r2r.training")
    if not logger.handlers:
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter("[r2r-train] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False  # shown here once (not again by handlers an embedding program set on "r2r")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _show_decisions()
    from .config import load_config

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output.dir={args.output_dir}")
    if args.output_release:
        overrides.append(f"output.release={args.output_release}")
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    try:
        cfg = load_config(args.config, stage=args.stage, overrides=overrides)
        from .trainer import run_training

        result = run_training(cfg, resume=args.resume, stop_after=args.stop_after, overwrite=args.overwrite,
                              force_resume=args.force_resume, skip_bad_files=args.skip_bad_files)
    except TrainingWriteError as exc:  # a write failed while training: the checkpoints written so far are kept
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except R2RUserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc.strerror or exc} ({exc.filename or 'while writing the run'}). The checkpoints written so "
              "far are kept; free space or fix permissions, then continue with --resume latest", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted (continue with --resume latest)", file=sys.stderr)
        return 130
    if not result["finished"]:
        print(f"stopped at step {result['steps']}; continue with --resume latest", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
