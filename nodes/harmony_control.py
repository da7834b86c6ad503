"""The Harmony Controller (with MACA) as a core ComfyUI control object.

:func:`control_class` returns a ``comfy.controlnet.ControlBase`` subclass (built on first use, so
the pack imports without ComfyUI). An instance rides in CONDITIONING under ``"control"`` like a
ControlNet: at every model call ComfyUI asks it for ``get_control(x_noisy, sigma, cond,
batched_number, ...)``; it runs the R2R controller on the hint (it never looks at the noisy
latent) and returns ComfyUI's control dict for the SD1.5 U-Net:

* ``"output"``: the 12 down residuals in the controller's order. The U-Net pops this list from the
  end, one per skip connection, so residual ``i`` is added to stored skip feature ``i``; that is
  what diffusers' ``down_block_additional_residuals`` does.
* ``"middle"``: ``[mid residual]``, added to the middle block's output
  (``mid_block_additional_residual``).

The timestep the controller sees is ``model_sampling.timestep(sigma)``, the same one ComfyUI gives
the U-Net. ``strength`` scales every residual (applied by ComfyUI's ``control_merge``, as for a
ControlNet); controls chain with ``previous_controlnet`` like ControlNets do.
"""

from __future__ import annotations

import functools

from ..r2r.errors import R2RUserError


def _batch_to(t, total: int, batched_number: int):
    """Repeat a per-image tensor [B,...] to ComfyUI's model batch (cond/uncond groups of the latent batch)."""
    import comfy.utils
    import torch

    per_group = total // max(int(batched_number), 1)
    t = comfy.utils.repeat_to_batch_size(t, per_group)
    return t if per_group == total else torch.cat([t] * (total // per_group), dim=0)


def controller_memory_bytes(controller, batch: int, latent_hw, dtype) -> int:
    """Device memory one controller call needs besides its weights (r2r.pipeline.memory's estimates: the
    activations and the 13 residuals it returns), for a cond + uncond batch (``2 * batch``)."""
    from ..r2r.pipeline import memory

    b = 2 * int(batch)
    hw = tuple(int(v) for v in latent_hw)
    return (memory.controller_activation_bytes(b, hw, dtype)
            + memory.residual_bytes_per_step(controller.model.config, b, hw, dtype))


@functools.cache
def control_class():
    """``R2RHarmonyControl``, a ``comfy.controlnet.ControlBase`` subclass."""
    import comfy.controlnet
    import torch

    class R2RHarmonyControl(comfy.controlnet.ControlBase):
        """The R2R Harmony Controller for one prepared composite (hint, latent masks)."""

        def __init__(self, controller, hint, latent_mask, reference_mask=None, strength=1.0):
            super().__init__()
            self.controller = controller  # nodes._host.ManagedModel around r2r.models.HarmonyController
            self.hint = hint  # [B,7,H,W] at the working resolution, on the intermediate device
            self.latent_mask = latent_mask  # [B,1,H/8,W/8], nearest-downsampled
            self.reference_mask = reference_mask  # [B,1,H/8,W/8] or None (the whole background)
            self.strength = float(strength)
            self.model_sampling_current = None
            self._inputs = None  # (key, hint, mask, reference) on the controller's device and dtype
            self._loaded = False

        def copy(self):
            c = R2RHarmonyControl(self.controller, self.hint, self.latent_mask, self.reference_mask, self.strength)
            self.copy_to(c)
            return c

        def pre_run(self, model, percent_to_timestep_function):
            super().pre_run(model, percent_to_timestep_function)
            self.model_sampling_current = model.model_sampling

        def cleanup(self):
            self.model_sampling_current = None
            self._inputs = None
            self._loaded = False
            super().cleanup()

        def get_models(self):
            # loaded by ComfyUI together with the U-Net (and counted in its memory plan)
            return super().get_models() + [self.controller.patcher()]

        def inference_memory_requirements(self, dtype):
            b = self.hint.shape[0]
            own = controller_memory_bytes(self.controller, b, self.latent_mask.shape[-2:], self.controller.dtype)
            return super().inference_memory_requirements(dtype) + own

        def _ensure_resident(self):
            """ComfyUI may have loaded the controller only partly (low VRAM); diffusers modules cannot
            run partly offloaded, so then load it whole (through ComfyUI, accounted)."""
            device = torch.device(self.controller.patcher().load_device)
            for p in self.controller.model.parameters():
                if p.device.type != device.type or (device.index is not None and p.device.index != device.index):
                    self.controller.load(controller_memory_bytes(self.controller, self.hint.shape[0],
                                                                 self.latent_mask.shape[-2:], self.controller.dtype))
                    return

        def _model_inputs(self, device, dtype, total, batched_number):
            key = (device, dtype, total, batched_number)
            if self._inputs is None or self._inputs[0] != key:
                ref = self.reference_mask
                self._inputs = (
                    key,
                    _batch_to(self.hint, total, batched_number).to(device=device, dtype=dtype),
                    _batch_to(self.latent_mask, total, batched_number).to(device=device, dtype=dtype),
                    None if ref is None else _batch_to(ref, total, batched_number).to(device=device, dtype=dtype),
                )
            return self._inputs[1:]

        def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
            control_prev = None
            if self.previous_controlnet is not None:
                control_prev = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number,
                                                                    transformer_options)
            if tuple(x_noisy.shape[-2:]) != tuple(self.latent_mask.shape[-2:]):
                raise R2RUserError(
                    f"R2R Conditioning: KSampler's latent is {list(x_noisy.shape[-2:])} but the Harmony Controller "
                    f"was prepared for {list(self.latent_mask.shape[-2:])}. Give KSampler the LATENT of R2R "
                    "Conditioning, without latent upscaling or cropping in between."
                )
            if not self._loaded:
                self._ensure_resident()
                self._loaded = True
            ctrl = self.controller.model
            device, dtype = next(ctrl.parameters()).device, ctrl.dtype
            hint, mask, ref = self._model_inputs(device, dtype, x_noisy.shape[0], batched_number)
            context = cond.get("crossattn_controlnet", cond["c_crossattn"])
            timestep = self.model_sampling_current.timestep(t).to(device)
            down, mid = ctrl(hint, timestep, context.to(device=device, dtype=dtype), mask, reference_mask=ref)
            out_device = x_noisy.device
            control = {"input": [], "middle": [mid.to(out_device)], "output": [d.to(out_device) for d in down]}
            return self.control_merge(control, control_prev, output_dtype=None)

    return R2RHarmonyControl
