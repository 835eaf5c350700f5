"""Lightning without the chatter: trainer settings for in-process runs, and where its lines go.

A benchmark or a demo trains many small models in one process. Lightning
would print its accelerator lines, a tip and a deprecation warning for every
one of them, burying prefdiff's own lines; :func:`lightning_chatter_to`
sends all of that to a log file instead, and :func:`quiet_trainer` builds a
trainer with no logger, checkpoints, progress bar or summary.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Any, Iterator

#: Loggers Lightning writes its info lines to (the accelerator lines, the tips).
LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric")

#: Trainer options that keep a run's terminal output to prefdiff's own lines.
QUIET_TRAINER = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False,
                 "num_sanity_val_steps": 0}


def quiet_trainer(max_steps: int, *, callbacks: list | None = None, **overrides: Any):
    """A CPU ``pl.Trainer`` for ``max_steps`` steps with :data:`QUIET_TRAINER`'s settings and no
    checkpoints: an in-process run whose only output is the trained module.

    ``overrides`` replace any of them (or add other Trainer options).
    """
    import pytorch_lightning as pl

    options = {"accelerator": "cpu", "devices": 1, "use_distributed_sampler": False, "limit_val_batches": 0,
               "deterministic": False, "enable_checkpointing": False, **QUIET_TRAINER, **overrides}
    return pl.Trainer(max_steps=max_steps, callbacks=callbacks or [], **options)


@contextlib.contextmanager
def lightning_chatter_to(log_file: str | Path | None) -> Iterator[None]:
    """Inside the block, Lightning's lines and Python warnings go to ``log_file``, not the terminal.

    With ``log_file`` None they are dropped. prefdiff's own logger (``prefdiff``)
    also writes to the file, so it holds the whole story of the run. Handlers
    and the warnings capture are restored on exit.
    """
    import pytorch_lightning  # noqa: F401  (its import adds a terminal handler: install ours after it)

    handler: logging.Handler = (logging.FileHandler(log_file, encoding="utf-8") if log_file is not None
                                else logging.NullHandler())
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in (*LIGHTNING_LOGGERS, "py.warnings")]
    saved = [(lg, lg.handlers[:], lg.propagate) for lg in loggers]
    ours = logging.getLogger("prefdiff")
    for lg in loggers:
        lg.handlers = [handler]
        lg.propagate = False
    ours.addHandler(handler)
    # The file holds prefdiff's INFO lines even where nothing asked for them on the terminal
    # (a library call); records below WARNING still reach no terminal handler.
    level = ours.level
    if level == logging.NOTSET or level > logging.INFO:
        ours.setLevel(logging.INFO)
    logging.captureWarnings(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            yield
    finally:
        logging.captureWarnings(False)
        ours.removeHandler(handler)
        ours.setLevel(level)
        for lg, handlers, propagate in saved:
            lg.handlers, lg.propagate = handlers, propagate
        handler.close()


class _Console(logging.Handler):
    """Writes progress to whatever ``sys.stdout`` is at the time (pytest swaps it per test), and
    warnings to ``sys.stderr`` as ``prefdiff: warning: ...`` lines, so output piped to a file keeps them
    off it, and a user error that follows is still the one ``prefdiff: error:`` line."""

    def emit(self, record: logging.LogRecord) -> None:
        import sys

        warning = record.levelno >= logging.WARNING
        stream = sys.stderr if warning else sys.stdout
        try:
            stream.write(("prefdiff: warning: " if warning else "") + self.format(record) + "\n")
            stream.flush()
        except Exception:  # a closed stream must not end the run
            self.handleError(record)


def show_progress_lines() -> None:
    """Print prefdiff's progress lines (logger ``prefdiff``, level INFO) on stdout, and its warnings on
    stderr, once per process.

    The command line calls this; a library user keeps Python's default (silent) logging.
    """
    logger = logging.getLogger("prefdiff")
    if not any(isinstance(h, _Console) for h in logger.handlers):
        handler = _Console()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
