"""Weight-free nodes: Random Poisson Blend (training composites), the statistics
harmonizer, and Save Harmonization Dataset."""

from __future__ import annotations

import os

from ..r2r.errors import R2RUserError
from . import _convert, _host

MASK_TIP = "Foreground mask: 1 (white) = the object region. A batch is processed item by item."


def _np_mask(m_b1hw_i):
    return m_b1hw_i[0].detach().cpu().numpy().astype("float32")


class R2RRandomPoissonBlend:
    DESCRIPTION = ("Random Poisson Blending (RPB): makes a training composite from a real photo by Poisson-blending "
                   "the foreground with colours and illumination taken from another region (a random one, or "
                   "reference_image / reference_mask when connected). Outputs the composite, its mask and the "
                   "real image (the ground truth). Batch-aware; seed + batch index make each item reproducible.")
    CATEGORY = "R2R/data"
    FUNCTION = "blend"
    RETURN_TYPES = ("IMAGE", "MASK", "IMAGE")
    RETURN_NAMES = ("composite", "mask", "real")
    OUTPUT_TOOLTIPS = ("The synthetic composite (foreground recoloured).", "The foreground mask (1 = foreground).",
                       "The untouched real image (ground truth for training).")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The real photo(s)."}),
                "mask": ("MASK", {"tooltip": MASK_TIP}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "step": 1,
                                 "control_after_generate": True,
                                 "tooltip": "Random seed; item i of a batch uses seed + i."}),
                "strength": ("FLOAT", {"default": 0.75, "min": 0.0, "max": 1.0, "step": 0.05,
                                       "tooltip": "How much of the blended colour replaces the original inside the "
                                                  "mask (alpha): 0 = unchanged, 1 = full transfer."}),
                "invert_mask": ("BOOLEAN", {"default": False, "tooltip": "Flip the mask (1 - mask), e.g. for Load "
                                                                         "Image's MASK which is 1 - alpha."}),
            },
            "optional": {
                "reference_image": ("IMAGE", {"tooltip": "Optional image to take the colours from (any size; "
                                                         "resized to the image). Default: another region of the "
                                                         "image itself."}),
                "reference_mask": ("MASK", {"tooltip": "Optional region (1 = white) of reference_image (or of the "
                                                       "image when no reference_image) to take the colours from; "
                                                       "default: a random region."}),
            },
        }

    def blend(self, image, mask, seed=0, strength=0.75, invert_mask=False, reference_image=None,
              reference_mask=None):
        import numpy as np
        import torch

        from ..r2r.blending import random_poisson_blend

        real = _convert.image_to_nchw(image, "image")
        m = _convert.mask_to_b1hw(mask, real.shape[-2:], invert=invert_mask, name="mask")
        named = [("image", real), ("mask", m)]
        ref = rmask = None
        if reference_image is not None:
            ref = _convert.image_to_nchw(reference_image, "reference_image")
            named.append(("reference_image", ref))
        if reference_mask is not None:
            # the region is picked in the reference image when there is one, else in the image itself
            hw = ref.shape[-2:] if ref is not None else real.shape[-2:]
            rmask = _convert.mask_to_b1hw(reference_mask, hw, name="reference_mask", allow_empty=True)
            named.append(("reference_mask", rmask))
        tensors = _convert.broadcast_batch(*named)
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
        return (comp.clamp(0, 1), (torch.stack(masks) > 0.5).float(), torch.stack(reals).clamp(0, 1))


class R2RWeightFreeHarmonize:
    DESCRIPTION = ("Weight-free harmonizer: matches the foreground's colour statistics to the background (or to "
                   "reference_mask's region), with no model and no download. Fast; a baseline and a "
                   "fallback when the R2R weights are not available.")
    CATEGORY = "R2R"
    FUNCTION = "harmonize"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The composite with the foreground recoloured.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The composite(s)."}),
                "mask": ("MASK", {"tooltip": "Foreground mask: 1 (white) = the pasted object."}),
                "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                       "tooltip": "0 = unchanged, 1 = full statistics transfer."}),
                "invert_mask": ("BOOLEAN", {"default": False, "tooltip": "Flip the mask (1 - mask); switch on for "
                                                                         "Load Image's MASK (1 - alpha)."}),
            },
            "optional": {
                "reference_mask": ("MASK", {"tooltip": "Optional region (1 = white) whose statistics to match "
                                                       "instead of the whole background."}),
            },
        }

    def harmonize(self, image, mask, strength=1.0, invert_mask=False, reference_mask=None):
        import numpy as np
        import torch

        from ..r2r.blending import harmonize_statistics

        comp = _convert.image_to_nchw(image, "image")
        m = _convert.mask_to_b1hw(mask, comp.shape[-2:], invert=invert_mask, name="mask")
        if reference_mask is not None:
            ref = _convert.mask_to_b1hw(reference_mask, comp.shape[-2:], name="reference_mask", allow_empty=True)
            comp, m, ref = _convert.broadcast_batch(("image", comp), ("mask", m), ("reference_mask", ref))
        else:
            comp, m = _convert.broadcast_batch(("image", comp), ("mask", m))
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
        return (torch.stack(out).clamp(0, 1),)


class R2RSaveHarmonizationDataset:
    DESCRIPTION = ("Appends (composite, mask, real) triplets to a dataset folder in the RPHarmony / iHarmony4 "
                   "layout (<folder>/<subset>/composite_images|masks|real_images + train/test .jsonl and .txt). "
                   "Files are written atomically and the index files stay consistent, so a graph run many times "
                   "(or several at once) builds a training set. The folder is relative to ComfyUI's output folder.")
    CATEGORY = "R2R/data"
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ()

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "composite": ("IMAGE", {"tooltip": "The composites (e.g. from Random Poisson Blend)."}),
                "mask": ("MASK", {"tooltip": "Foreground masks (1 = foreground)."}),
                "real": ("IMAGE", {"tooltip": "The real images (ground truth)."}),
                "dataset_folder": ("STRING", {"default": "r2r_datasets/MyHarmony",
                                              "tooltip": "Dataset root, relative to ComfyUI's output folder."}),
                "subset": ("STRING", {"default": "R-Custom", "tooltip": "Subset folder name (like R-ADE20K); "
                                                                        "letters, digits, '-' and '.'."}),
                "split": (["train", "test"], {"default": "train", "tooltip": "Which index (train/test .jsonl + "
                                                                             ".txt) lists the new items."}),
                "image_format": (["jpg", "png"], {"default": "jpg", "tooltip": "jpg (quality 100, like the "
                                                                               "official datasets) or png."}),
            }
        }

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
                f"R2R Save Harmonization Dataset: dataset_folder {dataset_folder!r} points outside the output "
                f"folder ({base}). Use a relative path without '..'."
            )
        return root

    def save(self, composite, mask, real, dataset_folder="r2r_datasets/MyHarmony", subset="R-Custom",
             split="train", image_format="jpg"):
        from ..r2r.dataset import HarmonizationDatasetWriter

        comp = _convert.image_to_nchw(composite, "composite")
        rl = _convert.image_to_nchw(real, "real")
        if tuple(comp.shape[-2:]) != tuple(rl.shape[-2:]):
            raise R2RUserError(
                f"R2R Save Harmonization Dataset: composite is {comp.shape[-1]}x{comp.shape[-2]} but real is "
                f"{rl.shape[-1]}x{rl.shape[-2]}; a triplet needs the same size."
            )
        m = _convert.mask_to_b1hw(mask, comp.shape[-2:], name="mask")
        comp, m, rl = _convert.broadcast_batch(("composite", comp), ("mask", m), ("real", rl))
        root = self._root(dataset_folder)
        writer = HarmonizationDatasetWriter(root, subset.strip(), image_format=image_format)
        saved = []
        for i in range(comp.shape[0]):
            _host.check_interrupt()
            res = writer.add(_convert.to_uint8_hwc(comp[i]), _np_mask(m[i]) >= 0.5, _convert.to_uint8_hwc(rl[i]),
                             split=split)
            saved.append(res["file_name"])
        text = f"saved {len(saved)} triplet(s) to {root} ({split}): " + ", ".join(saved)
        return {"ui": {"text": [text]}, "result": ()}
