"""The staged trainer on accelerate: one loop for the three stages.

``run_training(cfg)`` -- used by ``python -m training <stage> --config ...`` and by
``accelerate launch -m training ...`` (every process runs the same code; data is sharded by process
index, gradients are averaged by DDP).

Determinism: the data order and augmentations are seeded by (seed, epoch, index), and every
micro-batch reseeds the noise/timestep generator and the global torch RNG (dropout) from
(seed, micro-step, process), so a run resumed from a checkpoint continues exactly like an
uninterrupted one (network, optimizer, LR scheduler, grad scaler and EMA are restored from the
checkpoint's safetensors/JSON files, :mod:`training.checkpoint`).

Before any model loads, :mod:`training.preflight` checks the options, paths, the output folder
(``--resume`` / ``--overwrite``), the resume compatibility and the data (:mod:`training.scan`).
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from r2r.errors import R2RUserError

from . import checkpoint as ckpt
from .config import STAGE_COMPONENT_DIR, TrainingConfig
from .data import EpochPlan, build_dataset, iterate_batches
from .pictures import draw_loss_curve
from .preflight import RunOptions, check_options, commit, plan_run
from .release import assemble_release
from .speed import (
    compile_network,
    frozen_weight_dtype,
    make_adamw,
    plan_speed,
    probe_device,
    set_optimizer_mode,
    tf32_enabled,
)
from .stages import build_stage, enable_gradient_checkpointing
from .validation import ValidationMixin

#: torch >= 2.5 names it torch.OutOfMemoryError (a CUDA one is also a torch.cuda.OutOfMemoryError)
_OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def _step_seed(seed: int, a: int, b: int, salt: int = 3) -> int:
    return int(np.random.default_rng([int(seed), int(a), int(b), salt]).integers(2**62))


def item_generators(seed: int, epoch: int, positions) -> list:
    """One CPU generator per batch item for its noise, timestep and posterior sample, keyed by the item's
    place in the epoch order: the same for any number of processes (2 x batch 1 == 1 x batch 2) and on resume."""
    return [torch.Generator().manual_seed(_step_seed(seed, epoch, pos, 5)) for pos in positions]


class Trainer(ValidationMixin):
    def __init__(self, cfg: TrainingConfig, *, resume: str | None = None, stop_after: int | None = None,
                 overwrite: bool = False, force_resume: bool = False, skip_bad_files: bool = False,
                 accelerator=None):
        self.cfg = cfg
        self.out = cfg.output.dir
        self.opts = RunOptions(resume=resume, overwrite=overwrite, force_resume=force_resume,
                               skip_bad_files=skip_bad_files, stop_after=stop_after)
        self.stop_after = stop_after
        self._warned: set[str] = set()
        check_options(self.opts)  # cheap, before anything starts
        # several processes without CUDA (e.g. torchrun --nproc_per_node 2 on CPU): gloo DDP on the CPU
        self._multi_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
        if accelerator is None:
            from accelerate import PartialState

            self.dist = PartialState(cpu=self._multi_cpu)  # processes and device; the Accelerator comes later
        else:
            self.dist = accelerator
        self._run_plan = None  # main process: holds the output folder's lock until close()
        self.committed = False  # the output folder holds this run (written to) from _commit() on
        try:
            self._preflight()  # the lock first, then every check; no model yet
            self.acc = accelerator if accelerator is not None else self._make_accelerator()
        except BaseException:
            self.close()
            raise

    def _make_accelerator(self):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        if self.dist.device.type == "cpu" and self.precision == "fp16":
            raise R2RUserError(
                "train.mixed_precision is fp16, which needs a CUDA GPU, but this run is on the CPU; "
                "use --set train.mixed_precision=bf16 (or no, or auto) on CPUs"
            )
        return Accelerator(
            cpu=self._multi_cpu,
            mixed_precision=self.precision,
            gradient_accumulation_steps=self.cfg.train.gradient_accumulation_steps,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
        )

    def _on_main_then_share(self, fn, shared: list) -> list:
        """Run ``fn()`` on the main process (it fills ``shared[1:]``); every process gets ``shared`` and raises
        when the main process failed, so a refusal stops all of them."""
        dist, failure = self.dist, None
        if dist.is_main_process:
            try:
                fn(shared)
            except Exception as exc:  # noqa: BLE001 - re-raised below, after the other processes learn of it
                failure, shared[0] = exc, str(exc)
        if dist.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(shared)
        if failure is not None:
            raise failure
        if shared[0] is not None:
            raise R2RUserError(f"the main process stopped: {shared[0]}")
        return shared

    def _preflight(self):
        """Checks (main process) before any model loads; the outcome is shared with the other processes. The
        mixed precision is settled here too (``auto``: the checkpoint's on resume, else the device's rule), and
        written into the config, so checkpoints record the precision the run really uses."""
        from .speed import choose_precision

        def check(shared):
            self._run_plan = plan = plan_run(self.cfg, self.opts, self.dist.num_processes, self._log)
            resumed = ((plan.saved or {}).get("config") or {}).get("train", {}).get("mixed_precision")
            dev = self.dist.device
            bf16 = dev.type == "cuda" and torch.cuda.is_bf16_supported()
            precision = choose_precision(self.cfg.train.mixed_precision, dev.type, bf16, resumed)
            shared[1:] = [plan.resume_dir, plan.bad_keys, plan.differences, plan.train_fingerprint, precision]

        _, self.resume_dir, self.bad_keys, self.forced_changes, self.train_fingerprint, chosen = \
            self._on_main_then_share(check, [None, None, [], [], {}, None])
        self.precision, self.precision_reason = chosen
        self.cfg.train.mixed_precision = self.precision
        self.saved_state = ckpt.read_trainer_state(self.resume_dir) if self.resume_dir else None

    def _commit(self):
        """The first write: move an old run aside / create the output folder (after the models loaded)."""
        def write(shared):
            try:
                commit(self._run_plan, self.cfg, self.opts, self._log)
            except BaseException:
                self.close()
                raise

        self._on_main_then_share(write, [None])
        self.committed = True

    # ------------------------------------------------------------------ setup
    def setup(self):
        cfg, acc = self.cfg, self.acc
        torch.manual_seed(cfg.seed)
        self.weight_dtype = weight_dtype = frozen_weight_dtype(acc.mixed_precision, acc.device.type)
        module, self.info = build_stage(cfg, acc.device, weight_dtype)
        need_hint = cfg.stage == "controller"
        bad = frozenset(self.bad_keys)
        self.train_ds, repeats = build_dataset(cfg.data.train, cfg.data, seed=cfg.seed, need_hint=need_hint,
                                               augment=True, exclude=bad)
        self.plan = EpochPlan(repeats, cfg.train.batch_size, cfg.seed, acc.num_processes, acc.process_index)
        self.val_ds = None
        if cfg.data.val:
            self.val_ds, _ = build_dataset(cfg.data.val, cfg.data, seed=cfg.seed, need_hint=need_hint, augment=False,
                                           exclude=bad)
            if self.val_ds is None:
                self._log("warning: every validation item was left out as bad; no validation in this run")
        params = [p for p in module.net.parameters() if p.requires_grad]
        self.num_trainable = sum(p.numel() for p in params)
        self.speed = self._apply_speed_rules(module)
        optimizer = make_adamw(params, cfg.train, fused=self.speed.fused_adamw)
        from diffusers.optimization import get_scheduler

        lr_scheduler = get_scheduler(  # the name was checked against config.LR_SCHEDULERS
            cfg.train.lr_scheduler, optimizer,
            num_warmup_steps=cfg.train.lr_warmup_steps * acc.num_processes,
            num_training_steps=cfg.train.max_steps * acc.num_processes,
        )
        self.model, self.optimizer, self.lr_scheduler = acc.prepare(module, optimizer, lr_scheduler)
        self.ema = None
        if cfg.train.ema.enabled:
            from diffusers.training_utils import EMAModel

            e = cfg.train.ema
            self.ema = EMAModel(self._ema_params(), decay=e.decay, update_after_step=e.update_after_step,
                                use_ema_warmup=e.use_ema_warmup)
            self.ema.to(acc.device)
        self.state = {"global_step": 0, "micro_step": 0, "epoch": 0, "batch_in_epoch": 0, "history": [],
                      "val": [], "seed": cfg.seed, "stage": cfg.stage, "skipped_items": 0}
        event = {"event": "start", "step": 0, "seed": cfg.seed}
        if self.resume_dir:  # read before the first write: a checkpoint that does not fit leaves the folder as it was
            ckpt.load_checkpoint(acc, self.resume_dir, self.saved_state, net=self._net(), optimizer=self.optimizer,
                                 lr_scheduler=self.lr_scheduler, ema=self.ema)
            set_optimizer_mode(self.optimizer, fused=self.speed.fused_adamw)
        self._commit()
        if self.resume_dir:
            saved = self.saved_state
            self.state.update({k: saved[k] for k in self.state if k in saved})
            acc.step = self.state["micro_step"]  # accelerate's accumulation counter
            event = {"event": "resume", "step": self.state["global_step"], "checkpoint": self.resume_dir}
            if self.forced_changes:
                event["forced_changes"] = self.forced_changes
            self._log(f"resumed from {self.resume_dir} at step {self.state['global_step']}")
        event["speed"] = self.speed.summary()
        if acc.is_main_process:
            ckpt.append_jsonl(os.path.join(self.out, ckpt.METRICS_FILE),
                              {**event, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})

    def _apply_speed_rules(self, module):
        """Decide and apply the device rules (training/speed.py) once the models are on the device."""
        cfg, acc = self.cfg, self.acc
        plan = plan_speed(cfg.train, stage=cfg.stage, resolution=cfg.data.resolution, num_workers=cfg.data.num_workers,
                          facts=probe_device(acc.device), precision=self.precision,
                          precision_reason=self.precision_reason, trainable_params=self.num_trainable,
                          num_processes=acc.num_processes)
        if plan.gradient_checkpointing and cfg.train.gradient_checkpointing == "auto":
            enable_gradient_checkpointing(module)  # (true in the config: build_stage did it)
        if plan.compile:
            compile_network(module.net)
        self._tf32 = tf32_enabled(plan.tf32).__enter__()
        if acc.is_main_process:
            plan.log()  # logging.getLogger("r2r.training"); python -m training shows it
        return plan

    def close(self) -> None:
        """Release the output folder (main process); the run may not write into it afterwards."""
        if getattr(self, "_tf32", None) is not None:
            self._tf32.__exit__(None, None, None)
            self._tf32 = None
        if self._run_plan is not None:
            self._run_plan.release()

    def _net(self):
        return self.acc.unwrap_model(self.model).net

    def _ema_params(self) -> list:
        """The trained parameters (the EMA follows only these; frozen ones never change)."""
        return [p for p in self._net().parameters() if p.requires_grad]

    def _log(self, msg: str):
        if self.dist.is_main_process:
            print(f"[r2r-train {self.cfg.stage}] {msg}", flush=True)

    # ------------------------------------------------------------------ loop
    def train(self) -> dict:
        cfg, acc, st = self.cfg, self.acc, self.state
        accum = cfg.train.gradient_accumulation_steps
        max_steps = cfg.train.max_steps
        metrics_path = os.path.join(self.out, ckpt.METRICS_FILE)
        self._log(
            f"{self.num_trainable:,} trainable parameters; {len(self.train_ds)} training items, "
            f"{self.plan.batches_per_epoch} batches/epoch/process; {acc.num_processes} process(es) on {acc.device}; "
            f"batch {cfg.train.batch_size} x accumulation {accum}; mixed precision {acc.mixed_precision}"
        )
        bar = None
        if cfg.log.progress_bar and acc.is_main_process:
            from tqdm.auto import tqdm

            bar = tqdm(total=max_steps, initial=st["global_step"], desc=f"train {cfg.stage}", dynamic_ncols=True)
        self.model.train()
        step_losses: list[float] = []
        step_logs: dict[str, list[float]] = {}
        t0 = time.time()
        batches = (iterate_batches(self.train_ds, self.plan, st["epoch"], st["batch_in_epoch"], self.speed.loader)
                   if st["global_step"] < max_steps else ())
        try:
            for epoch, k, batch in batches:  # one DataLoader across epochs, until the last step
                st["epoch"] = epoch
                positions = batch.pop("position").tolist()
                self._warn_skipped(batch.pop("skipped"), collective=True)
                batch = {n: v.to(acc.device, non_blocking=True) for n, v in batch.items()}
                torch.manual_seed(_step_seed(cfg.seed, st["micro_step"], acc.process_index))  # dropout (exact resume)
                gen = item_generators(cfg.seed, epoch, positions)
                with acc.accumulate(self.model):
                    with acc.autocast():
                        loss, logs = self.model(batch, gen)
                    if not torch.isfinite(loss):
                        raise R2RUserError(
                            f"the training loss became {loss.item()} at step {st['global_step']}; lower "
                            "train.learning_rate, use bf16 instead of fp16, or check the data for broken images"
                        )
                    acc.backward(loss)
                    if acc.sync_gradients and cfg.train.max_grad_norm > 0:
                        acc.clip_grad_norm_(self._net().parameters(), cfg.train.max_grad_norm)
                    self.optimizer.step()
                    self.lr_scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                st["micro_step"] += 1
                st["batch_in_epoch"] = k + 1
                step_losses.append(float(acc.reduce(loss.detach().float(), "mean")))
                for name, v in logs.items():
                    step_logs.setdefault(name, []).append(float(acc.reduce(v.float(), "mean")))
                if not acc.sync_gradients:
                    continue
                # ---- one optimizer step done
                if self.ema is not None:
                    self.ema.step(self._ema_params())
                st["global_step"] += 1
                gs = st["global_step"]
                step_loss = float(np.mean(step_losses))
                st["history"].append([gs, step_loss])
                record = {"step": gs, "loss": step_loss, "lr": self.lr_scheduler.get_last_lr()[0],
                          "epoch": epoch, **{n: float(np.mean(v)) for n, v in step_logs.items()}}
                if st["skipped_items"]:
                    record["skipped_items"] = st["skipped_items"]
                step_losses, step_logs = [], {}
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{step_loss:.4f}")
                if acc.is_main_process and cfg.log.every and (gs % cfg.log.every == 0 or gs == max_steps):
                    record["elapsed_s"] = round(time.time() - t0, 2)
                    ckpt.append_jsonl(metrics_path, record)
                if cfg.log.sample_every and gs % cfg.log.sample_every == 0:
                    self.write_samples(gs)
                if cfg.log.validate_every and gs % cfg.log.validate_every == 0:
                    self.validate(gs)
                last = gs >= max_steps or (self.stop_after is not None and gs >= self.stop_after)
                if (cfg.log.checkpoint_every and gs % cfg.log.checkpoint_every == 0) or last:
                    self.save_checkpoint()
                if last:
                    break
        except _OUT_OF_MEMORY as exc:
            raise self._out_of_memory(exc) from exc
        finally:
            if bar is not None:
                bar.close()
        finished = st["global_step"] >= max_steps
        result = {"steps": st["global_step"], "finished": finished, "history": st["history"],
                  "output_dir": self.out}
        if finished:
            result.update(self.finish())
        return result

    def _out_of_memory(self, exc) -> R2RUserError:
        sp, cfg = self.speed, self.cfg
        kept = ckpt.checkpoint_dirs(self.out)
        return R2RUserError(
            f"the {sp.device} ran out of memory at step {self.state['global_step']} (batch {cfg.train.batch_size}, "
            f"{cfg.data.resolution} px, {sp.precision}, gradient checkpointing {'on' if sp.gradient_checkpointing else 'off'}"
            f"; the estimate was {(sp.need_bytes or 0) / 2**30:.1f} GiB beyond the weights, "
            f"{(sp.free_bytes or 0) / 2**30:.1f} GiB were free). Lower train.batch_size (raise "
            "train.gradient_accumulation_steps to keep the effective batch), set train.gradient_checkpointing: true, "
            "or use mixed precision; close other programs using the GPU. "
            + (f"The checkpoints written so far are kept ({os.path.basename(kept[-1])} is the newest): continue with "
               "--resume latest" if kept else "No checkpoint was written yet."))

    # ------------------------------------------------------------------ checkpoints / outputs
    def _warn_skipped(self, skipped: list, collective: bool = False) -> None:
        """Items whose files became unreadable after the data check were replaced by the next good item:
        warn (every process, once per file) and count them (``collective``: summed over the processes, which
        must all call it)."""
        for path, problem in skipped:
            if path not in self._warned:
                self._warned.add(path)
                print(f"[r2r-train {self.cfg.stage}] warning: skipped an unreadable item (changed after the data "
                      f"check?): {problem}", flush=True)
        if collective and self.acc.num_processes > 1:
            n = torch.tensor(float(len(skipped)), device=self.acc.device)
            self.state["skipped_items"] += int(self.acc.reduce(n, "sum").item())
        else:
            self.state["skipped_items"] += len(skipped)

    def save_checkpoint(self):
        st = dict(self.state)
        st["num_processes"] = self.acc.num_processes
        st["config"] = self.cfg.to_dict()
        st["data_fingerprint"] = self.train_fingerprint
        path = ckpt.save_checkpoint(self.acc, self.out, self.state["global_step"], st, net=self._net(),
                                    optimizer=self.optimizer, lr_scheduler=self.lr_scheduler, ema=self.ema,
                                    total_limit=self.cfg.log.checkpoints_total_limit)
        if self.acc.is_main_process and self.state["history"]:
            steps, losses = zip(*self.state["history"])
            draw_loss_curve(os.path.join(self.out, "loss_curve.png"), list(steps), list(losses),
                                 title=f"{self.cfg.stage} training loss")
        self._log(f"checkpoint {path}")

    def _with_output_weights(self):
        """Context: swap EMA weights in when the output should be the EMA model."""
        trainer = self

        class _Swap:
            def __enter__(self_):
                self_.on = trainer.ema is not None and trainer.cfg.train.ema.use_for_output
                if self_.on:
                    trainer.ema.store(trainer._ema_params())
                    trainer.ema.copy_to(trainer._ema_params())
                trainer._ema_swapped = self_.on

            def __exit__(self_, *exc):
                if self_.on:
                    trainer.ema.restore(trainer._ema_params())
                trainer._ema_swapped = False

        return _Swap()

    def finish(self) -> dict:
        acc, cfg = self.acc, self.cfg
        rel = STAGE_COMPONENT_DIR[cfg.stage]
        out = {}
        with self._with_output_weights():
            metrics = {}
            if self.val_ds is not None:
                last = self.state["val"][-1] if self.state["val"] else None
                if last and last["step"] == self.state["global_step"] and not getattr(self, "_ema_swapped", False):
                    metrics = last["validation"]  # already measured at this step with these weights
                else:
                    metrics = self.validate(self.state["global_step"], final=True)
            acc.wait_for_everyone()
            if acc.is_main_process:
                net = self._net()
                comp_dir = ckpt.save_component(net, self.out, rel)
                out["component_dir"] = comp_dir
                if cfg.output.release:
                    out["release_dir"] = cfg.output.release
                    assemble_release(cfg.output.release, cfg.init.release, comp_dir, rel,
                                     move_aside=self._run_plan.release_aside)
                data = {
                    "train": [vars(s) for s in cfg.data.train], "val": [vars(s) for s in cfg.data.val],
                    "train_items": len(self.train_ds), "resolution": cfg.data.resolution,
                    "bad_items_left_out": len(self.bad_keys), "unreadable_items_replaced": self.state["skipped_items"],
                }
                info = {**self.info, "ema": bool(self.ema is not None and cfg.train.ema.use_for_output),
                        "speed": self.speed.summary()}
                meta = dict(stage=cfg.stage, config=cfg.to_dict(), data=data, steps=self.state["global_step"],
                            metrics=metrics, info=info, component=rel)
                ckpt.write_metadata(os.path.join(self.out, ckpt.METADATA_FILE), **meta)
                if cfg.output.release:
                    ckpt.write_metadata(os.path.join(cfg.output.release, ckpt.METADATA_FILE), **meta)
                if self.state["history"]:
                    steps, losses = zip(*self.state["history"])
                    draw_loss_curve(os.path.join(self.out, "loss_curve.png"), list(steps), list(losses),
                                         title=f"{cfg.stage} training loss")
                self._log(f"wrote {comp_dir}" + (f" and release {cfg.output.release}" if cfg.output.release else ""))
            acc.wait_for_everyone()
        out["metrics"] = metrics
        return out


def run_training(cfg: TrainingConfig, *, resume: str | None = None, stop_after: int | None = None,
                 overwrite: bool = False, force_resume: bool = False, skip_bad_files: bool = False) -> dict:
    """Check everything (:mod:`training.preflight`), then train; see :class:`Trainer` for the options."""
    trainer = Trainer(cfg, resume=resume, stop_after=stop_after, overwrite=overwrite, force_resume=force_resume,
                      skip_bad_files=skip_bad_files)
    try:  # the checks passed; setup() loads the models, then takes over the output folder
        trainer.setup()
        result = trainer.train()
        trainer.acc.wait_for_everyone()
        trainer.acc.end_training()
    except OSError as exc:  # full disk, name too long, ... while the run writes: what was written is kept
        if not trainer.committed:
            raise
        raise ckpt.write_failure(exc, trainer.out) from exc
    finally:
        trainer.close()
    return result
