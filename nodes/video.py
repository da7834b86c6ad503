"""Clips in the nodes (docs/video.md): an IMAGE batch of frames with a MASK batch (one mask per frame, or
one for all) through R2R Harmonize or R2R Color Match (weight-free) with a ``temporal`` mode
(:mod:`r2r.video`), and R2R Example Clip, a bundled clip so the video template runs as delivered.

The clip modes run :func:`r2r.video.harmonize_clip` over the node's models (ComfyUI's model
management via ``flow.pipeline``): frames in chunks sized by the free memory, progress counted in
frames, Cancel honoured between chunks (nothing is output then). ``temporal`` = ``independent`` keeps
each node's own per-picture path (the behaviour before the clip modes), so saved workflows give the
same images.
"""

from __future__ import annotations

import logging

from comfy_api.v0_0_2 import io

from ..r2r.errors import R2RUserError
from . import _convert, _host
from ._schema import R2RNode, check_param, choice, param_input

log = logging.getLogger("r2r.nodes")

TEMPORAL_TIP = ("For a clip (an IMAGE batch of frames with one mask per frame or one for all): independent = each "
                "frame on its own (as before); shared_noise = every frame starts from the same noise, so identical "
                "frames give identical results; smoothed = also the colour change smoothed over time within each shot "
                "(no flicker, nothing crosses a cut); keyframes = the model on every keyframe_interval-th frame and "
                "at cuts, the frames between get the colour change interpolated (fast).")
EMPTY_TIP = ("A frame whose mask is empty (the object is out of the picture): skip = output that frame unchanged "
             "(noted in the log); stop = refuse the clip. Clip modes only.")


def temporal_inputs():
    """The optional clip inputs every clip-capable node ends with."""
    return [param_input("temporal", optional=True, tooltip=TEMPORAL_TIP),
            param_input("keyframe_interval", optional=True),
            param_input("empty_frames", optional=True, tooltip=EMPTY_TIP)]


def check_temporal(node: str, temporal, keyframe_interval, empty_frames) -> None:
    check_param("temporal", temporal, node)
    check_param("keyframe_interval", keyframe_interval, node)
    check_param("empty_frames", empty_frames, node)


class _Progress:
    """One ComfyUI progress bar per phase (frames through the model, frames finished); each update checks Cancel."""

    def __init__(self, desc: str):
        self.desc = desc
        self.bars: dict[str, _host.Progress] = {}

    def __call__(self, done, total, phase):
        bar = self.bars.get(phase)
        if bar is None:
            bar = self.bars[phase] = _host.Progress(total, desc=f"{self.desc} ({phase})")
        bar.update(max(0, done - bar.value))

    def close(self):
        for bar in self.bars.values():
            bar.close()


def read_clip(image, mask, invert_mask, reference_mask, node: str):
    """IMAGE + MASK (+ reference region) of a node -> an ``r2r.video.Clip``: empty masks are allowed here
    (``empty_frames`` decides), a single mask stays one mask for every frame."""
    from ..r2r.video import ArrayFrames, ArrayMasks, Clip

    comp = _convert.image_to_nchw(image, "image", node=node)
    m = _convert.mask_to_b1hw(mask, comp.shape[-2:], invert=bool(invert_mask), name="mask", allow_empty=True,
                              node=node)
    refs = None
    if reference_mask is not None:
        refs = ArrayMasks(_convert.mask_to_b1hw(reference_mask, comp.shape[-2:], name="reference_mask",
                                                allow_empty=True, node=node))
    return Clip(ArrayFrames(comp, channels_first=True), ArrayMasks(m), refs)


def run_clip(clip, engine, temporal, keyframe_interval, empty_frames, node: str, node_id=None):
    """The clip through ``engine`` -> IMAGE ``[N,H,W,3]``; a summary on the node."""
    import torch

    from ..r2r.video import harmonize_clip

    progress = _Progress(f"R2R {node}")
    try:
        try:
            job = harmonize_clip(clip, engine, temporal=temporal, keyframe_interval=int(keyframe_interval),
                                 empty_frames=empty_frames, progress=progress)
        except R2RUserError as exc:
            raise R2RUserError(f"R2R {node}: {exc}") from None
        out = torch.empty((job.info.count, *job.info.size, 3), dtype=torch.float32)
        for i, frame in job:
            out[i] = torch.from_numpy(frame)
    finally:
        progress.close()
    report = job.report
    text = (f"{report.frames} frames, {temporal}: {len(report.shots)} shot(s), {report.model_frames} frame(s) "
            f"through the model")
    if report.skipped:
        text += f", {len(report.skipped)} passed through unchanged (empty mask)"
    _host.show_text(f"R2R {node}: {text}.", node_id)  # on the node and in the log
    return out


def harmonize_r2r(model, clear_vae, controller, image, mask, settings: dict, reference_inputs, clip_settings,
                  node: str, node_id=None):
    """R2R Harmonize's clip modes: the node's models as an ``r2r.video.R2REngine``."""
    from ..r2r.video import R2REngine
    from . import _checks, flow

    reference_mask, reference_image, reference_image_mask = reference_inputs
    clip = read_clip(image, mask, settings["invert_mask"], reference_mask, node)
    photo = None
    if reference_image is not None or reference_image_mask is not None:
        photo = flow.make_reference(None, reference_image, reference_image_mask, node)
        photos = int(getattr(getattr(photo, "image", None), "shape", (1,))[0])
        if photos != 1:
            raise R2RUserError(f"R2R {node}: a clip takes one reference_image for all its frames; got {photos}.")
    for value, kind, name in ((model, "R2R_MODEL", "model"), (clear_vae, "R2R_CLEAR_VAE", "clear_vae"),
                              (controller, "R2R_CONTROLLER", "controller")):
        _checks.check_kind(value, kind, name, node)
    pipe = flow.pipeline(unet=model.unet, controller=controller, clear_vae=clear_vae,
                         scheduler_config=model.scheduler_config, prompt_embeds=model.prompt_embeds)
    feather = int(settings["feather"])
    engine = R2REngine(pipe, steps=settings["steps"], seed=settings["seed"], max_side=settings["max_side"],
                       resize_mode=settings["resize_mode"], strength=float(settings["strength"]),
                       scheduler=settings["sampler"], noise_device=settings["noise_device"],
                       feather=None if feather < 0 else feather, fullres_mode=settings["fullres_mode"],
                       paste_back=bool(settings["paste_back"]), reference=photo)
    temporal, keyframe_interval, empty_frames = clip_settings
    return run_clip(clip, engine, temporal, keyframe_interval, empty_frames, node=node, node_id=node_id)


def harmonize_statistics(image, mask, strength, invert_mask, reference_inputs, clip_settings, node: str):
    """R2R Color Match (weight-free)'s clip modes: ``r2r.video.StatisticsEngine``."""
    from ..r2r.video import StatisticsEngine

    reference_mask, reference_image, reference_image_mask = reference_inputs
    clip = read_clip(image, mask, invert_mask, reference_mask, node)
    kw = {}
    if reference_image is not None or reference_image_mask is not None:
        if reference_image is None:
            raise R2RUserError(f"R2R {node}: reference_image_mask needs the photo it belongs to in reference_image.")
        if reference_mask is not None:
            raise R2RUserError(f"R2R {node}: connect either reference_mask or reference_image, not both.")
        photo = _convert.image_to_nchw(reference_image, "reference_image", node=node)
        if int(photo.shape[0]) != 1:
            raise R2RUserError(f"R2R {node}: a clip takes one reference_image for all its frames; got "
                               f"{int(photo.shape[0])}.")
        kw["reference_image"] = _convert.to_float_hwc(photo[0])
        if reference_image_mask is not None:
            region = _convert.mask_to_b1hw(reference_image_mask, photo.shape[-2:], name="reference_image_mask",
                                           allow_empty=True, node=node)
            kw["reference_image_mask"] = region[0, 0].numpy()
    try:
        engine = StatisticsEngine(float(strength), **kw)
    except R2RUserError as exc:
        raise R2RUserError(f"R2R {node}: {exc}") from None
    temporal, keyframe_interval, empty_frames = clip_settings
    return run_clip(clip, engine, temporal, keyframe_interval, empty_frames, node=node)


class R2RExampleClip(R2RNode):
    """A short bundled clip (24 frames, 256x256, 12 fps) with a pasted object that moves and does not match the
    scene, and its mask for every frame — to try harmonizing a video without preparing files. For your own clip
    use Load Video -> Get Video Components (frames, fps) and a MASK batch (one per frame) or one mask painted on
    a frame.
    """

    @classmethod
    def define_schema(cls):
        from ..r2r.video.synthetic import example_clip_names

        names = example_clip_names()
        return cls.schema(
            inputs=[io.Combo.Input("clip", options=names, default=names[0] if names else None,
                                   tooltip="Which bundled clip: drifting_astronaut = the astronaut's suit (cold, "
                                           "washed out) drifting over a coffee table.")],
            outputs=[
                io.Image.Output(display_name="frames", tooltip="The frames (IMAGE batch, 0..1)."),
                io.Mask.Output(display_name="mask", tooltip="One mask per frame: white (1) = the pasted object."),
                io.Float.Output(display_name="fps", tooltip="The clip's frame rate (for Create Video)."),
            ],
        )

    @classmethod
    def execute(cls, clip):
        import torch

        from ..r2r.video.synthetic import example_clip_names, read_example_clip

        choice(clip, example_clip_names(), "clip", "Example Clip")
        frames, masks, fps = read_example_clip(clip)
        images = torch.from_numpy(frames).float() / 255.0
        return io.NodeOutput(images, torch.from_numpy((masks >= 128).astype("float32")), float(fps))


NODES = [R2RExampleClip]
