"""prefdiff's side: `prefdiff fit` with a config written by run.py, plus this Lightning callback.

The callback only watches: it marks a step boundary after every optimizer step (one step of
prefdiff's online trainers is one epoch of TRL's) and copies the LoRA weights, outside the timing.
Everything else is what a user's `prefdiff fit --config ...` does, checkpoints and logger included.
run.py puts this folder on PYTHONPATH so the config can name ``prefdiff_side.PeerRecorder``.
"""

from __future__ import annotations

import pytorch_lightning as pl
from harness import Recorder


class PeerRecorder(pl.Callback):
    """Times each training step and snapshots the LoRA weights every ``snapshot_every`` steps.

    :param out: folder for record.pt.
    :param method: the method's name, recorded.
    :param snapshot_every: steps between LoRA snapshots.
    """

    def __init__(self, out: str, method: str, snapshot_every: int = 2) -> None:
        self.recorder = Recorder(out, "prefdiff", method, snapshot_every)

    def on_train_start(self, trainer, pl_module) -> None:
        self.recorder.start(pl_module.denoiser.net)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.recorder.epoch_done(pl_module.denoiser.net)

    def on_train_end(self, trainer, pl_module) -> None:
        net = pl_module.denoiser.net
        self.recorder.finish(net, lora_tensors=sum(p.numel() for n, p in net.named_parameters() if "lora_" in n))
