"""Every R2R node's identity in one table: id, name in the UI, menu, search words, deprecation.

The node id is the class name and never changes (saved workflows name it); the display name,
the menu (category) and the search words may. ``R2RNode.schema`` (``_schema.py``) fills a node's
schema from its row here and takes the node's description from its class docstring (a V1/V2 pair
shares one through ``description=``), so a node class holds only what it does: its inputs, outputs and
``execute``.
"""

from __future__ import annotations

from typing import NamedTuple


class NodeCard(NamedTuple):
    display_name: str
    category: str
    #: words the node search should find the node by (besides its name); none for deprecated nodes
    search_aliases: tuple[str, ...] = ()
    #: hidden from search and the menus; kept so that saved workflows still load
    deprecated: bool = False


HARMONIZE_ALIASES = ("harmonize", "harmonization", "relight", "color match", "colour match", "composite", "blend",
                     "match lighting", "paste object", "region2region", "match look of photo")

CARDS: dict[str, NodeCard] = {
    # loaders
    "R2RCheckpointLoader": NodeCard("R2R Checkpoint Loader", "R2R/loaders",
                                    ("load model", "checkpoint", "region2region", "harmonize", "relight")),
    "R2RClearVAELoader": NodeCard("R2R Clear-VAE Loader", "R2R/loaders", ("load vae", "clear vae", "region2region")),
    "R2RControllerLoader": NodeCard("R2R Harmony Controller Loader", "R2R/loaders",
                                    ("load controlnet", "harmony controller", "maca", "region2region")),
    "R2RUNetLoader": NodeCard("R2R U-Net Loader", "R2R/loaders", ("load unet", "fine-tuned", "region2region")),
    # examples
    "R2RExampleImage": NodeCard("R2R Example Image", "R2R",
                                ("example", "sample image", "demo", "test image", "composite", "harmonize")),
    "R2RExampleClip": NodeCard("R2R Example Clip", "R2R",
                               ("example clip", "video", "sample video", "demo", "frames", "harmonize video")),
    # the one-node flow and the four-node chain
    "R2RHarmonize": NodeCard("R2R Harmonize (relight, color match)", "R2R", HARMONIZE_ALIASES),
    "R2RClearVAEEncode": NodeCard("R2R Clear-VAE Encode (pasted composite)", "R2R/vae",
                                  ("vae encode", "encode composite", "clear vae", "harmonize")),
    "R2RMACAControllerApplyV2": NodeCard("R2R MACA Controller Apply", "R2R/conditioning",
                                         ("controlnet", "harmony controller", "maca", "reference region",
                                          "color reference", "match look of photo", "reference photo", "harmonize")),
    "R2RSampler": NodeCard("R2R Sampler", "R2R/sampling", ("sampler", "denoise", "ksampler", "harmonize")),
    "R2RClearVAEDecodeV2": NodeCard("R2R Clear-VAE Decode", "R2R/vae",
                                    ("vae decode", "decode", "paste back", "clear vae", "harmonize")),
    "R2RMACAControllerApply": NodeCard("R2R MACA Controller Apply (old)", "R2R/conditioning", deprecated=True),
    "R2RClearVAEDecode": NodeCard("R2R Clear-VAE Decode (old)", "R2R/vae", deprecated=True),
    # the KSampler path
    "R2RUNetToModel": NodeCard("R2R Model for KSampler", "R2R/ksampler",
                               ("ksampler", "model", "unet", "inpainting model", "sd1.5", "harmonize")),
    "R2RConditioning": NodeCard("R2R Conditioning", "R2R/ksampler",
                                ("conditioning", "controlnet", "harmony controller", "maca", "inpaint conditioning",
                                 "ksampler", "harmonize")),
    # weight-free colour match and training data
    "R2RWeightFreeHarmonize": NodeCard("R2R Color Match (weight-free)", "R2R",
                                       ("harmonize", "color match", "colour match", "match colors", "relight",
                                        "composite", "blend", "no model")),
    "R2RRandomPoissonBlend": NodeCard("R2R Random Poisson Blend", "R2R/data",
                                      ("poisson blend", "training data", "synthetic composite", "dataset", "augment",
                                       "blend")),
    "R2RSaveHarmonizationDataset": NodeCard("R2R Save Harmonization Dataset", "R2R/data",
                                            ("save dataset", "training set", "iharmony4", "rpharmony",
                                             "export triplets")),
}
