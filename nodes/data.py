"""Weight-free nodes: Random Poisson Blend (training composites), the statistics
harmonizer, and Save Harmonization Dataset."""

from __future__ import annotations

import os

from comfy_api.v0_0_2 import io

from ..r2r.errors import R2RUserError
from ..r2r.fileio import OutputWriteError
from . import _convert, _host, video
from ._schema import REFERENCE_TIP, SEED_MAX, R2RNode, choice, seed_in

MASK_TIP = "Foreground mask: 1 (white) = the object region. A batch is processed item by item."
INVERT_TIP = "Flip the mask (1 - mask), e.g. for Load Image's MASK of a cut-out PNG, which is 1 - alpha."
PHOTO_TIP = ("Optional: another photo whose colours the object should take (any size, at least 64 px a side; the "
             "mean and spread of its colours are matched). A batch: one per composite, or several for one "
             "composite (one result each).")
PHOTO_MASK_TIP = ("Optional: the part of reference_image to take the colours from (white = use; default: the whole "
                  "photo). Same size (or aspect ratio) as reference_image.")
SPLITS = ["train", "test"]
IMAGE_FORMATS = ["jpg", "png"]


def _np_mask(m_b1hw_i):
    return m_b1hw_i[0].detach().cpu().numpy().astype("float32")


class R2RRandomPoissonBlend(R2RNode):
    """Random Poisson Blending (RPB): makes a training composite from a real photo by Poisson-blending the object
    with colours and light taken from another region (a random one, or reference_image / reference_mask when
    connected). Outputs the composite, its mask and the real photo (the ground truth). Batch-aware; seed + batch
    index make each item reproducible.
    """

    @classmethod
    def define_schema(cls):
        return cls.schema(
            inputs=[
                io.Image.Input("image", tooltip="The real photo(s) (IMAGE, 0..1)."),
                io.Mask.Input("mask", tooltip=MASK_TIP),
                seed_in("Random seed; item i of a batch uses seed + i."),
                io.Float.Input("strength", default=0.75, min=0.0, max=1.0, step=0.05,
                               tooltip="How much of the blended colour replaces the original inside the mask "
                                       "(alpha): 0 = unchanged, 1 = full transfer."),
                io.Boolean.Input("invert_mask", default=False, tooltip=INVERT_TIP),
                io.Image.Input("reference_image", optional=True,
                               tooltip="Optional picture to take the colours from (any size; resized to the "
                                       "image). Default: another region of the image itself."),
                io.Mask.Input("reference_mask", optional=True,
                              tooltip="Optional region (1 = white) of reference_image (or of the image when no "
                                      "reference_image) to take the colours from; default: a random region."),
            ],
            outputs=[
                io.Image.Output(display_name="composite", tooltip="The synthetic composite (object recoloured)."),
                io.Mask.Output(display_name="mask", tooltip="The object mask (1 = object)."),
                io.Image.Output(display_name="real", tooltip="The untouched real photo (ground truth for "
                                                             "training)."),
            ],
        )

    @classmethod
    def execute(cls, image, mask, seed=0, strength=0.75, invert_mask=False, reference_image=None,
                reference_mask=None):
        import numpy as np
        import torch

        from ..r2r.blending import random_poisson_blend

        node = "Random Poisson Blend"
        _convert.check_number(seed, "seed", node, 0, SEED_MAX, integer=True)
        _convert.check_number(strength, "strength", node, 0.0, 1.0)
        real = _convert.image_to_nchw(image, "image", node)
        m = _convert.mask_to_b1hw(mask, real.shape[-2:], invert=invert_mask, name="mask", node=node)
        named = [("image", real), ("mask", m)]
        ref = rmask = None
        if reference_image is not None:
            ref = _convert.image_to_nchw(reference_image, "reference_image", node)
            named.append(("reference_image", ref))
        if reference_mask is not None:
            # the region is picked in the reference image when there is one, else in the image itself
            hw = ref.shape[-2:] if ref is not None else real.shape[-2:]
            rmask = _convert.mask_to_b1hw(reference_mask, hw, name="reference_mask", allow_empty=True, node=node)
            named.append(("reference_mask", rmask))
        tensors = _convert.broadcast_batch(*named, node=node)
        real, m = tensors[0], tensors[1]
        rest = tensors[2:]
        if ref is not None:
            ref = rest.pop(0)
        if rmask is not None:
            rmask = rest.pop(0)
        comps, masks, reals = [], [], []
        progress = _host.Progress(real.shape[0], desc="R2R RPB")
        try:
            for i in range(real.shape[0]):
                res = random_poisson_blend(
                    _convert.to_float_hwc(real[i]), _np_mask(m[i]) >= 0.5, seed=int(seed) + i,
                    reference=None if ref is None else _convert.to_float_hwc(ref[i]),
                    reference_mask=None if rmask is None else _np_mask(rmask[i]) >= 0.5,
                    alpha=float(strength),
                )
                comps.append(torch.from_numpy(np.asarray(res.composite, dtype=np.float32)))
                masks.append(torch.from_numpy(np.asarray(res.mask, dtype=np.float32)))
                reals.append(torch.from_numpy(np.asarray(res.real, dtype=np.float32)))
                progress.update(1)
        finally:
            progress.close()
        comp = torch.stack(comps)
        if comp.dtype != torch.float32 or comp.max() > 1.0 + 1e-6:
            comp = comp / 255.0
        return io.NodeOutput(comp.clamp(0, 1), (torch.stack(masks) > 0.5).float(), torch.stack(reals).clamp(0, 1))


class R2RWeightFreeHarmonize(R2RNode):
    """Colour match (color match) without a model: matches the pasted object's colours to the background of the
    composite (or to reference_mask's region, or to another photo: reference_image) with simple colour
    statistics: no model, no download, instant. A baseline, and a fallback when the R2R weights are not
    available.
    """

    @classmethod
    def define_schema(cls):
        return cls.schema(
            inputs=[
                io.Image.Input("image", tooltip="The composite(s) (IMAGE, 0..1)."),
                io.Mask.Input("mask", tooltip="Where the pasted object is: white (1) = the object."),
                io.Float.Input("strength", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="0 = unchanged, 1 = full colour-statistics transfer."),
                io.Boolean.Input("invert_mask", default=False, tooltip=INVERT_TIP),
                io.Mask.Input("reference_mask", optional=True, tooltip=REFERENCE_TIP),
                io.Image.Input("reference_image", optional=True, tooltip=PHOTO_TIP),
                io.Mask.Input("reference_image_mask", optional=True, tooltip=PHOTO_MASK_TIP),
                *video.temporal_inputs(),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The composite with the object recoloured.")],
        )

    @classmethod
    def execute(cls, image, mask, strength=1.0, invert_mask=False, reference_mask=None, reference_image=None,
                reference_image_mask=None, temporal="independent", keyframe_interval=8, empty_frames="skip"):
        import numpy as np
        import torch

        from ..r2r.blending import harmonize_statistics

        node = "Color Match (weight-free)"
        _convert.check_number(strength, "strength", node, 0.0, 1.0)
        video.check_temporal(node, temporal, keyframe_interval, empty_frames)
        if temporal != "independent":  # a clip: r2r.video (nodes/video.py)
            return io.NodeOutput(video.harmonize_statistics(image, mask, strength, invert_mask, (
                reference_mask, reference_image, reference_image_mask), (temporal, keyframe_interval, empty_frames),
                node))
        comp = _convert.image_to_nchw(image, "image", node)
        m = _convert.mask_to_b1hw(mask, comp.shape[-2:], invert=invert_mask, name="mask", node=node)
        if reference_image is not None or reference_image_mask is not None:
            return io.NodeOutput(_match_photo(comp, m, float(strength), reference_mask, reference_image,
                                              reference_image_mask, node))
        if reference_mask is not None:
            ref = _convert.mask_to_b1hw(reference_mask, comp.shape[-2:], name="reference_mask", allow_empty=True,
                                        node=node)
            comp, m, ref = _convert.broadcast_batch(("image", comp), ("mask", m), ("reference_mask", ref), node=node)
        else:
            comp, m = _convert.broadcast_batch(("image", comp), ("mask", m), node=node)
            ref = None
        out = []
        for i in range(comp.shape[0]):
            res = harmonize_statistics(
                _convert.to_float_hwc(comp[i]), _np_mask(m[i]), strength=float(strength),
                reference_mask=None if ref is None else _np_mask(ref[i]),
            )
            res = np.asarray(res)
            if res.dtype == np.uint8:
                res = res.astype(np.float32) / 255.0
            out.append(torch.from_numpy(res.astype(np.float32)))
            _host.check_interrupt()
        return io.NodeOutput(torch.stack(out).clamp(0, 1))


def _match_photo(comp, m, strength, reference_mask, reference_image, reference_image_mask, node):
    """The weight-free harmonizer toward another photo (its region), through r2r.blending's tensor path: one
    photo for all composites, one per composite, or one composite with several photos; every input checked
    there before any item is harmonized."""
    from ..r2r.blending import harmonize_statistics

    comp, m = _convert.broadcast_batch(("image", comp), ("mask", m), node=node)
    photo = region = None
    if reference_image is not None:
        photo = _convert.image_to_nchw(reference_image, "reference_image", node)
        if reference_image_mask is not None:
            region = _convert.mask_to_b1hw(reference_image_mask, photo.shape[-2:], name="reference_image_mask",
                                           allow_empty=True, node=node)
    try:
        out = harmonize_statistics(comp, m, strength, reference_mask=reference_mask, reference_image=photo,
                                   reference_image_mask=region if photo is not None else reference_image_mask)
    except R2RUserError as exc:
        raise R2RUserError(f"R2R {node}: {exc}") from None
    return out.permute(0, 2, 3, 1).clamp(0, 1)


class R2RSaveHarmonizationDataset(R2RNode):
    """Appends (composite, mask, real) triplets to a dataset folder in the RPHarmony / iHarmony4 layout
    (<folder>/<subset>/composite_images|masks|real_images + train/test .jsonl and .txt). Files are written
    atomically and the index files stay consistent, so a graph run many times (or several at once) builds a
    training set. The folder is relative to ComfyUI's output folder.
    """

    @classmethod
    def define_schema(cls):
        return cls.schema(
            is_output_node=True,
            inputs=[
                io.Image.Input("composite", tooltip="The composites (e.g. from Random Poisson Blend)."),
                io.Mask.Input("mask", tooltip="Object masks (1 = object)."),
                io.Image.Input("real", tooltip="The real photos (ground truth)."),
                io.String.Input("dataset_folder", default="r2r_datasets/MyHarmony",
                                tooltip="Dataset root, relative to ComfyUI's output folder."),
                io.String.Input("subset", default="R-Custom",
                                tooltip="Subset folder name (like R-ADE20K); letters, digits, '-' and '.'."),
                io.Combo.Input("split", options=SPLITS, default="train",
                               tooltip="Which index (train/test .jsonl + .txt) lists the new items."),
                io.Combo.Input("image_format", options=IMAGE_FORMATS, default="jpg",
                               tooltip="jpg (quality 100, like the official datasets) or png."),
            ],
            outputs=[],
        )

    @staticmethod
    def _root(dataset_folder: str) -> str:
        base = os.path.realpath(_host.output_dir())
        folder = (dataset_folder or "").strip()
        if not folder:
            raise R2RUserError("R2R Save Harmonization Dataset: dataset_folder is empty; give a folder name such as "
                               "'r2r_datasets/MyHarmony' (relative to the output folder).")
        root = os.path.realpath(os.path.join(base, folder))
        if os.path.commonpath([base, root]) != base:
            raise R2RUserError(
                f"R2R Save Harmonization Dataset: dataset_folder {dataset_folder!r} resolves to {root}, outside "
                f"the output folder ({base}) (an absolute path, '..' or a symbolic link leading out of it). Use a "
                "relative path without '..' whose folders are not links to elsewhere. Nothing was written."
            )
        return root

    @classmethod
    def execute(cls, composite, mask, real, dataset_folder="r2r_datasets/MyHarmony", subset="R-Custom",
                split="train", image_format="jpg"):
        from ..r2r.dataset import HarmonizationDatasetWriter

        node = "Save Harmonization Dataset"
        choice(split, SPLITS, "split", node)
        choice(image_format, IMAGE_FORMATS, "image_format", node)
        comp = _convert.image_to_nchw(composite, "composite", node)
        rl = _convert.image_to_nchw(real, "real", node)
        if tuple(comp.shape[-2:]) != tuple(rl.shape[-2:]):
            raise R2RUserError(
                f"R2R Save Harmonization Dataset: composite is {comp.shape[-1]}x{comp.shape[-2]} but real is "
                f"{rl.shape[-1]}x{rl.shape[-2]}; a triplet needs the same size."
            )
        m = _convert.mask_to_b1hw(mask, comp.shape[-2:], name="mask", node=node)
        comp, m, rl = _convert.broadcast_batch(("composite", comp), ("mask", m), ("real", rl), node=node)
        root = cls._root(dataset_folder)
        saved = []
        try:
            # every folder and index file must resolve inside the output folder (no symbolic link leading out)
            writer = HarmonizationDatasetWriter(root, subset.strip(), image_format=image_format,
                                                confine_to=os.path.realpath(_host.output_dir()))
            for i in range(comp.shape[0]):
                _host.check_interrupt()
                res = writer.add(_convert.to_uint8_hwc(comp[i]), _np_mask(m[i]) >= 0.5,
                                 _convert.to_uint8_hwc(rl[i]), split=split)
                saved.append(res["file_name"])
        except OutputWriteError as exc:  # disk full, name too long...: the finished triplets stay listed
            err = OutputWriteError(f"R2R Save Harmonization Dataset: {exc} The {len(saved)} triplet(s) of this "
                                   f"batch saved before stay in {root}.")
            err.errno, err.strerror, err.filename = exc.errno, exc.strerror, exc.filename
            raise err from None
        except R2RUserError as exc:
            raise R2RUserError(f"R2R Save Harmonization Dataset: {exc}") from None
        text = f"saved {len(saved)} triplet(s) to {root} ({split}): " + ", ".join(saved)
        # the confirmation the UI shows on the node: the saved composites (files in the output folder)
        base = os.path.realpath(_host.output_dir())
        images = []
        for name in saved:
            sub, fname = os.path.split(os.path.relpath(os.path.join(root, name), base))
            images.append({"filename": fname, "subfolder": sub.replace(os.sep, "/"), "type": "output"})
        return io.NodeOutput(ui={"images": images, "text": [text]})


NODES = [R2RWeightFreeHarmonize, R2RRandomPoissonBlend, R2RSaveHarmonizationDataset]
