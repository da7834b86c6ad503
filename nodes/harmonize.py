"""R2R Harmonize: the four nodes of the exact path in one (the same image as the four-node graph).

It stays one node rather than a V3 *expanding* node: an expansion would hand the IMAGE and MASK
tensors to its sub-nodes as constants, which ComfyUI 0.3.64's cache cannot key (tensors are
"unhashable" there, comfy_execution/caching.py), so every run would redo everything. Instead the
node keeps what the four-node chain keeps between runs, per node: the Encode output (keyed by
the content of the image and mask and the working settings) and the controller residuals (a
:class:`r2r.pipeline.ResidualCache`, by timestep). A new seed or sampler runs only the U-Net loop
and the decoder; a new strength or reference runs the controller again; a new picture, everything.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from comfy_api.v0_0_2 import io

from ..r2r.errors import R2RUserError
from ..r2r.imaging import fingerprint
from . import _checks, _convert, _host, _schema, flow, video
from ._schema import R2RNode
from ._types import ControlSettings
from .chain import check_output, check_sampling, check_working

OBJECTS_TIP = ("together = the mask is one object; each = every object on its own (every separate part of the "
               "mask, or every mask of a MASK batch for this one picture), against the background without the other "
               "objects; later masks win where they overlap.")
CROP_TIP = ("none = the whole picture at max_side; per_object = each object in a crop around it (context), run at "
            "max_side and pasted back at full resolution: small objects in big photos keep their detail.")
#: how many R2R Harmonize nodes keep their work between runs
MEMO_NODES = 4


class HarmonizeMemo:
    """Per node: the last Encode output and a residual cache (for the controller it was made with)."""

    def __init__(self, max_nodes: int = MEMO_NODES):
        self._nodes: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.max_nodes = max_nodes
        self.encodes = 0

    def _slot(self, node_id) -> dict:
        slot = self._nodes.setdefault(node_id, {})
        self._nodes.move_to_end(node_id)
        while len(self._nodes) > self.max_nodes:
            self._nodes.popitem(last=False)
        return slot

    def latent(self, node_id, clear_vae, comp, mask, max_side, resize_mode):
        key = (fingerprint(comp, mask), int(max_side), resize_mode)
        with self._lock:
            slot = self._slot(node_id)
            if slot.get("clear_vae") is not clear_vae or slot.get("encode_key") != key:  # same object, as below
                slot["latent"] = flow.encode(clear_vae, comp, mask, max_side, resize_mode)
                slot["clear_vae"], slot["encode_key"] = clear_vae, key
                self.encodes += 1
            return slot["latent"]

    def control(self, node_id, controller, strength, reference) -> ControlSettings:
        with self._lock:
            slot = self._slot(node_id)
            if slot.get("controller") is not controller:
                from ..r2r.pipeline import ResidualCache

                slot["controller"], slot["cache"] = controller, ResidualCache()
            return ControlSettings(controller=controller, strength=float(strength), reference=reference,
                                   cache=slot["cache"])


MEMO = HarmonizeMemo()


class R2RHarmonize(R2RNode):
    """Harmonize a pasted object: makes an object pasted into a photo (a composite) look like it belongs there
    (relight, colour / color match, tone) with the R2R model — Clear-VAE encode, MACA controller, sampling and
    Clear-VAE decode with paste-back in one node. Same result as the four separate nodes; a new seed reuses the
    encoding and the controller's work. Optional: match the look of another photo (reference_image), and
    harmonize several pasted objects each on its own, each in its own crop (objects, crop).
    """

    @classmethod
    def define_schema(cls):
        return cls.schema(
            inputs=[
                _schema.R2RModelType.Input("model", tooltip="The R2R model from the R2R Checkpoint Loader."),
                _schema.clear_vae_in(),
                _schema.R2RControllerType.Input("controller", tooltip="The Harmony Controller from an R2R loader."),
                _schema.image_in(),
                _schema.mask_in(),
                _schema.seed_in(),
                _schema.steps_in(),
                _schema.sampler_in(),
                _schema.max_side_in(),
                _schema.strength_in(),
                _schema.invert_in(),
                _schema.paste_back_in(),
                _schema.feather_in(),
                _schema.resize_in(),
                _schema.fullres_in(),
                *_schema.reference_inputs(),
                _schema.noise_device_in(),
                _schema.param_input("objects", optional=True, tooltip=OBJECTS_TIP),
                _schema.param_input("crop", optional=True, tooltip=CROP_TIP),
                _schema.param_input("context", optional=True),
                *video.temporal_inputs(),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The harmonized picture at the composite's "
                                                                   "original size.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, clear_vae, controller, image, mask, seed=0, steps=10, sampler="euler_ancestral",
                max_side=0, strength=1.0, invert_mask=False, paste_back=True, feather=-1, resize_mode="fit",
                fullres_mode="auto", reference_mask=None, reference_image=None, reference_image_mask=None,
                noise_device="cpu", objects="together", crop="none", context=2.0, temporal="independent",
                keyframe_interval=8, empty_frames="skip"):
        node = "Harmonize"
        check_sampling(node, seed, steps, sampler, noise_device)
        check_working(node, max_side, resize_mode)
        check_output(node, feather, fullres_mode)
        _schema.check_param("strength", strength, node)
        for name, value in (("objects", objects), ("crop", crop), ("context", context)):
            _schema.check_param(name, value, node)
        video.check_temporal(node, temporal, keyframe_interval, empty_frames)
        node_id = cls.hidden.unique_id if cls.hidden else None
        if temporal != "independent":  # a clip: r2r.video over the node's models (nodes/video.py)
            if (objects, crop) != ("together", "none"):
                raise R2RUserError(f"R2R {node}: temporal {temporal} harmonizes a clip with objects 'together' "
                                   "and crop 'none'; set those, or temporal 'independent'.")
            settings = dict(seed=seed, steps=steps, sampler=sampler, max_side=max_side, strength=strength,
                            invert_mask=invert_mask, paste_back=paste_back, feather=feather,
                            resize_mode=resize_mode, fullres_mode=fullres_mode, noise_device=noise_device)
            return io.NodeOutput(video.harmonize_r2r(
                model, clear_vae, controller, image, mask, settings,
                (reference_mask, reference_image, reference_image_mask),
                (temporal, keyframe_interval, empty_frames), node, node_id))
        comp, m = flow.read_inputs(image, mask, invert_mask, node=node)
        reference = flow.make_reference(reference_mask, reference_image, reference_image_mask, node)
        _checks.check_kind(model, "R2R_MODEL", "model", node)
        _checks.check_kind(clear_vae, "R2R_CLEAR_VAE", "clear_vae", node)
        _checks.check_kind(controller, "R2R_CONTROLLER", "controller", node)
        flow.warn_large_mask(m, node, node_id)
        if (objects, crop) != ("together", "none"):
            if int(getattr(image, "shape", (0,))[0]) == 1:  # a MASK batch for one picture lists its objects
                comp = comp[:1]
            settings = dict(seed=seed, steps=steps, sampler=sampler, max_side=max_side, strength=float(strength),
                            paste_back=paste_back, feather=feather, resize_mode=resize_mode,
                            fullres_mode=fullres_mode, noise_device=noise_device, objects=objects, crop=crop,
                            context=context)
            return io.NodeOutput(_harmonize_objects(model, clear_vae, controller, comp, m, reference, settings, node))
        _check_reference(reference, comp, max_side, resize_mode, node)
        latent = MEMO.latent(node_id, clear_vae, comp, m, max_side, resize_mode)
        controlled = model
        if float(strength) > 0:
            controlled = model.with_control(MEMO.control(node_id, controller, strength, reference))
        sampled = flow.sample(controlled, latent, seed, steps, sampler, noise_device)
        return io.NodeOutput(flow.decode(clear_vae, sampled, bool(paste_back), int(feather), fullres_mode,
                                         node_id=node_id))


def _at_composite_size(reference, comp, node: str):
    """A region of the picture (at its own size, same aspect ratio) brought to the composite's size."""
    from ..r2r.pipeline import Reference

    if reference is None or reference.mask is None:
        return reference
    return Reference(mask=_convert.mask_to_b1hw(reference.mask[:, 0], comp.shape[-2:], name="reference_mask",
                                                allow_empty=True, node=node))


def _check_reference(reference, comp, max_side, resize_mode, node: str) -> None:
    """The reference checked (photo size, region, batch) before the encoder runs."""
    from ..r2r.devices import resolve_max_side
    from ..r2r.imaging import compute_geometry
    from ..r2r.pipeline.reference import check_reference

    if reference is None:
        return
    geometry = compute_geometry(int(comp.shape[-2]), int(comp.shape[-1]),
                                resolve_max_side(int(max_side), _host.compute_device()), resize_mode)
    try:
        check_reference(_at_composite_size(reference, comp, node), int(comp.shape[0]), geometry)
    except R2RUserError as exc:
        raise R2RUserError(f"R2R {node}: {exc}") from None


def _harmonize_objects(model, clear_vae, controller, comp, mask, reference, s: dict, node: str):
    """objects=each / crop=per_object: r2r.pipeline.objects over ComfyUI's model management (no per-node reuse:
    each object or crop is its own picture)."""
    from ..r2r.devices import resolve_max_side
    from ..r2r.pipeline.objects import harmonize_objects

    pipe = flow.pipeline(unet=model.unet, controller=controller if s["strength"] > 0 else None, clear_vae=clear_vae,
                         scheduler_config=model.scheduler_config, prompt_embeds=model.prompt_embeds)
    with _host.LazyProgress("R2R objects") as bar:
        try:
            out = harmonize_objects(
                pipe, comp, mask, objects=s["objects"], crop=s["crop"], context=float(s["context"]),
                reference=_at_composite_size(reference, comp, node), generator=int(s["seed"]),
                num_inference_steps=int(s["steps"]), max_side=resolve_max_side(int(s["max_side"]), pipe.device),
                feather=None if int(s["feather"]) < 0 else int(s["feather"]), resize_mode=s["resize_mode"],
                scheduler=s["sampler"], strength=s["strength"], callback=bar.step, fullres_mode=s["fullres_mode"],
                noise_device=s["noise_device"], paste_back=bool(s["paste_back"]))
        except R2RUserError as exc:
            raise R2RUserError(f"R2R {node}: {exc}") from None
    return _convert.nchw_to_image(out.images)


NODES = [R2RHarmonize]
