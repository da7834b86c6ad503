"""R2R Example Image: a bundled composite and its mask, so every template runs with no files placed
by the user (r2r/assets/examples; where they come from: r2r/assets/PROVENANCE.md). Besides the
composites (``<name>_composite.png`` + ``<name>_mask.png``) it offers the pieces to build one in the
graph: a cut-out with its mask and a background photo (``<name>_image.png`` [+ ``<name>_mask.png``];
no mask file = an empty mask: nothing is pasted in that picture)."""

from __future__ import annotations

import os

from comfy_api.v0_0_2 import io

from ..r2r.errors import R2RUserError
from ._schema import R2RNode, choice

EXAMPLES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "r2r", "assets", "examples")
#: the order of the templates in the Templates browser (nodes/_host.order_templates): the starter first, then
#: from building and fixing a composite to the special cases; templates not listed follow alphabetically
TEMPLATE_ORDER = (
    "Harmonize a pasted object",
    "Paste an object onto a photo and harmonize it",
    "Quick colour match, no model",
    "Harmonize using a reference region",
    "Match the look of another photo",
    "Harmonize several pasted objects",
    "Harmonize a large picture, keep every detail",
    "Harmonize a video clip",
    "Harmonize with KSampler",
    "Make a harmonization training set",
)
COMPOSITE_SUFFIX = "_composite.png"
IMAGE_SUFFIX = "_image.png"
MASK_SUFFIX = "_mask.png"


def example_names() -> list[str]:
    """The bundled examples: ``<name>_composite.png`` with ``<name>_mask.png`` beside it, and the pieces for
    building a composite, ``<name>_image.png`` (its mask optional)."""
    if not os.path.isdir(EXAMPLES_DIR):
        return []
    names = []
    for fn in sorted(os.listdir(EXAMPLES_DIR)):
        if fn.endswith(COMPOSITE_SUFFIX):
            name = fn[: -len(COMPOSITE_SUFFIX)]
            if os.path.isfile(os.path.join(EXAMPLES_DIR, name + MASK_SUFFIX)):
                names.append(name)
        elif fn.endswith(IMAGE_SUFFIX):
            names.append(fn[: -len(IMAGE_SUFFIX)])
    return sorted(names)


class R2RExampleImage(R2RNode):
    """A ready-made composite (a photo whose object was recoloured so it does not fit) and its mask, bundled with
    the pack, to try R2R without preparing files; or the pieces to paste one together in the graph: a cut-out
    with its mask (cup_cutout) and a background photo (rocket_background). To use your own picture, replace this
    node with Load Image and paint the object in the MaskEditor (right-click -> Open in MaskEditor).
    """

    @classmethod
    def define_schema(cls):
        names = example_names()
        return cls.schema(
            inputs=[
                io.Combo.Input("example", options=names, default=names[0] if names else None,
                               tooltip="Which bundled example. Composites (the object recoloured so it does not "
                                       "fit): astronaut (cold, washed-out suit), coffee (green cup), motorcycle "
                                       "(dark, blue bike), astronaut_objects (three objects, each recoloured: the "
                                       "patch, the helmet, the model's fuel tank). To build a composite yourself: "
                                       "cup_cutout (a cut-out cup and its mask) and rocket_background (a photo to "
                                       "paste it into; its mask is empty). A photo whose look to match (for "
                                       "reference_image): cat_reference (warm light; its mask is empty)."),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="The composite (IMAGE, 0..1)."),
                io.Mask.Output(display_name="mask", tooltip="The object's mask: white (1) = the pasted object, "
                                                            "black (0) = background (R2R's convention; no "
                                                            "invert_mask needed). Empty for a background photo."),
            ],
        )

    @classmethod
    def execute(cls, example):
        import numpy as np
        import torch

        from ..r2r.fileio import read_image, read_mask

        names = example_names()
        if not names:
            raise R2RUserError(f"R2R Example Image: no bundled examples found in {EXAMPLES_DIR}; the pack "
                               "installation is incomplete. Reinstall the pack, or use Load Image instead.")
        choice(example, names, "example", "Example Image")
        path = os.path.join(EXAMPLES_DIR, example + COMPOSITE_SUFFIX)
        rgb = read_image(path if os.path.isfile(path) else os.path.join(EXAMPLES_DIR, example + IMAGE_SUFFIX))
        mask_path = os.path.join(EXAMPLES_DIR, example + MASK_SUFFIX)
        mask = read_mask(mask_path) if os.path.isfile(mask_path) else np.zeros(rgb.shape[:2], np.uint8)
        image = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32) / 255.0)[None]
        m = torch.from_numpy((mask >= 128).astype(np.float32))[None]
        return io.NodeOutput(image, m)


NODES = [R2RExampleImage]
