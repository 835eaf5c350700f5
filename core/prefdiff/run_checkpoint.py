"""What `prefdiff fit` keeps of a run: ``last.ckpt`` at every epoch's end and stop, and every N steps."""

from __future__ import annotations

from typing import Any

from pytorch_lightning.callbacks import ModelCheckpoint

from prefdiff.errors import UserError


class RunCheckpoint(ModelCheckpoint):
    """Lightning's checkpoint callback as `prefdiff fit` sets it: ``last.ckpt`` (and the newest epoch's
    own file) at each epoch's end and when training stops, and with ``every_n_steps`` (``prefdiff fit
    --checkpoint_every N``) ``last.ckpt`` rewritten inside an epoch too, once every N optimizer steps.

    One Pick-a-Pic v2 epoch is about 26 thousand steps: without it a crash loses the epoch so far.
    ``--ckpt_path last`` resumes such a checkpoint inside its epoch, to the adapter an uninterrupted run
    writes. (Lightning's own ``every_n_train_steps`` turns the epoch-end saves off, and warns on every
    save of a manually optimized module, which most of prefdiff's trainers are.)
    """

    def __init__(self, every_n_steps: int | None = None, **options: Any) -> None:
        # Lightning 2.6 writes last.ckpt only beside a top-k save: top 1 keeps one per epoch end.
        super().__init__(**{"save_last": True, "save_top_k": 1, **options})
        self.every_n_steps = every_n_steps
        self._step_at_save = 0

    @property
    def state_key(self) -> str:
        # ModelCheckpoint's own key: a checkpoint written before this class existed restores its state.
        return super().state_key.replace(type(self).__name__, ModelCheckpoint.__name__, 1)

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self._step_at_save = trainer.global_step  # a resumed run counts from where it resumed

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        n, step = self.every_n_steps, trainer.global_step
        if not n or step // n == self._step_at_save // n or self._should_skip_saving_checkpoint(trainer):
            return
        self._step_at_save = step
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return  # the epoch's end saves it, with the epoch's own file beside it
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def check_checkpoint_every(steps: int | None) -> None:
    """``prefdiff fit --checkpoint_every`` is a number of optimizer steps >= 1, or None (checked before
    the model loads)."""
    if steps is not None and (isinstance(steps, bool) or steps < 1):
        raise UserError(f"--checkpoint_every must be a whole number of optimizer steps >= 1 (or null), "
                        f"got {steps}")


def set_checkpoint_every(trainer, steps: int | None) -> None:
    """Apply ``prefdiff fit --checkpoint_every``."""
    check_checkpoint_every(steps)
    if steps is None:
        return
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, RunCheckpoint):
            callback.every_n_steps = steps
