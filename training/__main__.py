"""``python -m training <stage> --config FILE.yaml [--set key=value ...] [--resume latest|DIR]``.

Also works under ``accelerate launch -m training ...`` (multi-GPU / multi-node).
"""

from __future__ import annotations

import argparse
import sys

from r2r.errors import R2RUserError

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
                   help="continue from the newest checkpoint in output.dir ('latest') or from a checkpoint folder")
    p.add_argument("--output-dir", default=None, help="shortcut for --set output.dir=DIR")
    p.add_argument("--output-release", default=None, metavar="DIR",
                   help="also write/update a full release folder (hub layout) with the trained component; the other "
                        "components are copied from init.release")
    p.add_argument("--max-steps", type=int, default=None, help="shortcut for --set train.max_steps=N")
    p.add_argument("--stop-after", type=int, default=None, metavar="N",
                   help="save a checkpoint and stop after optimizer step N (continue later with --resume latest)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
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

        result = run_training(cfg, resume=args.resume, stop_after=args.stop_after)
    except R2RUserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (continue with --resume latest)", file=sys.stderr)
        return 130
    if not result["finished"]:
        print(f"stopped at step {result['steps']}; continue with --resume latest", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
