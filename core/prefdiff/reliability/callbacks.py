"""Lightning callbacks the catalogue names in a killed run's config (``trainer.callbacks``)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from pytorch_lightning import Callback


class KillAfter(Callback):
    """SIGKILL this process ``delay`` seconds after training starts: a crash at a point nobody chose."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def on_fit_start(self, trainer, pl_module) -> None:
        timer = threading.Timer(self.delay, os.kill, (os.getpid(), signal.SIGKILL))
        timer.daemon = True
        timer.start()


class MarkStart(Callback):
    """Write the time training starts to ``path``: the uninterrupted run's length is measured from it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_fit_start(self, trainer, pl_module) -> None:
        Path(self.path).write_text(repr(time.time()))


class KillInEpoch(Callback):
    """SIGKILL this process at the end of the first batch of ``epoch`` (0-based), after the checkpoint
    of the epoch before it is written. Every rank of a multi-process run holds one, so all die together."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)
