"""``python -m r2r harmonize-video``: harmonize a pasted object through a whole clip (docs/video.md).

    python -m r2r harmonize-video --video IN.mp4 --mask MASK.png|MASK.mp4 --out OUT.mp4 \\
        [--temporal independent|shared_noise|smoothed|keyframes] [--keyframe-interval 8] \\
        [--empty-frames skip|stop] [--smoothing 3] [--cut-threshold 0.25] [--method r2r|statistics] \\
        [--overwrite] [the model options of `harmonize`: --weights, --steps, --seed, --max-side, ...]

``--mask``: one image for every frame, or a mask video with one frame per video frame (white =
object). The output keeps the input's frame rate, size and audio (copied, or re-encoded when the
output container cannot hold its codec: :mod:`r2r.video.files`). Everything is checked before any
model loads: the clip is read once (frame count, sizes, masks), the output path must not exist
(unless ``--overwrite``) and is written atomically, so an error or Ctrl-C leaves nothing behind.
"""

from __future__ import annotations

import sys

from ..params import add_cli_argument, check
from .common import (
    add_harmonize_arguments,
    add_model_arguments,
    check_feather_strength,
    check_model_args,
    device_and_dtype,
    feather_for_pipeline,
    load_pipeline,
    read_reference,
    resolve_weights,
    weights_hint,
)


def add_arguments(parser) -> None:
    from ..video.files import VIDEO_EXTENSIONS

    parser.add_argument("--video", required=True, metavar="VIDEO", help="the clip with the pasted object")
    parser.add_argument("--mask", required=True, metavar="MASK",
                        help="white = the pasted object: one image for every frame, or a mask video (one frame per "
                             "video frame)")
    parser.add_argument("--out", required=True, metavar="VIDEO",
                        help=f"output video ({', '.join(VIDEO_EXTENSIONS)}); frame rate, size and audio are kept")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists (never an input)")
    add_cli_argument(parser, "temporal", help="how the frames are tied together: independent = each frame on its "
                                              "own; shared_noise = the same noise for every frame; smoothed = also "
                                              "the colour change smoothed over time within each shot; keyframes = "
                                              "the model on every N-th frame (and at cuts), the others interpolated")
    add_cli_argument(parser, "keyframe_interval")
    add_cli_argument(parser, "empty_frames")
    add_cli_argument(parser, "smoothing")
    add_cli_argument(parser, "cut_threshold")
    add_model_arguments(parser)
    add_harmonize_arguments(parser, background="each frame's background")


class _Bar:
    """One tqdm bar per phase (frames through the model, frames written)."""

    NAMES = {"model": "harmonizing", "output": "writing"}

    def __init__(self):
        self.bar = None
        self.phase = None

    def __call__(self, done, total, phase):
        from tqdm.auto import tqdm

        if phase != self.phase:
            self.close()
            self.phase = phase
            self.bar = tqdm(total=total, desc=self.NAMES.get(phase, phase), unit="frame", leave=False)
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _check_args(args) -> None:
    from ..fileio import check_output_file
    from ..video.files import VIDEO_EXTENSIONS

    check_model_args(args)
    check_feather_strength(args)
    check("temporal", args.temporal, "--temporal")
    check("keyframe_interval", args.keyframe_interval, "--keyframe-interval")
    check("empty_frames", args.empty_frames, "--empty-frames")
    check("smoothing", args.smoothing, "--smoothing")
    check("cut_threshold", args.cut_threshold, "--cut-threshold")
    inputs = [p for p in (args.video, args.mask, args.reference, args.reference_mask) if p]
    check_output_file(args.out, inputs=inputs, overwrite=args.overwrite, extensions=VIDEO_EXTENSIONS,
                      what="--out video")


def _engine(args, reference):
    from ..video import R2REngine, StatisticsEngine

    if args.method == "statistics":
        kw = {} if reference is None else {"reference_image": reference.image,
                                           "reference_image_mask": reference.image_mask}
        return StatisticsEngine(args.strength, **kw)
    from ..devices import resolve_max_side

    device, dtype = device_and_dtype(args)
    args.max_side = resolve_max_side(args.max_side, device)
    if args.low_memory:
        def loader():
            from ..pipeline import PhaseLoadedModels, R2RPipeline

            models = PhaseLoadedModels(resolve_weights(args.weights), torch_dtype=dtype, device=device)
            return R2RPipeline(models=models, scheduler=args.scheduler)
    else:
        def loader():
            return load_pipeline(args, device, dtype)
    return R2REngine(loader, steps=args.steps, seed=args.seed, max_side=args.max_side, resize_mode=args.resize_mode,
                     strength=args.strength, scheduler=args.scheduler, noise_device=args.noise_device,
                     feather=feather_for_pipeline(args.feather), fullres_mode=args.fullres_mode, reference=reference)


def run(args) -> int:
    from ..errors import R2RWeightsNotFound
    from ..video import Clip, harmonize_clip
    from ..video.files import VideoFrames, VideoWriter, open_masks

    _check_args(args)
    reference = read_reference(args.reference, args.reference_mask)
    frames = VideoFrames(args.video, "--video")
    masks = open_masks(args.mask, "--mask")
    engine = _engine(args, reference)
    if args.method == "r2r" and reference is not None:  # the photo's checks before the weights load
        from ..imaging import compute_geometry
        from ..pipeline.reference import check_reference

        check_reference(reference, 1, compute_geometry(*frames.info.size, args.max_side, args.resize_mode))
    bar = _Bar()
    job = harmonize_clip(Clip(frames, masks), engine, temporal=args.temporal, keyframe_interval=args.keyframe_interval,
                         empty_frames=args.empty_frames, smoothing=args.smoothing, cut_threshold=args.cut_threshold,
                         progress=bar)
    info = frames.info
    try:
        with VideoWriter(args.out, info.fps, job.info.size, audio_from=args.video) as writer:
            for _, frame in job:
                writer.write(frame)
    except R2RWeightsNotFound as exc:
        raise R2RWeightsNotFound(weights_hint(exc)) from exc
    finally:
        bar.close()
    report = job.report
    h, w = report.size
    extra = f", {len(report.skipped)} passed through (empty mask)" if report.skipped else ""
    print(f"wrote {args.out}: {writer.frames} frames, {w}x{h}, {float(info.fps):g} fps, audio {writer.audio}; "
          f"{args.method} {report.temporal}, {len(report.shots)} shot(s), {report.model_frames} frame(s) through the "
          f"harmonizer{extra}, {report.seconds:.1f} s", file=sys.stdout)
    return 0
