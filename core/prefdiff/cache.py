"""Where prefdiff keeps what it can rebuild: base models, generated data, trained judges."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_VARIABLE = "PREFDIFF_CACHE"


def cache_root() -> Path:
    """The cache folder: ``$PREFDIFF_CACHE``, else ``~/.cache/prefdiff``.

    Plugins keep their own derived data under it (a parsed dataset, a trained
    segmenter) so `prefdiff bench` reruns start where the last run stopped.
    """
    return Path(os.environ.get(CACHE_VARIABLE, Path.home() / ".cache" / "prefdiff"))
