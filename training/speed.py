"""How a training run uses its device: the automatic rules, as small pure functions of the facts.

Each rule takes what it decides on as arguments (the device type, its free memory, whether it does bf16,
the stage, batch and resolution ...), so every rule is tested on a CPU with simulated facts;
:func:`probe_device` is the one place that asks torch. :func:`plan_speed` applies them all and returns a
:class:`SpeedPlan`, whose decisions (and why) go to ``logging.getLogger("r2r.training")`` and into the
run's ``metrics.jsonl`` start line and ``r2r_training.json``. None of them changes what a checkpoint holds.

| rule | CUDA | CPU |
| --- | --- | --- |
| ``train.mixed_precision: auto`` | bf16 where ``torch.cuda.is_bf16_supported()``, else fp16; a resumed run keeps its checkpoint's | no (fp32) |
| ``train.gradient_checkpointing: auto`` | off when the estimate fits in 90 % of the free device memory, else on | the same, with the available RAM |
| AdamW | fused (one kernel for all parameters) | torch's default (foreach) |
| TF32 matmul and cuDNN convolutions, ``cudnn.benchmark`` | on (fixed training size) | -- |
| DataLoader | pinned memory; persistent workers when ``data.num_workers > 0`` | persistent workers when > 0 |
| ``train.compile`` (default false) | ``torch.compile`` of the trained network | the same (needs a C++ compiler) |

The memory estimate (:func:`estimate_training_bytes`): the bytes the forward pass keeps for the backward
pass, per pixel of a training image, measured per stage with full-size networks (saved-tensor hooks,
batch 1, two resolutions: it grows linearly with the pixels), times 1.25 for the backward pass's
transients, plus 14 bytes per trained parameter under mixed precision (fp32 gradient 4, AdamW moments 8,
the autocast copy 2; 12 in fp32) and 4 more per trained parameter with several processes (DDP's gradient
buckets), plus 512 MiB of workspace. The weights themselves are already on the device when the free
memory is read, so they are not counted twice.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

log = logging.getLogger("r2r.training")

GIB = 1 << 30
#: bytes saved for the backward pass per pixel of one training image, without gradient checkpointing:
#: stage -> {bytes per activation element: bytes per pixel}. Measured with full-size networks (official
#: configs, random weights) at 128² and 256², fp32 and bf16 autocast; slope of the two (linear in pixels).
ACTIVATION_BYTES_PER_PIXEL = {
    "unet": {4: 7107, 2: 3595},
    "controller": {4: 6934, 2: 3504},  # the controller's own + what the frozen U-Net keeps for the residuals' gradients
    "clear_vae": {4: 35789, 2: 21932},  # decoder at full image size + the VGG16 contrastive loss
}
BACKWARD_FACTOR = 1.25
WORKSPACE_BYTES = 512 << 20
#: gradient checkpointing stays off while the estimate is at most this share of the free memory
FREE_FRACTION = 0.9


@dataclass(frozen=True)
class DeviceFacts:
    """What the rules need to know about the device (simulated in tests)."""

    type: str  # "cuda", "cpu", "mps", ...
    name: str = ""
    free_bytes: int | None = None  # free device memory (CUDA) / available RAM (CPU); None = unknown
    total_bytes: int | None = None
    bf16: bool = False  # CUDA: torch.cuda.is_bf16_supported()


def probe_device(device) -> DeviceFacts:
    """The facts of ``device`` as torch reports them now (free memory after what is already loaded)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":  # the pipeline's free-memory figure: torch's reusable cache, a per-process cap
        from r2r.pipeline.model_sources import cuda_free_memory

        props = torch.cuda.get_device_properties(device)
        return DeviceFacts("cuda", props.name, cuda_free_memory(device),
                           int(props.total_memory), bool(torch.cuda.is_bf16_supported()))
    if device.type == "cpu":
        from r2r.pipeline.memory import available_host_bytes

        return DeviceFacts("cpu", f"CPU ({torch.get_num_threads()} threads)", available_host_bytes(), None, True)
    return DeviceFacts(device.type, device.type)


# ----------------------------------------------------------------------------- the rules
def choose_precision(setting: str, device_type: str, bf16_supported: bool,
                     resumed: str | None = None) -> tuple[str, str]:
    """``train.mixed_precision`` -> (``no`` | ``fp16`` | ``bf16``, why)."""
    if setting != "auto":
        return setting, "set in the config"
    if resumed in ("no", "fp16", "bf16"):
        return resumed, "auto: the resumed checkpoint's precision (a run keeps its precision)"
    if device_type == "cuda":
        if bf16_supported:
            return "bf16", "auto: this GPU supports bf16 (fp16's range without a loss scaler)"
        return "fp16", "auto: this GPU has no bf16, so fp16 with a loss scaler"
    return "no", f"auto: fp32 on {device_type} (mixed precision pays off on GPUs)"


def frozen_weight_dtype(precision: str, device_type: str):
    """The dtype of the frozen networks (VAE, frozen U-Net): the mixed precision's, fp32 without it; fp32 for
    fp16 on a CPU (no fp16 convolutions there). Trained networks stay fp32 (autocast computes in 16 bits)."""
    import torch

    from r2r.devices import resolve_dtype

    dtype = resolve_dtype("fp32" if precision == "no" else precision)
    return torch.float32 if device_type == "cpu" and dtype == torch.float16 else dtype


def activation_bytes(stage: str, batch: int, resolution: int, precision: str) -> int:
    """Bytes the forward pass of one micro-batch keeps for the backward pass (no checkpointing)."""
    per_pixel = ACTIVATION_BYTES_PER_PIXEL[stage][4 if precision == "no" else 2]
    return int(per_pixel * batch * resolution * resolution)


def estimate_training_bytes(stage: str, batch: int, resolution: int, precision: str, trainable_params: int,
                            num_processes: int = 1) -> int:
    """Device memory a training step needs beyond the weights already loaded, without checkpointing."""
    per_param = (4 + 8 + (2 if precision != "no" else 0) + (4 if num_processes > 1 else 0))
    return int(BACKWARD_FACTOR * activation_bytes(stage, batch, resolution, precision)
               + per_param * trainable_params + WORKSPACE_BYTES)


def choose_gradient_checkpointing(setting, *, need_bytes: int, free_bytes: int | None) -> tuple[bool, str]:
    """``train.gradient_checkpointing`` (true / false / "auto") -> (on?, why)."""
    if isinstance(setting, bool):
        return setting, "set in the config"
    if free_bytes is None:
        return True, "auto: the free memory is unknown, so on (the safe choice)"
    fits = need_bytes <= FREE_FRACTION * free_bytes
    verdict = "fits" if fits else "does not fit"
    return (not fits), (f"auto: a step needs ~{need_bytes / GIB:.1f} GiB beyond the weights, which {verdict} in "
                        f"{FREE_FRACTION:.0%} of the {free_bytes / GIB:.1f} GiB free")


def choose_fused_adamw(device_type: str) -> tuple[bool, str]:
    if device_type == "cuda":
        return True, "CUDA: one fused kernel for every parameter"
    return False, f"{device_type}: torch's default AdamW (foreach)"


def choose_tf32(device_type: str) -> tuple[bool, str]:
    if device_type == "cuda":
        return True, "CUDA: TF32 for fp32 matmuls and cuDNN convolutions, cudnn.benchmark (fixed training size)"
    return False, f"{device_type}: not applicable"


def data_loader_options(device_type: str, num_workers: int) -> dict:
    """Keyword arguments for the training DataLoader."""
    opts = {"num_workers": num_workers, "pin_memory": device_type == "cuda"}
    if num_workers > 0:
        opts.update(persistent_workers=True, prefetch_factor=4 if device_type == "cuda" else 2)
    return opts


def choose_compile(setting: bool, device_type: str) -> tuple[bool, str]:
    if not setting:
        return False, "train.compile is false (the default)"
    if device_type == "cpu":
        return True, "train.compile: torch.compile on the CPU (needs a C++ compiler; slow first steps)"
    return True, "train.compile: torch.compile of the trained network (the first steps compile)"


# ----------------------------------------------------------------------------- all of them
@dataclass
class SpeedPlan:
    precision: str
    gradient_checkpointing: bool
    fused_adamw: bool
    tf32: bool
    compile: bool
    loader: dict
    need_bytes: int | None = None
    free_bytes: int | None = None
    device: str = ""
    reasons: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> dict:
        """The decisions in one flat mapping (metrics.jsonl, r2r_training.json, the benchmark's JSON)."""
        def gib(b):
            return None if b is None else round(b / GIB, 2)

        return {"precision": self.precision, "gradient_checkpointing": self.gradient_checkpointing,
                "fused_adamw": self.fused_adamw, "tf32": self.tf32, "compile": self.compile,
                "pin_memory": self.loader.get("pin_memory", False),
                "persistent_workers": self.loader.get("persistent_workers", False),
                "estimate_gib": gib(self.need_bytes), "free_gib": gib(self.free_bytes)}

    def log(self, logger: logging.Logger = log) -> None:
        for key in ("precision", "gradient_checkpointing", "fused_adamw", "tf32", "compile"):
            logger.info("%s: %s (%s)", key, getattr(self, key), self.reasons.get(key, ""))
        logger.info("data loader: %s", self.loader)


def plan_speed(train_cfg, *, stage: str, resolution: int, num_workers: int, facts: DeviceFacts, precision: str,
               precision_reason: str, trainable_params: int, num_processes: int = 1) -> SpeedPlan:
    """Every rule for one run (``precision`` was chosen before the models loaded, see :func:`choose_precision`)."""
    need = estimate_training_bytes(stage, train_cfg.batch_size, resolution, precision, trainable_params, num_processes)
    gc, gc_why = choose_gradient_checkpointing(train_cfg.gradient_checkpointing, need_bytes=need,
                                               free_bytes=facts.free_bytes)
    fused, fused_why = choose_fused_adamw(facts.type)
    tf32, tf32_why = choose_tf32(facts.type)
    comp, comp_why = choose_compile(bool(train_cfg.compile), facts.type)
    return SpeedPlan(precision=precision, gradient_checkpointing=gc, fused_adamw=fused, tf32=tf32, compile=comp,
                     loader=data_loader_options(facts.type, num_workers), need_bytes=need, free_bytes=facts.free_bytes,
                     device=facts.name or facts.type,
                     reasons={"precision": precision_reason, "gradient_checkpointing": gc_why,
                              "fused_adamw": fused_why, "tf32": tf32_why, "compile": comp_why})


# ----------------------------------------------------------------------------- applying them
class tf32_enabled:
    """Context: TF32 matmul / cuDNN and cudnn.benchmark on while the run trains, restored afterwards."""

    def __init__(self, on: bool):
        self.on = on

    def __enter__(self):
        import torch

        b = torch.backends
        self.saved = (b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32, b.cudnn.benchmark)
        if self.on:
            b.cuda.matmul.allow_tf32 = b.cudnn.allow_tf32 = b.cudnn.benchmark = True
        return self

    def __exit__(self, *exc):
        import torch

        b = torch.backends
        b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32, b.cudnn.benchmark = self.saved


def make_adamw(params, train_cfg, fused: bool):
    """The trainer's AdamW (the config's hyper-parameters; fused on CUDA)."""
    import torch

    return torch.optim.AdamW(params, lr=train_cfg.learning_rate, betas=(train_cfg.adam_beta1, train_cfg.adam_beta2),
                             weight_decay=train_cfg.weight_decay, eps=train_cfg.adam_epsilon,
                             **({"fused": True} if fused else {}))


def set_optimizer_mode(optimizer, fused: bool) -> None:
    """After a checkpoint was loaded: this run's kernel choice (the checkpoint's param groups carry the
    writer's), with the step counters where that kernel keeps them (fused: on the parameter's device)."""
    import torch

    for group in optimizer.param_groups:
        group["fused"] = True if fused else None
        if fused:
            group["foreach"] = None
        for p in group["params"]:
            st = optimizer.state.get(p)
            if st and torch.is_tensor(st.get("step")):
                dev = p.device if (fused or group.get("capturable")) else torch.device("cpu")
                st["step"] = st["step"].to(device=dev, dtype=torch.float32)


def compile_network(net) -> None:
    """``torch.compile`` the network in place (``nn.Module.compile``: its state-dict keys stay the same)."""
    net.compile()
