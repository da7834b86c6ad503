"""R2R staged trainer (``python -m training <stage> --config training/configs/<stage>.yaml``).

Stages: ``clear_vae`` (ref §b.6), ``unet`` (ref §d), ``controller`` (ref §c.5). Built on accelerate:
``accelerate launch -m training <stage> --config ...`` runs the same code on many GPUs or machines.
See docs/training.md. Heavy imports happen inside the functions that need them.
"""

from .config import STAGES, TrainingConfig, load_config

__all__ = ["STAGES", "TrainingConfig", "load_config", "run_training"]


def run_training(cfg, **kwargs):
    """:func:`training.trainer.run_training` (resume, stop_after, overwrite, force_resume, skip_bad_files)."""
    from .trainer import run_training as _run

    return _run(cfg, **kwargs)
