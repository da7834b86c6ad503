"""R2R Example Image: a bundled composite and its mask, so every template runs with no files placed
by the user (r2r/assets/examples; where they come from: r2r/assets/PROVENANCE.md)."""

from __future__ import annotations

import os

from comfy_api.v0_0_2 import io

from ..r2r.errors import R2RUserError
from ._schema import R2RNode, choice

EXAMPLES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "r2r", "assets", "examples")
COMPOSITE_SUFFIX = "_composite.png"
MASK_SUFFIX = "_mask.png"


def example_names() -> list[str]:
    """The bundled examples: ``<name>_composite.png`` with ``<name>_mask.png`` beside it."""
    if not os.path.isdir(EXAMPLES_DIR):
        return []
    names = []
    for fn in sorted(os.listdir(EXAMPLES_DIR)):
        if fn.endswith(COMPOSITE_SUFFIX):
            name = fn[: -len(COMPOSITE_SUFFIX)]
            if os.path.isfile(os.path.join(EXAMPLES_DIR, name + MASK_SUFFIX)):
                names.append(name)
    return names


class R2RExampleImage(R2RNode):
    SEARCH_ALIASES = ("example", "sample image", "demo", "test image", "composite", "harmonize")

    @classmethod
    def define_schema(cls):
        names = example_names()
        return cls.schema(
            node_id="R2RExampleImage",
            display_name="R2R Example Image",
            category="R2R",
            description="A ready-made composite (a photo whose object was recoloured so it does not fit) and its "
                        "mask, bundled with the pack, to try R2R without preparing files. To use your own "
                        "picture, replace this node with Load Image and paint the object in the MaskEditor "
                        "(right-click -> Open in MaskEditor).",
            inputs=[
                io.Combo.Input("example", options=names, default=names[0] if names else None,
                               tooltip="Which bundled example: astronaut (cold, washed-out suit), coffee (green "
                                       "cup), motorcycle (dark, blue bike)."),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="The composite (IMAGE, 0..1)."),
                io.Mask.Output(display_name="mask", tooltip="The object's mask: white (1) = the pasted object, "
                                                            "black (0) = background (R2R's convention; no "
                                                            "invert_mask needed)."),
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
        rgb = read_image(os.path.join(EXAMPLES_DIR, example + COMPOSITE_SUFFIX))
        mask = read_mask(os.path.join(EXAMPLES_DIR, example + MASK_SUFFIX))
        image = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32) / 255.0)[None]
        m = torch.from_numpy((mask >= 128).astype(np.float32))[None]
        return io.NodeOutput(image, m)


NODES = [R2RExampleImage]
