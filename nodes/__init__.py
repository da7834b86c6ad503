"""The node registry: every node class of the pack, by its frozen id.

Node ids are frozen once shipped: never rename one; add ``<Id>V2`` and keep the old class.
"""

from . import _host
from .data import R2RRandomPoissonBlend, R2RSaveHarmonizationDataset, R2RWeightFreeHarmonize
from .harmonize import R2RClearVAEDecode, R2RClearVAEEncode, R2RHarmonize, R2RMACAControllerApply, R2RSampler
from .loaders import R2RCheckpointLoader, R2RClearVAELoader, R2RControllerLoader, R2RUNetLoader

_host.register_model_folder()

NODE_CLASS_MAPPINGS: dict = {
    "R2RCheckpointLoader": R2RCheckpointLoader,
    "R2RClearVAELoader": R2RClearVAELoader,
    "R2RControllerLoader": R2RControllerLoader,
    "R2RUNetLoader": R2RUNetLoader,
    "R2RClearVAEEncode": R2RClearVAEEncode,
    "R2RMACAControllerApply": R2RMACAControllerApply,
    "R2RSampler": R2RSampler,
    "R2RClearVAEDecode": R2RClearVAEDecode,
    "R2RHarmonize": R2RHarmonize,
    "R2RWeightFreeHarmonize": R2RWeightFreeHarmonize,
    "R2RRandomPoissonBlend": R2RRandomPoissonBlend,
    "R2RSaveHarmonizationDataset": R2RSaveHarmonizationDataset,
}

NODE_DISPLAY_NAME_MAPPINGS: dict = {
    "R2RCheckpointLoader": "R2R Checkpoint Loader",
    "R2RClearVAELoader": "R2R Clear-VAE Loader",
    "R2RControllerLoader": "R2R Harmony Controller Loader",
    "R2RUNetLoader": "R2R U-Net Loader",
    "R2RClearVAEEncode": "R2R Clear-VAE Encode",
    "R2RMACAControllerApply": "R2R MACA Controller Apply",
    "R2RSampler": "R2R Sampler",
    "R2RClearVAEDecode": "R2R Clear-VAE Decode",
    "R2RHarmonize": "R2R Harmonize",
    "R2RWeightFreeHarmonize": "R2R Weight-Free Harmonize",
    "R2RRandomPoissonBlend": "R2R Random Poisson Blend",
    "R2RSaveHarmonizationDataset": "R2R Save Harmonization Dataset",
}
