"""Predictions, validation metrics and sample sheets of a training run (a mixin of :class:`training.trainer.Trainer`).

Validation uses :mod:`r2r.metrics` (MSE, fMSE, PSNR, SSIM as the official evaluation) on ``data.val``
on the main process; the diffusion stages predict with :class:`r2r.pipeline.R2RPipeline` built around
the networks being trained.
"""

from __future__ import annotations

import os
import types

import numpy as np
import torch

from . import checkpoint as ckpt
from .data import collate
from .pictures import sample_sheet, write_png


def _to_uint8(x_pm1_or_01: torch.Tensor, pm1: bool) -> np.ndarray:
    x = x_pm1_or_01.detach().float().cpu()
    if pm1:
        x = x / 2 + 0.5
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


class ValidationMixin:
    """Needs from the trainer: ``cfg``, ``acc``, ``model``, ``out``, ``state``, ``train_ds``, ``val_ds``, ``_net()``,
    ``_log()`` and ``_warn_skipped()``."""

    def _components(self):
        """R2RPipeline-compatible components holding the models being trained."""
        aux = self.acc.unwrap_model(self.model).aux
        net = self._net()
        if self.cfg.stage == "unet":
            return types.SimpleNamespace(unet=net, controller=None, clear_vae=aux["vae"],
                                         scheduler_config=aux["scheduler_config"], prompt_embeds=aux["prompt_embeds"])
        return types.SimpleNamespace(unet=aux["unet"], controller=net, clear_vae=aux["vae"],
                                     scheduler_config=aux["scheduler_config"], prompt_embeds=aux["prompt_embeds"])

    @torch.no_grad()
    def predict(self, batch: dict) -> torch.Tensor:
        """Harmonized images ``[B,3,r,r]`` in [0,1] for a batch (background pasted back for diffusion stages)."""
        net = self._net()
        was_training = net.training
        net.eval()
        try:
            if self.cfg.stage == "clear_vae":
                vae = net
                post = vae.encode(batch["real"]).latent_dist
                _, skips = vae.encode_with_skips(batch["composite"])
                pred = vae.decode_with_skips(post.mode(), skips)
                return (pred.float() / 2 + 0.5).clamp(0, 1)
            from r2r.pipeline import R2RPipeline

            pipe = R2RPipeline(self._components())
            comp01 = (batch["composite"].float() / 2 + 0.5).clamp(0, 1)
            with self.acc.autocast():
                out = pipe(comp01, batch["mask"].float(), num_inference_steps=self.cfg.log.inference_steps,
                           generator=self.cfg.seed, max_side=self.cfg.data.resolution,
                           use_controller=self.cfg.stage == "controller", feather=0)
            return out.images.float()
        finally:
            net.train(was_training)

    def _val_batches(self):
        n = len(self.val_ds) if not self.cfg.data.val_limit else min(self.cfg.data.val_limit, len(self.val_ds))
        bs = max(1, self.cfg.train.batch_size)
        for lo in range(0, n, bs):
            batch = collate([self.val_ds.load_or_substitute(i, 0) for i in range(lo, min(n, lo + bs))])
            self._warn_skipped(batch.pop("skipped"))
            yield {k: v.to(self.acc.device) for k, v in batch.items()}

    def validate(self, step: int, final: bool = False) -> dict:
        """Metrics (r2r.metrics: MSE, fMSE, PSNR, SSIM as the official evaluation) on data.val, main process."""
        if self.val_ds is None:
            return {}
        metrics = {}
        if self.acc.is_main_process:
            from r2r import metrics as M

            rows = []
            baseline = []
            for batch in self._val_batches():
                pred = self.predict(batch)
                for i in range(pred.shape[0]):
                    gt = _to_uint8(batch["real"][i], True)
                    comp = _to_uint8(batch["composite"][i], True)
                    m = batch["mask"][i, 0].cpu().numpy() > 0.5
                    rows.append(M.image_metrics(_to_uint8(pred[i], False), gt, m))
                    baseline.append(M.image_metrics(comp, gt, m))
            metrics = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
            metrics.update({f"composite_{k}": float(np.mean([r[k] for r in baseline])) for k in baseline[0]})
            metrics["count"] = len(rows)
            rec = {"step": step, "validation": metrics}
            self.state["val"].append(rec)
            ckpt.append_jsonl(os.path.join(self.out, ckpt.METRICS_FILE), rec)
            self._log(f"validation at step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        self.acc.wait_for_everyone()
        return metrics

    def write_samples(self, step: int):
        """Sample sheet: composite | prediction | ground truth | mask for a few validation (or training) items."""
        if self.acc.is_main_process:
            if self.val_ds is not None:
                batch = next(self._val_batches())
            else:
                batch = collate([self.train_ds.load_or_substitute(i, 0) for i in range(min(4, len(self.train_ds)))])
                self._warn_skipped(batch.pop("skipped"))
                batch = {k: v.to(self.acc.device) for k, v in batch.items()}
            batch = {k: v[:4] for k, v in batch.items()}
            pred = self.predict(batch)
            rows = []
            for i in range(pred.shape[0]):
                m = (batch["mask"][i, 0].cpu().numpy() * 255).astype(np.uint8)
                rows.append([_to_uint8(batch["composite"][i], True), _to_uint8(pred[i], False),
                             _to_uint8(batch["real"][i], True), m])
            tile = max(128, min(256, self.cfg.data.resolution))
            sheet = sample_sheet(rows, ["composite", "prediction", "ground truth", "mask"], tile=tile)
            write_png(os.path.join(self.out, "samples", f"step-{step:06d}.png"), sheet)
        self.acc.wait_for_everyone()
