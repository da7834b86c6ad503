"""``python -m r2r download``: fetch the official R2R weights (only the needed files) or check a folder."""

from __future__ import annotations

import sys

from ..weights.layout import OFFICIAL_REPO


def add_arguments(parser) -> None:
    parser.add_argument("--to", metavar="DIR", help="folder to download into (hub layout; ComfyUI: models/r2r/region2region)")
    parser.add_argument("--repo", default=OFFICIAL_REPO, help=f"Hugging Face repo id (default {OFFICIAL_REPO})")
    parser.add_argument("--revision", default=None, help="branch, tag or commit of the repo (default: main)")
    parser.add_argument("--check", metavar="DIR", help="verify an existing folder (layout, tensor names/shapes) and exit")
    parser.add_argument("--no-prompt-cache", action="store_true",
                        help="do not compute the empty-prompt embedding after downloading")


def _print_rows(rows) -> bool:
    ok = True
    for r in rows:
        ok &= bool(r["ok"])
        status = "ok  " if r["ok"] else "FAIL"
        detail = ""
        if "tensors" in r:
            detail = f"{r['tensors']}/{r['expected']} tensors, {r.get('format') or '?'} format, {','.join(r['dtypes'])}"
        print(f"[{status}] {r['component']:<13} {detail}  {r.get('file') or r['path']}")
        if r.get("problem"):
            print(f"       {r['problem']}")
    return ok


def run(args) -> int:
    from ..errors import R2RUserError
    from ..weights import check_release, download_release

    if args.check and args.to:
        raise R2RUserError("give either --to DIR (download into DIR, then check it) or --check DIR (only verify "
                           "an existing folder), not both.")
    if args.check:
        ok = _print_rows(check_release(args.check))
        print("all components match the official layout" if ok else "some components are missing or do not match")
        return 0 if ok else 1
    if not args.to:
        raise R2RUserError("download needs --to DIR (where to put the weights) or --check DIR (verify a folder).")
    print(f"downloading {args.repo} into {args.to} (only the files R2R needs) ...", file=sys.stderr)
    try:
        root = download_release(args.to, args.repo, revision=args.revision, cache_prompt=not args.no_prompt_cache)
    except OSError as exc:  # a full disk or over-long path during the download: say which folder, what to do
        from pathlib import Path

        from ..fileio import write_error

        err = write_error(exc, Path(exc.filename or Path(args.to) / "?"), "downloaded file")
        if err is exc:
            raise
        raise err from None
    ok = _print_rows(check_release(root))
    print(f"R2R weights ready in {root}" if ok else f"downloaded into {root}, but some components do not match")
    return 0 if ok else 1
