"""A full disk: an OSError(ENOSPC) injected into the writer, and a real per-process file size limit."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from prefdiff.reliability.case import Case
from prefdiff.reliability.common import changed, leftovers, one_line_error, run, snapshot

DISK_CASES = {
    "append-pair": ("label", "ENOSPC mid-line while appending an answer to a pair file"),
    "save-tensors": ("mining", "ENOSPC mid-file while replacing a pair's tensor file"),
    "rewrite": ("label", "ENOSPC while undo rewrites a pair file"),
    "save-lora": ("fit", "ENOSPC mid-file while replacing an exported LoRA adapter"),
    "save-model": ("bench", "ENOSPC mid-folder while replacing a model folder"),
    "checkpoint": ("fit", "ENOSPC mid-file while replacing last.ckpt"),
    "mining": ("bench", "ENOSPC part way through mining into a folder of earlier pairs"),
    "fit-file-limit": ("fit", "a file size limit (EFBIG) below a checkpoint, over an earlier finished run"),
    "sample-file-limit": ("sample", "a file size limit (EFBIG) below the samples file, over earlier samples"),
    "segmenter-file-limit": ("medical train-segmenter",
                             "a file size limit (EFBIG) below the checkpoint, over an earlier one"),
    "driving-cache-file-limit": ("driving dataset", "a file size limit (EFBIG) below the parsed-dataset cache: "
                                                    "the run goes on without the cache and says so"),
}
"""Name -> (the command whose writer it is, what happens)."""

QUICK = ("append-pair", "save-tensors", "rewrite", "save-lora", "save-model", "checkpoint", "mining")
"""The in-process cases (seconds): the quick subset tests/test_reliability.py runs."""


@contextlib.contextmanager
def disk_full_after(budget: int) -> Iterator[None]:
    """Every ``os.write`` writes at most ``budget`` bytes in all, then fails with ENOSPC (a short write
    first, as a filling disk does)."""
    real, left = os.write, [budget]

    def write(fd: int, data) -> int:
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = real(fd, bytes(data[:left[0]]))
        left[0] -= n
        return n

    os.write = write
    try:
        yield
    finally:
        os.write = real


def _tiny():
    from prefdiff.models import add_lora
    from prefdiff.testing import tiny_denoiser

    return add_lora(tiny_denoiser(sample_size=8, block_out_channels=(8, 16)))


def _in_process(folder: Path, earlier: Callable[[Path], Any], write: Callable[[Path], Any], budget: int,
                culprit: str, appends: bool = False) -> tuple[bool, str, bool]:
    """Write ``earlier`` files, then ``write`` again on a disk that fills after ``budget`` bytes.

    :param appends: the writer adds to a folder of pairs: the pair file may grow by the whole pairs
        written before the disk filled, and their new files may stay.
    """
    from prefdiff.errors import UserError

    earlier(folder)
    before = snapshot(folder)
    try:
        with disk_full_after(budget):
            write(folder)
    except UserError as exc:
        message = str(exc)
    else:
        return False, "no error", False
    lost = changed(before, folder, may_grow=("pairs.jsonl",) if appends else ())
    if not appends:
        lost += sorted(set(snapshot(folder)) - set(before))
    left = leftovers(folder)
    ok_message = "could not write" in message and culprit in message and "free disk space" in message
    detail = (f"error: {message[:240]}; files " + ("as they were" if not lost else f"CHANGED: {', '.join(lost)}")
              + ("" if not left else f"; temporaries left: {', '.join(left)}"))
    return ok_message and not lost and not left, detail, bool(lost)


def _append_pair(folder: Path):
    from prefdiff.data import append_pair

    record = {"condition": "c.safetensors", "a": "a.safetensors", "b": "b.safetensors", "winner": "a"}
    return (lambda f: [append_pair(f / "pairs.jsonl", {**record, "id": f"p{i}"}) for i in range(3)],
            lambda f: append_pair(f / "pairs.jsonl", {**record, "id": "new"}), 20, "pairs.jsonl")


def _save_tensors(folder: Path):
    import torch

    from prefdiff.data import save_tensors

    return (lambda f: save_tensors(f / "a.safetensors", {"sample": torch.ones(3, 8, 8)}),
            lambda f: save_tensors(f / "a.safetensors", {"sample": torch.zeros(3, 8, 8)}), 300, "a.safetensors")


def _rewrite(folder: Path):
    from prefdiff.durable import atomic_write_text

    return (lambda f: atomic_write_text(f / "pairs.jsonl", '{"id": "p0"}\n{"id": "p1"}\n'),
            lambda f: atomic_write_text(f / "pairs.jsonl", '{"id": "p0"}\n'), 5, "pairs.jsonl")


def _save_lora(folder: Path):
    from prefdiff.models import save_lora

    denoiser = _tiny()
    return lambda f: save_lora(denoiser, f / "lora"), lambda f: save_lora(denoiser, f / "lora"), 2000, "lora"


def _save_model(folder: Path):
    from prefdiff.models import save_model
    from prefdiff.testing import tiny_scheduler

    denoiser = _tiny()
    return (lambda f: save_model(denoiser, f / "model", tiny_scheduler()),
            lambda f: save_model(denoiser, f / "model", tiny_scheduler()), 20_000, "model")


def _checkpoint(folder: Path):
    import torch

    from prefdiff.fit import _with_durable_checkpoints

    writer = _with_durable_checkpoints(None)[0]
    state = {"state_dict": {"w": torch.ones(64, 64)}, "epoch": 0}
    return (lambda f: writer.save_checkpoint(state, f / "last.ckpt"),
            lambda f: writer.save_checkpoint({**state, "epoch": 1}, f / "last.ckpt"), 4000, "last.ckpt")


def _mining(folder: Path):
    import torch

    from prefdiff.data import MinedSamples, write_best_worst_pairs

    def mined(seed: int) -> MinedSamples:
        g = torch.Generator().manual_seed(seed)
        return MinedSamples(torch.rand(6, 2, 3, 8, 8, generator=g), torch.tensor([[1.0, 0.0]] * 6),
                            [torch.tensor(c % 4) for c in range(6)])

    def write(f: Path) -> None:
        write_best_worst_pairs(mined(1), f, "reward:r")

    return lambda f: write_best_worst_pairs(mined(0), f, "reward:r"), write, 6000, "safetensors"


IN_PROCESS = {"append-pair": _append_pair, "save-tensors": _save_tensors, "rewrite": _rewrite,
              "save-lora": _save_lora, "save-model": _save_model, "checkpoint": _checkpoint, "mining": _mining}


def _pairs_whole(folder: Path) -> str | None:
    from prefdiff.data import PairDataset
    from prefdiff.errors import UserError

    try:
        pairs = PairDataset(folder / "pairs.jsonl")
        for i in range(len(pairs)):
            pairs[i]
    except UserError as exc:
        return str(exc)[:200]
    return None


# ----------------------------------------------------- real size limits ----


def _fit_limit(work: Path) -> tuple[bool, str, bool]:
    from prefdiff.reliability.kills import family_config

    folder = work / "disk" / "fit"
    config = family_config("sft", folder)
    root = folder / "run"
    first = run(["fit", "--config", str(config), "--trainer.default_root_dir", str(root)], work)
    if first.returncode != 0:
        return False, f"the earlier run failed: {first.stderr[-300:]}", False
    before = snapshot(root)
    before.pop("fit.log", None)  # the log the second run appends to
    again = run(["fit", "--config", str(config), "--trainer.default_root_dir", str(root)], work, file_limit=40_000)
    return _limit_verdict(again, "could not write", before, root, "ckpt")


def _sample_limit(work: Path) -> tuple[bool, str, bool]:
    from prefdiff.models import build_denoiser, save_model

    folder = work / "disk" / "sample"
    save_model(build_denoiser({"kind": "unet2d", "sample_size": 8, "conditioning": "class", "num_classes": 4,
                               "block_out_channels": [8, 16]}), folder / "model")
    args = ["sample", "--model", str(folder / "model"), "--dataset", "synthetic_textures", "--dataset-option",
            "resolution=8", "--conditioner", "class_label", "--steps", "2", "--out", str(folder / "out")]
    first = run([*args, "--n", "4"], work)
    if first.returncode != 0:
        return False, f"the earlier run failed: {first.stderr[-300:]}", False
    before = snapshot(folder / "out")
    again = run([*args, "--n", "64", "--seed", "1"], work, file_limit=20_000)
    return _limit_verdict(again, "samples.safetensors", before, folder / "out", "samples.safetensors")


def _segmenter_limit(work: Path) -> tuple[bool, str, bool]:
    folder = work / "disk" / "segmenter"
    made = run(["medical", "make-data", str(folder / "task"), "--volumes", "3", "--size", "32", "--depth", "8"], work)
    if made.returncode != 0:
        return False, f"make-data failed: {made.stderr[-300:]}", False
    args = ["medical", "train-segmenter", str(folder / "task"), str(folder / "out" / "seg.safetensors"), "--steps",
            "1", "--batch-size", "2"]
    first = run(args, work)
    if first.returncode != 0:
        return False, f"the earlier run failed: {first.stderr[-300:]}", False
    before = snapshot(folder / "out")
    again = run([*args, "--seed", "2"], work, file_limit=50_000)
    return _limit_verdict(again, "seg.safetensors", before, folder / "out", "seg.safetensors")


def _limit_verdict(result, culprit: str, before: dict[str, bytes], folder: Path,
                   big: str) -> tuple[bool, str, bool]:
    why = one_line_error(result, culprit)
    lost = changed(before, folder)
    left = leftovers(folder)
    biggest = max((len(v) for k, v in before.items() if k.endswith(big)), default=0)
    detail = (f"limit below a {biggest // 1000} KB file; " + (f"error line: {result.stderr.strip()[:240]}"
                                                               if why is None else f"NOT one clear line: {why}")
              + "; earlier files " + ("as they were" if not lost else f"CHANGED: {', '.join(lost)}")
              + ("" if not left else f"; temporaries left: {', '.join(left)}"))
    return why is None and not lost and not left, detail, bool(lost)


def _driving_cache_limit(work: Path) -> tuple[bool, str, bool]:
    folder = work / "disk" / "driving"
    made = run(["driving", "make-data", str(folder / "nuscenes")], work)
    if made.returncode != 0:
        return False, f"make-data failed: {made.stderr[-300:]}", False
    options = json.dumps({"root": str(folder / "nuscenes"), "split": "train"})
    result = run(["dataset", "nuscenes_bev", options], work, module="prefdiff.reliability.worker", file_limit=200_000)
    cache = work / "cache" / "driving"
    cached = sorted(p.name for p in cache.glob("*")) if cache.exists() else []
    ok = result.returncode == 0 and "could not write the cache file" in result.stderr and not cached
    detail = (f"exit {result.returncode}; " + (result.stderr.strip().splitlines() or ["no message"])[-1][:240]
              + f"; cache folder holds {cached or 'nothing'}")
    return ok, detail, bool(cached)


LIMITED = {"fit-file-limit": _fit_limit, "sample-file-limit": _sample_limit, "segmenter-file-limit": _segmenter_limit,
           "driving-cache-file-limit": _driving_cache_limit}


def run_disk(cases: list[Case], work: Path) -> list[dict[str, Any]]:
    """Each disk-full case; the in-process ones inject ENOSPC, the others set a file size limit."""
    results = []
    for case in cases:
        started = time.monotonic()
        name = case.params["name"]
        try:
            if name in IN_PROCESS:
                folder = work / "disk" / name
                folder.mkdir(parents=True, exist_ok=True)
                earlier, write, budget, culprit = IN_PROCESS[name](folder)
                passed, detail, corrupted = _in_process(folder, earlier, write, budget, culprit,
                                                        appends=name == "mining")
                if name == "mining" and (broken := _pairs_whole(folder)):
                    passed, corrupted, detail = False, True, f"{detail}; pairs unreadable: {broken}"
            else:
                passed, detail, corrupted = LIMITED[name](work)
        except Exception as exc:  # a bug in prefdiff or here: the case fails, the catalogue goes on
            passed, detail, corrupted = False, f"{type(exc).__name__}: {exc}"[:400], False
        results.append({**case.as_dict(), "passed": passed, "detail": detail, "corrupted": corrupted,
                        "seconds": round(time.monotonic() - started, 1)})
    return results
