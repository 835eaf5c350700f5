"""Pretrained bases shipped with a field, so a first run aligns a real base in minutes.

A recipe names a folder (``Recipe.shipped_bases``, usually inside its plugin
package) holding a ``DOMAIN/`` folder: a base model exactly as the benchmark
cache holds it (so ``prefdiff fit --model.init_args.base`` and ``prefdiff
sample --model`` open it as it is), plus ``shipped.json`` with the cache key
and what was hashed. `prefdiff bench` uses a shipped base whose key is the recipe's
(only for the seed it was trained with); a recipe change changes the key, so
a stale base is never used: the run pretrains and says why. ``--ship-base``
(which `make bench` passes) writes the base a run used into that folder.

The files a recipe's rewards read from its data folder (a field's trained
segmenters, say) ship beside the base under ``extras/`` and are put back
into the data folder before the recipe prepares, so a first run trains
neither the base nor its rewards.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger("prefdiff.bench")

RECORD = "shipped.json"


def shipped_base(folder: str | Path | None, domain: str, key: str) -> Path | None:
    """The shipped base for ``domain`` with cache ``key`` in ``folder``, or None (logging a stale one)."""
    record = Path(folder or "") / domain / RECORD
    if folder is None or not record.is_file():
        return None
    shipped_key = json.loads(record.read_text()).get("key")
    if shipped_key == key:
        return record.parent
    log.info(f"base model: the shipped {domain} base is for another recipe (key {shipped_key}, {key} now); "
             f"pretraining")
    return None


def install(shipped: Path, base: Path) -> Path:
    """Copy a shipped base into the cache folder ``base`` (atomically: a copy, then a rename)."""
    tmp = base.parent / f".{base.name}-shipped-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(shipped, tmp, ignore=shutil.ignore_patterns(RECORD, "extras"))
    os.replace(tmp, base)
    return base


def restore_extras(folder: str | Path | None, domain: str, data_dir: Path) -> list[Path]:
    """Copy the shipped extras of ``domain`` into ``data_dir`` where missing; returns what was copied.

    Extras are named by their own keys (``segmenters-KEY/...``), so one a recipe does not ask
    for is never read."""
    copied = []
    if folder is None or not Path(folder).is_dir():
        return copied
    for extras in sorted(Path(folder).glob(f"{domain}/extras")):
        for source in sorted(p for p in extras.rglob("*") if p.is_file()):
            target = data_dir / source.relative_to(extras)
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
                shutil.copy2(source, tmp)
                os.replace(tmp, target)
                copied.append(target)
    return copied


def ship(base: Path, folder: str | Path, domain: str, key: str, seed: int, material: dict,
         extras: list[Path] = (), data_dir: Path | None = None) -> Path:
    """Write the cached ``base`` (and ``extras``, files of ``data_dir``) as the shipped base of ``domain``,
    replacing older ones of the domain."""
    folder = Path(folder)
    target = folder / domain
    tmp = folder / f".{domain}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(base, tmp)
    for path in extras:
        copy = tmp / "extras" / Path(path).relative_to(data_dir)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, copy)
    (tmp / RECORD).write_text(json.dumps({"domain": domain, "key": key, "seed": seed, "hashed": material},
                                         indent=2, sort_keys=True, default=str) + "\n")
    old = folder / f".{domain}.old-{os.getpid()}"
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
    return target
