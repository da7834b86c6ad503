"""The R2R networks as diffusers models (weight-compatible with the official release).

* :class:`ClearVAE` - AutoencoderKL + encoder skips + :class:`AdaptiveFilters` + decoder skip fusion
* :class:`HarmonyController` - ControlNetModel + 4 :class:`MACA` modules, hint-only input
* the U-Net is the stock ``diffusers.UNet2DConditionModel`` (9 input channels)
"""

from .clear_vae import ClearVAE, SkipConv2d, SkipResnetBlock2D
from .controller import HarmonyController
from .filters import AdaptiveFilters
from .maca import MACA

__all__ = ["AdaptiveFilters", "ClearVAE", "HarmonyController", "MACA", "SkipConv2d", "SkipResnetBlock2D"]
