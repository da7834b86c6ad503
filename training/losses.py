"""Training losses (ref §b.6, §c.5).

* :func:`masked_epsilon_loss` -- the DiffHarmony/R2R masked, area-reweighted epsilon MSE.
* :class:`VGG16Features` -- VGG16 ``features[:23]`` (conv1_1 ... relu4_3) in plain torch, loading
  torchvision's ``vgg16`` state dict (``features.N.weight/bias``) or a safetensors copy of it.
  torchvision itself is never imported.
* :class:`ContrastiveRegularization` -- the Clear-VAE CR loss (positive = real foreground,
  negative = composite foreground).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from r2r.errors import R2RUserError

#: torchvision's ImageNet VGG16 checkpoint (what the official CR loss uses).
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
#: value of ``loss.vgg16`` that asks for random VGG weights (tests only, see :func:`load_vgg16_features`).
RANDOM_VGG = "random-weights-for-tests"
#: environment variable that must be "1" for RANDOM_VGG to be accepted.
ALLOW_RANDOM_VGG_ENV = "R2R_ALLOW_RANDOM_VGG"

# torchvision vgg16 "D" configuration, truncated after relu4_3 (features[:23]).
_VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512]


def masked_epsilon_loss(eps_pred: torch.Tensor, eps: torch.Tensor, latent_mask: torch.Tensor) -> torch.Tensor:
    """Masked, area-reweighted epsilon MSE (ref §c.5, same as DiffHarmony).

    Per sample and channel ``mean_hw((m*eps_pred - m*eps)^2) * clamp(h*w / sum(m), 1, 5)``, then the mean.
    ``latent_mask`` is ``[B,1,h,w]`` in {0,1} at latent resolution.
    """
    if eps_pred.shape != eps.shape or latent_mask.shape[-2:] != eps.shape[-2:] or latent_mask.shape[1] != 1:
        raise R2RUserError(
            f"masked_epsilon_loss expects eps_pred/eps [B,C,h,w] and a mask [B,1,h,w] of the same size; "
            f"got {tuple(eps_pred.shape)}, {tuple(eps.shape)}, {tuple(latent_mask.shape)}"
        )
    m = latent_mask.to(torch.float32)
    diff = (m * eps_pred.float() - m * eps.float()) ** 2
    per_channel = diff.mean(dim=(2, 3))  # [B,C]
    h, w = eps.shape[-2:]
    weight = (h * w / m.sum(dim=(1, 2, 3))).clamp(1.0, 5.0)  # [B]; an empty mask gives inf -> 5
    return (per_channel * weight[:, None]).mean()


class VGG16Features(nn.Module):
    """torchvision's ``vgg16().features[:23]`` (conv1_1 ... relu4_3) without torchvision.

    The layer indices equal torchvision's, so ``state_dict()`` keys are ``N.weight``/``N.bias`` and
    torchvision's ``features.N.*`` keys load after stripping ``features.``. ``is_random`` flags an
    instance that was never given pretrained weights.
    """

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for v in _VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(in_ch, v, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
                in_ch = v
        self.layers = nn.Sequential(*layers)
        assert len(self.layers) == 23  # internal invariant, not an input check
        self.is_random = True
        self.requires_grad_(False)
        self.eval()

    # keys without the "layers." prefix, exactly torchvision's features indices
    def vgg_state_dict(self) -> dict[str, torch.Tensor]:
        return {k.split(".", 1)[1]: v for k, v in self.state_dict().items()}

    def load_vgg_state_dict(self, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
        expected = self.vgg_state_dict()
        cleaned = {}
        for key, value in state.items():
            k = key[len("features."):] if key.startswith("features.") else key
            if k in expected:
                cleaned[k] = value
        missing = sorted(set(expected) - set(cleaned), key=lambda s: (int(s.split(".")[0]), s))
        if missing:
            raise R2RUserError(
                f"VGG16 weights in {source} are incomplete: expected torchvision vgg16 keys "
                f"'features.N.weight/bias' for N in 0..21, missing {missing[:6]}{'...' if len(missing) > 6 else ''}. "
                f"Download {VGG16_URL} (torchvision's ImageNet VGG16) and point loss.vgg16 at it."
            )
        for k, v in cleaned.items():
            if tuple(v.shape) != tuple(expected[k].shape):
                raise R2RUserError(
                    f"VGG16 weight {k!r} in {source} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}; "
                    f"this is not torchvision's vgg16 (use {VGG16_URL})."
                )
        self.layers.load_state_dict({k: v.float() for k, v in cleaned.items()}, strict=True)
        self.is_random = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def load_vgg16_features(spec: str | os.PathLike | None, *, seed: int = 0) -> VGG16Features:
    """Build VGG16 ``features[:23]`` from a local file.

    ``spec`` is a path to torchvision's ``vgg16-397923af.pth`` (or any torch state dict with
    ``features.N.*`` keys) or a ``.safetensors`` copy of it. The special value
    ``"random-weights-for-tests"`` gives random weights, and is refused unless the environment
    variable ``R2R_ALLOW_RANDOM_VGG=1`` is set (the test suite sets it): the contrastive loss with an
    untrained VGG is meaningless for real training.
    """
    if spec is None or str(spec).strip() == "":
        raise R2RUserError(
            "the Clear-VAE contrastive loss needs VGG16 weights, but loss.vgg16 is not set. "
            f"Download {VGG16_URL} (e.g. into models/vgg16-397923af.pth) and set loss.vgg16 to that path, "
            "or disable the loss with loss.cr_weight: 0."
        )
    if str(spec) == RANDOM_VGG:
        if os.environ.get(ALLOW_RANDOM_VGG_ENV) != "1":
            raise R2RUserError(
                f"loss.vgg16 is {RANDOM_VGG!r}: random VGG16 weights are only for tests and make the contrastive "
                f"loss meaningless. Download {VGG16_URL} and set loss.vgg16 to the file "
                f"(or set {ALLOW_RANDOM_VGG_ENV}=1 if you really are testing)."
            )
        net = VGG16Features()
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in net.parameters():
                if p.ndim == 4:
                    fan_in = p.shape[1] * p.shape[2] * p.shape[3]
                    p.copy_(torch.randn(p.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                else:
                    p.zero_()
        net.is_random = True
        return net
    path = os.fspath(spec)
    if not os.path.isfile(path):
        raise R2RUserError(
            f"VGG16 weights not found at {path!r}. Download {VGG16_URL} "
            f"(e.g. `curl -L -o {path} {VGG16_URL}`) or fix loss.vgg16."
        )
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable / truncated download
        raise R2RUserError(
            f"could not read VGG16 weights from {path!r} ({type(exc).__name__}: {exc}). Expected torchvision's "
            f"vgg16 state dict ({VGG16_URL}) or a .safetensors copy of it; re-download the file."
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise R2RUserError(f"{path!r} does not hold a state dict (got {type(state).__name__}); use {VGG16_URL}.")
    net = VGG16Features()
    net.load_vgg_state_dict(state, source=repr(path))
    return net


class ContrastiveRegularization(nn.Module):
    """Clear-VAE CR loss (ref §b.6).

    ``CR = L1(Phi(pred*M), Phi(real*M)) / (L1(Phi(pred*M), Phi(real*M)) + L1(Phi(pred*M), Phi(comp*M)) + 1e-8)``
    with ``Phi`` = VGG16 ``features[:23]`` fed the [-1,1] images (no ImageNet normalisation, as the
    official code) and ``M`` the foreground mask.
    """

    def __init__(self, vgg: VGG16Features):
        super().__init__()
        self.vgg = vgg
        self.vgg.requires_grad_(False)
        self.vgg.eval()

    def train(self, mode: bool = True):  # the VGG always stays in eval mode
        super().train(mode)
        self.vgg.eval()
        return self

    def forward(self, pred_pm1, real_pm1, comp_pm1, mask) -> torch.Tensor:
        m = mask.to(pred_pm1.dtype)
        f_pred = self.vgg(pred_pm1 * m)
        with torch.no_grad():
            f_pos = self.vgg(real_pm1.to(pred_pm1.dtype) * m)
            f_neg = self.vgg(comp_pm1.to(pred_pm1.dtype) * m)
        d_pos = F.l1_loss(f_pred.float(), f_pos.float())
        d_neg = F.l1_loss(f_pred.float(), f_neg.float())
        return d_pos / (d_pos + d_neg + 1e-8)
