"""Several objects in one picture, and a crop around each: ``objects``, ``crop`` and ``context`` of
:meth:`R2RPipeline.__call__ <r2r.pipeline.R2RPipeline.__call__>` (the CLI's ``--objects --crop
--context``, R2R Harmonize's inputs of the same names) and of :func:`harmonize_statistics_objects`
(the weight-free harmonizer).

**Objects.** A MASK batch given with ONE composite lists that picture's objects (item ``i`` =
object ``i``); otherwise each composite's mask is split into its connected components
(8-connected, of the mask >= 0.5; soft edge pixels below 0.5 go to the nearest component),
numbered in reading order of their first pixel. At most :data:`MAX_OBJECTS` per picture.

* ``objects="together"``: one foreground, the union of the objects; its background is everything
  else (with ``crop="none"`` this is the plain call, which is what ``pipe(...)`` runs).
* ``objects="each"``: every object is harmonized on its own, against the background WITHOUT the
  other pasted objects: MACA's background statistic (the weight-free harmonizer's reference
  statistic) comes from the region outside all objects (``Reference(mask=1 - union)``, with the
  area rule of :class:`r2r.models.MACA`; a ``reference`` given by the caller replaces it). The
  other objects stay in the picture the model sees, as they are in the composite.

The results are composed in object order: a later mask wins where masks overlap, and an object's
feather band (the soft paste-back edge) never enters another object's mask. Pixels outside every
mask and its feather band keep the composite's values bit for bit (``feather=0``: outside every
mask).

**Crops** (``crop="per_object"``). Each object is harmonized in a crop around it, so a small object
in a big photo gets the model's whole working resolution (a 300-px object in a 4000x3000 photo,
``context`` 2: a 600-px crop run at 1024 px instead of ~77 px of a whole-picture run). The crop
(:func:`crop_box`): the box of the object's pixels (mask > 0), grown about its centre by
``context`` (2 = twice its width and height) plus a margin of 8 working pixels and the feather
width on every side, at least 64 px a side, then grown in one direction to the aspect ratio of the
working canvas it gets (``resize_mode``), so the model sees it unstretched. A crop that would
cross the picture's border is shifted inside it; one larger than the picture is clamped to the
picture (and then stretched by the canvas rounding at most, as a whole picture is). The crop runs
at ``max_side`` like a whole picture (small crops are upscaled), and its result is brought back to
the crop's size (``fullres_mode``) and pasted into the full-resolution picture through the object's
mask. With ``together`` each crop harmonizes all objects inside it (their union) and pastes its own.

Background statistic of a crop: the crop's own background (minus the other objects with
``each``): the light near the object, usually the light that falls on it; with a small
``context`` it may see too little background. A ``reference`` overrides it: a photo as given; a
region of the composite is taken from the WHOLE picture (it goes through the controller as a
reference photo that is the composite itself, with that region: one more controller batch item
per step).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..errors import R2RUserError
from ..params import check
from .crops import MAX_OBJECTS, Box, ObjectMask, components, compose, crop_box, split_objects, target_alpha
from .reference import Reference, check_batches
from .values import R2ROutput

log = logging.getLogger(__name__)

__all__ = ["MAX_OBJECTS", "Box", "ObjectMask", "ObjectRun", "ObjectsOutput", "check_objects", "components", "crop_box",
           "harmonize_objects", "harmonize_statistics_objects", "plan_runs", "split_objects"]

@dataclass(frozen=True)
class ObjectRun:
    """One harmonization: object ``index`` (of ``count``) of composite ``item``, in ``box``."""

    item: int
    index: int
    count: int
    box: Box
    object_box: Box  # the object's own pixels (mask > 0)

    @property
    def label(self) -> str:
        return f"object {self.index + 1} of {self.count}" + (f" of composite {self.item + 1}" if self.item else "")


@dataclass
class ObjectsOutput(R2ROutput):
    """``images``: ``[N,3,H,W]``, one per composite (or per reference for one composite); ``runs``: what ran."""

    runs: list = field(default_factory=list)


def check_options(objects: str, crop: str, context) -> tuple[str, str, float]:
    return check("objects", objects, "objects"), check("crop", crop, "crop"), check("context", context, "context")


def plan_runs(groups, image_hw, objects: str, crop: str, context: float, max_side: int,
              resize_mode: str = "fit", feather: int | None = None, check_model_grid: bool = True) -> list:
    """The runs for every composite's objects, checked before any work: with ``each`` every object must
    survive the scaling to its working canvas and the latent grid, and keep background around it."""
    from ..imaging import compute_geometry, latent_mask_from, reference_latent_mask, to_working

    runs = []
    whole = Box(0, int(image_hw[0]), 0, int(image_hw[1]))
    for item, group in enumerate(groups):
        count = len(group) if (objects == "each" or crop == "per_object") else 1
        for index in range(count):
            obj_box = group[index].box if count > 1 or crop == "per_object" else whole
            box = whole if crop == "none" else crop_box(obj_box, image_hw, context, max_side, resize_mode, feather)
            run = ObjectRun(item, index, count, box, obj_box)
            runs.append(run)
            if not check_model_grid:
                continue
            geometry = compute_geometry(box.height, box.width, max_side, resize_mode)
            mask, _, _, background = run_masks(run, group, objects)
            size = f"{geometry.working_size[1]}x{geometry.working_size[0]}"
            if objects == "each":
                latent = latent_mask_from((to_working(mask, geometry, pad_value=0.0) >= 0.5).float())
                if not bool(latent.any()):
                    fix = ("raise max_side, use crop=per_object (each object at up to max_side)" if crop == "none"
                           else "raise max_side or lower context")
                    raise R2RUserError(
                        f"objects=each: {run.label} ({obj_box.describe()}) vanishes when its "
                        f"{'picture' if crop == 'none' else 'crop'} ({box.width}x{box.height} px) is scaled to the "
                        f"working canvas {size} (nothing of it is left on the model's 1/8 grid); expected each object "
                        f"to cover at least one 8x8 cell there. Enlarge or remove it (a stray speck in the mask?), "
                        f"{fix}, or use objects=together.")
            if background is not None:
                try:
                    reference_latent_mask(background, geometry)
                except R2RUserError:
                    raise R2RUserError(
                        f"objects=each: {run.label} ({obj_box.describe()}) has no background of its own left in "
                        f"its {'picture' if crop == 'none' else 'crop'} once the other objects are taken out (at the "
                        f"working canvas {size}). Raise context, give a reference, or use objects=together."
                    ) from None
    return runs


def run_masks(run: ObjectRun, group: list, objects: str):
    """``(mask, target, others, background)`` of a run, in its box (``[1,1,h,w]`` each; ``background`` None
    when the default background applies): ``mask`` is the harmonizer's foreground, ``target`` the object's
    own soft mask (what the run pastes), ``others`` the other objects' pixels (>= 0.5)."""
    import torch

    own = group[run.index].within(run.box)
    union, others = own.clone(), torch.zeros_like(own, dtype=torch.bool)
    for j, obj in enumerate(group):
        if j != run.index and obj.box.y0 < run.box.y1 and run.box.y0 < obj.box.y1 and \
                obj.box.x0 < run.box.x1 and run.box.x0 < obj.box.x1:
            part = obj.within(run.box)
            torch.maximum(union, part, out=union)
            others |= part >= 0.5
    if run.count == 1 and len(group) > 1:  # together without crops: the union is the object
        return union, union, torch.zeros_like(others), None
    if objects == "together":
        return union, own, others, None
    background = (1.0 - union) if bool(others.any()) else None
    return own, own, others, background


# ----------------------------------------------------------------------------- references


def item_reference(reference: Reference | None, item: int, batch: int) -> Reference | None:
    """The part of ``reference`` that belongs to composite ``item`` of ``batch`` (all of it for one composite)."""
    from ..imaging import to_image_tensor, to_mask_tensor

    if reference is None:
        return None
    if reference.image is not None:
        photo = to_image_tensor(reference.image, "reference image")
        region = None if reference.image_mask is None else to_mask_tensor(reference.image_mask, "reference image mask")
        n = max(int(photo.shape[0]), 1 if region is None else int(region.shape[0]))
        check_batches(batch, n, "reference images")
        return Reference(image=_pick(photo, item, batch), image_mask=_pick(region, item, batch))
    region = to_mask_tensor(reference.mask, "reference_mask")
    check_batches(batch, int(region.shape[0]), "reference masks")
    return Reference(mask=_pick(region, item, batch))


def _pick(t, item: int, batch: int):
    if t is None or batch == 1 or t.shape[0] == 1:
        return t
    return t[item:item + 1]


def run_reference(run: ObjectRun, reference: Reference | None, background, composite_item, crop: str):
    """What a run's colours come from: the caller's reference (a region of the composite, with crops, as a
    reference photo that is the whole composite), else the run's background (None: the default)."""
    if reference is None:
        return None if background is None else Reference(mask=background)
    if reference.mask is not None and crop != "none":
        return Reference(image=composite_item, image_mask=reference.mask)
    return reference


# ----------------------------------------------------------------------------- the pipeline


def check_objects(composite, mask, objects: str, crop: str, context: float, max_side: int, resize_mode: str = "fit",
                  feather: int | None = None, model_grid: bool = True) -> list:
    """Every check of the objects path that needs no network (settings, objects, crops; ``model_grid``: that
    each object survives the working size), e.g. for a command line before it loads weights. -> the runs."""
    return _plan(composite, mask, objects, crop, context, max_side, resize_mode, feather, model_grid)[2]


def _plan(composite, mask, objects, crop, context, max_side, resize_mode, feather, model_grid):
    from ..imaging import to_image_tensor, to_mask_tensor

    settings = check_options(objects, crop, context)
    comp = to_image_tensor(composite, "composite")
    soft = to_mask_tensor(mask, "mask").to(comp.device)
    if tuple(soft.shape[-2:]) != tuple(comp.shape[-2:]):
        raise R2RUserError(f"The mask size {tuple(soft.shape[-1:-3:-1])} (WxH) does not match the composite size "
                           f"{tuple(comp.shape[-1:-3:-1])} (WxH); expected the same size. Resize the mask to the "
                           "image (nearest-neighbour) or use the mask that belongs to this composite.")
    groups = split_objects(soft, int(comp.shape[0]))
    runs = plan_runs(groups, tuple(comp.shape[-2:]), settings[0], settings[1], settings[2], max_side, resize_mode,
                     feather, model_grid)
    return comp, groups, runs, settings


def harmonize_objects(pipe, composite, mask, *, objects: str = "each", crop: str = "none", context: float = 2.0,
                      reference: Reference | None = None, generator=None, num_inference_steps: int = 10,
                      max_side: int = 1024, feather: int | None = None, resize_mode: str = "fit",
                      canny_at: str = "original", scheduler: str | None = None, strength: float = 1.0,
                      callback=None, preview=None, timestep_batch: int | None = None, skips: str = "auto",
                      residuals: str = "auto", fullres_mode: str = "auto", noise_device: str = "cpu",
                      paste_back: bool = True) -> ObjectsOutput:
    """Several objects / per-object crops over ``pipe``'s stages (``pipe(..., objects=, crop=, context=)``
    calls this; arguments as :meth:`R2RPipeline.__call__`, already checked there; ``max_side`` resolved)."""
    import torch

    from ..imaging.pasteback import default_feather, feather_alpha
    from .noise import noise_source
    from .reference import prepare_reference

    if not paste_back:
        raise R2RUserError("objects=each and crop=per_object compose the results through the masks, so they need "
                           "paste_back on; turn it on, or use objects=together with crop=none.")
    comp, groups, runs, (objects, crop, context) = _plan(composite, mask, objects, crop, context, max_side,
                                                         resize_mode, feather, True)
    batch = int(comp.shape[0])
    plan = pipe.plan(num_inference_steps, scheduler)
    source = noise_source(generator, noise_device)
    first = pipe.prepare(runs[0].box.of(comp[:1]), run_masks(runs[0], groups[0], objects)[0], max_side,
                         resize_mode, canny_at)
    references = [item_reference(reference, b, batch) for b in range(batch)]
    for b, ref in enumerate(references):  # the reference checked (size, region, batch) before any work
        if ref is not None:
            prepare_reference(run_reference(runs[0], ref, None, comp[b:b + 1], crop), first)
    n_out = max(1, *(1 if r is None else _reference_count(r) for r in references)) if batch == 1 else 1
    source.generators(n_out * batch if batch > 1 else n_out, pipe.device)  # a generator list's length, checked
    total = plan.evaluations * len(runs)
    log.info("objects=%s crop=%s: %d run(s) for %d composite(s)", objects, crop, len(runs), batch)
    outs: list = []
    encodings: dict = {}
    done = 0
    for b in range(batch):
        original = comp[b:b + 1].float()
        out = original.expand(n_out, -1, -1, -1).clone()
        for run in (r for r in runs if r.item == b):
            run_mask, target, others, background = run_masks(run, groups[b], objects)
            prepared = first if run is runs[0] else pipe.prepare(run.box.of(comp[b:b + 1]), run_mask, max_side,
                                                                 resize_mode, canny_at)
            key = (b, run.box, tuple(prepared.geometry.working_size))
            if key not in encodings:
                encodings.clear()  # one picture's encoding kept at a time (objects=each without crops share it)
                encodings[key] = pipe.encode(prepared, skips=skips)
            ref = run_reference(run, references[b], background, comp[b:b + 1], crop)
            res = pipe.residuals(prepared, plan, strength, ref, placement=residuals, timestep_batch=timestep_batch)
            step = None if callback is None else (lambda i, n, d=done: callback(d + i, total))
            latents = pipe.sample(prepared, encodings[key], res, plan, _item_noise(source, b, batch), callback=step,
                                  preview=preview, free_residuals=True)
            del res
            working = pipe.decode(latents, encodings[key], prepared)
            result = pipe.restore(working, prepared, paste_back=True, feather=feather, fullres_mode=fullres_mode)
            width = default_feather(prepared.geometry) if feather is None else int(feather)
            run_alpha = feather_alpha(prepared.original_mask.float(), width)
            alpha = target_alpha(target.to(run_alpha.device), others.to(run_alpha.device), width)
            region = run.box.of(out)
            region.copy_(compose(region, run.box.of(original), result.to(out.device), run_alpha.to(out.device),
                                 alpha.to(out.device)))
            done += plan.evaluations
        outs.append(out)
    return ObjectsOutput(images=outs[0] if len(outs) == 1 else torch.cat(outs), working_images=None, runs=runs)


def _reference_count(reference: Reference) -> int:
    """How many references (one result each for one composite)."""
    from ..imaging import to_image_tensor, to_mask_tensor

    if reference.image is not None:
        regions = 1 if reference.image_mask is None else int(to_mask_tensor(reference.image_mask).shape[0])
        return max(int(to_image_tensor(reference.image).shape[0]), regions)
    return int(to_mask_tensor(reference.mask).shape[0])


def _item_noise(source, item: int, batch: int):
    """Composite ``item``'s noise: its own seed / generator when one was given per composite."""
    from .noise import GeneratorNoise, ItemSeeds, Seed

    if batch == 1:
        return source
    if isinstance(source, ItemSeeds):
        return Seed(source.seeds[item], source.device)
    if isinstance(source, GeneratorNoise) and isinstance(source.generator, (list, tuple)):
        return GeneratorNoise(source.generator[item])
    return source


# ----------------------------------------------------------------------------- the weight-free harmonizer


def harmonize_statistics_objects(composite, mask, strength: float = 1.0, *, objects: str = "each",
                                 crop: str = "none", context: float = 2.0, reference_mask=None,
                                 reference_image=None, reference_image_mask=None, max_side: int = 1024):
    """:func:`r2r.blending.harmonize_statistics` per object (``objects``, ``crop``, ``context`` as for the
    pipeline; ``max_side`` only shapes the crops). ``composite`` ``[B,3,H,W]`` in [0, 1] (or anything
    :func:`r2r.imaging.to_image_tensor` takes) -> ``[N,3,H,W]`` float32; no feather band (the weight-free
    harmonizer pastes through the soft mask itself)."""
    import torch

    from ..blending import harmonize_statistics_torch

    comp, groups, runs, (objects, crop, context) = _plan(composite, mask, objects, crop, context, max_side, "fit",
                                                         None, False)
    if reference_mask is not None and reference_image is not None:
        raise R2RUserError("Give either reference_mask (a region of the composite) or reference_image (another "
                           "photo), not both.")
    if reference_image_mask is not None and reference_image is None:
        raise R2RUserError("reference_image_mask needs the photo it belongs to: pass reference_image= too.")
    batch = int(comp.shape[0])
    reference = None
    if reference_image is not None:
        reference = Reference(image=reference_image, image_mask=reference_image_mask)
    elif reference_mask is not None:
        reference = Reference(mask=reference_mask)
    outs = []
    for b in range(batch):
        original = comp[b:b + 1]
        ref = item_reference(reference, b, batch)
        out = None
        for run in (r for r in runs if r.item == b):
            run_mask, target, others, background = run_masks(run, groups[b], objects)
            source = run_reference(run, ref, background, original, crop)
            kwargs: dict = {}
            if source is not None and source.image is not None:
                kwargs = {"reference_image": source.image, "reference_image_mask": source.image_mask}
            elif source is not None:  # the run's background (in its box) or the caller's region (cut to it)
                region = source.mask
                kwargs = {"reference_mask": run.box.of(region) if source is ref else region}
            result = harmonize_statistics_torch(run.box.of(original), run_mask, strength, **kwargs)
            if out is None:
                out = original.expand(result.shape[0], -1, -1, -1).clone()
            region = run.box.of(out)
            region.copy_(compose(region, run.box.of(original), result, run_mask, target_alpha(target, others, 0)))
        outs.append(original if out is None else out)
    return outs[0] if len(outs) == 1 else torch.cat(outs)
