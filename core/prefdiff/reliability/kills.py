"""SIGKILL at random points: `prefdiff fit` resumed, `prefdiff bench` and pair mining rerun."""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from prefdiff.reliability.case import Case
from prefdiff.reliability.common import changed, kill_when, leftovers, run, snapshot, start

TINY_MODEL = {"kind": "unet2d", "sample_size": 8, "conditioning": "class", "num_classes": 4,
              "block_out_channels": [8, 16]}

#: One trainer per family: its class in prefdiff.trainers and its options (tests/test_cli.py uses these too).
FAMILIES = {
    "sft": ("SFTModule", {}),
    "dpo": ("PairModule", {"objective": "dpo", "beta": 500.0}),
    "d3po": ("D3POModule", {"reward": "jpeg_compressibility"}),
    "ddpo": ("PolicyGradientModule", {"method": "ddpo", "reward": "jpeg_compressibility",
                                      "samples_per_condition": 2}),
    "draft": ("RewardBackpropModule", {"method": "draft", "reward": "smoothness", "k": 1}),
}
EPOCHS = 4
RETRIES = 3
"""A kill that lands after the run ended is drawn again, this many times at most: at the same fraction of that
run's own length (a fit), or at half the delay (a benchmark, a mining)."""


def _result(case: Case, passed: bool, detail: str, started: float, **extra: Any) -> dict[str, Any]:
    return {**case.as_dict(), "passed": passed, "detail": detail, "seconds": round(time.monotonic() - started, 1),
            **extra}


# ------------------------------------------------------------------ fit ----


def pair_file(folder: Path) -> Path:
    """Eight tiny preference pairs (conditions and both samples as safetensors) in ``folder``."""
    import torch

    from prefdiff.data import append_pair, save_tensors

    g = torch.Generator().manual_seed(0)
    for i in range(8):
        save_tensors(folder / f"c{i}.safetensors", {"cond": torch.tensor(i % 4)})
        for side in "ab":
            save_tensors(folder / f"{side}{i}.safetensors", {"sample": torch.rand(3, 8, 8, generator=g) * 2 - 1})
        append_pair(folder / "pairs.jsonl", {"condition": f"c{i}.safetensors", "a": f"a{i}.safetensors",
                                             "b": f"b{i}.safetensors", "winner": "a"})
    return folder / "pairs.jsonl"


def family_config(family: str, folder: Path) -> Path:
    """A config training ``family`` for EPOCHS epochs of 2 steps of batch 4 (last.ckpt at each epoch end)."""
    cls, options = FAMILIES[family]
    folder.mkdir(parents=True, exist_ok=True)
    data = ({"pairs": str(pair_file(folder))} if family == "dpo" else
            {"dataset": "synthetic_textures", "dataset_options": {"resolution": 8, "size": 8}})
    config = {"seed_everything": 0,
              "trainer": {"accelerator": "cpu", "max_epochs": EPOCHS, "logger": False, "enable_progress_bar": False,
                          "enable_model_summary": False, "limit_val_batches": 0},
              "model": {"class_path": f"prefdiff.trainers.{cls}",
                        "init_args": {"model": TINY_MODEL, "conditioner": "class_label", "num_steps": 3,
                                      "lr": 0.01, "lora_rank": 4, **options}},
              "data": {**data, "batch_size": 4, "val_size": 0}}
    path = folder / f"{family}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _callback_config(config: Path, *callbacks: tuple[str, dict[str, Any]]) -> Path:
    """A config adding :mod:`prefdiff.reliability.callbacks` (class name, init args) to the Trainer."""
    config.write_text(yaml.safe_dump({"trainer": {"callbacks": [
        {"class_path": f"prefdiff.reliability.callbacks.{name}", "init_args": args} for name, args in callbacks]}}))
    return config


def _adapter(root: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(root / "lora" / "adapter_model.safetensors"))


def _unreadable(root: Path) -> list[str]:
    """The checkpoints and adapters a killed run left that do not read whole."""
    import torch
    from safetensors.torch import load_file

    bad = []
    for ckpt in sorted(root.rglob("*.ckpt")):
        try:
            torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
        except Exception as exc:
            bad.append(f"{ckpt.relative_to(root)}: {type(exc).__name__}")
    for weights in sorted(root.rglob("adapter_model.safetensors")):
        try:
            load_file(str(weights))
            json.loads((weights.parent / "adapter_config.json").read_text())
        except Exception as exc:
            bad.append(f"{weights.parent.relative_to(root)}: {type(exc).__name__}")
    return bad


def run_resume(cases: list[Case], work: Path, jobs: int) -> list[dict[str, Any]]:
    """Each family once uninterrupted, then each case: kill, check what is left, resume, compare."""
    import torch

    configs = {family: family_config(family, work / "resume" / family) for family in FAMILIES}
    references: dict[str, tuple[dict, float]] = {}

    def reference(family: str) -> None:
        folder = work / "resume" / family
        mark = _callback_config(folder / "mark.yaml", ("MarkStart", {"path": str(folder / "started")}))
        result = run(["fit", "--config", str(configs[family]), "--config", str(mark),
                      "--trainer.default_root_dir", str(folder / "straight")], work)
        ended = time.time()
        if result.returncode != 0:
            raise RuntimeError(f"the uninterrupted {family} run failed: {result.stderr[-2000:]}")
        length = ended - float((folder / "started").read_text())
        references[family] = (_adapter(folder / "straight"), length)

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(reference, FAMILIES))

    def one(case: Case) -> dict[str, Any]:
        started = time.monotonic()
        family, at = case.params["family"], case.params["at"]
        expected, length = references[family]
        folder = work / "resume" / family
        root = folder / case.id.rsplit("/", 1)[1]
        delay, killed, tries = at * length, False, 0
        while not killed and tries < RETRIES:
            tries += 1
            shutil.rmtree(root, ignore_errors=True)
            began = folder / f"{root.name}.started"
            kill = _callback_config(folder / f"{root.name}.yaml", ("MarkStart", {"path": str(began)}),
                                    ("KillAfter", {"delay": delay}))
            result = run(["fit", "--config", str(configs[family]), "--config", str(kill),
                          "--trainer.default_root_dir", str(root)], work)
            ended = time.time()
            killed = result.returncode == -9
            if not killed and result.returncode != 0:
                return _result(case, False, f"the run to be killed failed: {result.stderr[-500:]}", started)
            if not killed:  # the machine ran faster than for the reference: the same point of this run
                delay = min(delay / 2, at * (ended - float(began.read_text())))
        if not killed:
            return _result(case, False, f"the run ended before every kill ({tries} tries)", started)
        bad = _unreadable(root)
        left = leftovers(root)
        had = "a last.ckpt" if list(root.rglob("last.ckpt")) else "no checkpoint yet"
        if bad:
            return _result(case, False, f"killed at {delay:.2f} s; left unreadable: {', '.join(bad)}", started,
                           corrupted=True)
        resumed = run(["fit", "--config", str(configs[family]), "--trainer.default_root_dir", str(root),
                       "--ckpt_path", "last"], work)
        if resumed.returncode != 0:
            return _result(case, False, f"killed at {delay:.2f} s; the resume failed: {resumed.stderr[-500:]}",
                           started)
        got = _adapter(root)
        same = got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)
        detail = (f"killed at {delay:.2f} s of {length:.2f} s ({had}; {len(left)} temporary left); resumed "
                  + ("to the same adapter" if same else "to a DIFFERENT adapter"))
        return _result(case, same, detail, started, corrupted=not same)

    with ThreadPoolExecutor(jobs) as pool:
        return list(pool.map(one, cases))


# ---------------------------------------------------------------- bench ----


def _kill_worker(argv, work: Path, marker: Path, at: float, length: float, finished) -> tuple[bool, float, int]:
    """Start ``worker ARGV(marker)`` and SIGKILL it ``at * length`` s after it touches ``marker``. A run that
    ends first (``finished(exit code)`` is told) is drawn again at ``at`` of its own length (at most half the
    delay), RETRIES times at most.

    Returns (killed, the delay of the last try, tries).
    """
    delay = at * length
    for tries in range(1, RETRIES + 1):
        mark = marker.with_name(f"{marker.name}-{tries}")
        mark.unlink(missing_ok=True)
        proc = start(argv(mark), work, module="prefdiff.reliability.worker")
        if kill_when(proc, mark, delay) and not mark.with_name(f"{mark.name}.done").exists():
            return True, delay, tries
        finished(proc.returncode)  # it ran to the end (a kill after MARKER.done only cut its exit short)
        if tries < RETRIES:
            delay = min(delay / 2, at * (time.time() - mark.stat().st_mtime))
    return False, delay, RETRIES


def _base_models_load(cache: Path) -> list[str]:
    from prefdiff.models import is_model_folder, load_model
    from prefdiff.plugins import get_manager

    bad = []
    for base in cache.glob("bench/tiny-*/base"):
        try:
            if not is_model_folder(base):
                raise ValueError("not a model folder")
            load_model(base, get_manager().conditioner("class_label"))
        except Exception as exc:
            bad.append(f"{base.name}: {type(exc).__name__}: {exc}"[:300])
    return bad


def _whole_new_results(before: dict[str, bytes], out: Path) -> bool:
    """Whether ``out`` is a finished run's folder that replaced the one ``before`` describes: every
    earlier file is there, the user's NOTES.md as it was, and a new results.json with every method."""
    now = snapshot(out) if out.exists() else {}
    try:
        results = json.loads(now.get("results.json", b""))
    except ValueError:
        return False
    methods = set(tiny_bench_methods())
    return (set(before) <= set(now) and now.get("NOTES.md") == before.get("NOTES.md")
            and now["results.json"] != before.get("results.json") and set(results.get("methods", {})) == methods)


def tiny_bench_methods() -> list[str]:
    from prefdiff.reliability.worker import tiny_bench_recipe

    return list(tiny_bench_recipe().default_methods)


def run_bench(cases: list[Case], work: Path) -> list[dict[str, Any]]:
    """An earlier finished run in ``out``; each case kills a rerun into it, checks ``out``, reruns."""
    folder = work / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    out, warm = folder / "out", folder / "cache-warm"

    def bench(cache: Path):
        return lambda marker: ["bench", str(out), str(cache), str(marker)]

    lengths = {}
    for cold in (True, False):  # the first run fills the cache, the second uses it
        marker = folder / "marker"
        result = run(bench(warm)(marker), work, module="prefdiff.reliability.worker")
        if result.returncode != 0:
            raise RuntimeError(f"the earlier benchmark run failed: {result.stderr[-2000:]}")
        lengths[cold] = time.time() - marker.stat().st_mtime
    (out / "NOTES.md").write_text("a user's notes on this run\n")
    results = []
    for k, case in enumerate(cases):
        started = time.monotonic()
        state = {"before": snapshot(out)}
        cache = folder / f"cache-{k}"
        shutil.rmtree(cache, ignore_errors=True)
        if not case.params["cold"]:
            shutil.copytree(warm, cache)

        def finished(code: int) -> None:  # it ran to the end: that is the earlier run now
            state["before"] = snapshot(out)

        length = lengths[case.params["cold"]]
        killed, delay, tries = _kill_worker(bench(cache), work, folder / f"marker-{k}", case.params["at"], length,
                                            finished)
        lost = changed(state["before"], out) + sorted(set(snapshot(out)) - set(state["before"]))
        published = bool(lost) and _whole_new_results(state["before"], out)
        if published:  # killed after its publish (two renames): the folder is the killed run's, whole
            lost = []
        bad = _base_models_load(cache)
        left = leftovers(folder)
        rerun = run(bench(cache)(folder / f"marker-{k}-rerun"), work, module="prefdiff.reliability.worker")
        finished_ok = rerun.returncode == 0 and "methods" in json.loads((out / "results.json").read_text())
        notes = (out / "NOTES.md").read_text() == "a user's notes on this run\n"
        beside = sorted(p.name for p in out.parent.glob(f".{out.name}.*"))  # the rerun clears the killed run's
        passed = killed and not lost and not bad and finished_ok and notes and not beside
        detail = (f"killed at {delay:.1f} s of {length:.1f} s; results folder "
                  + ("the killed run's, whole (it had published)" if published else
                     "as it was" if not lost else f"CHANGED: {', '.join(lost)[:300]}")
                  + ("" if not bad else f"; cached base unreadable: {bad[0]}")
                  + f"; {len(left)} temporary left beside it; rerun "
                  + ("finished" if finished_ok else f"FAILED: {rerun.stderr[-300:]}")
                  + ("" if not beside else f"; LEFT after the rerun: {', '.join(beside)}")
                  + ("" if notes else "; NOTES.md lost"))
        if not killed:
            detail = f"the run ended before every kill ({tries} tries); " + detail
        results.append(_result(case, passed, detail, started, corrupted=bool(lost or bad or not notes)))
        shutil.rmtree(cache, ignore_errors=True)
    return results


# --------------------------------------------------------------- mining ----


def _pairs_readable(out: Path) -> str | None:
    """None when every line of the pair file is whole and names readable tensors, else what is not."""
    from prefdiff.data import PairDataset
    from prefdiff.durable import read_records
    from prefdiff.errors import UserError

    try:
        read_records(out / "pairs.jsonl", torn_tail_ok=True)
        pairs = PairDataset(out / "pairs.jsonl")
        for i in range(len(pairs)):
            pairs[i]
    except UserError as exc:
        return str(exc)[:300]
    return None


def run_mining(cases: list[Case], work: Path) -> list[dict[str, Any]]:
    """Earlier mined pairs in ``out``; each case kills a mining into it while it writes, checks, reruns."""
    folder = work / "mining"
    out = folder / "out"
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / "marker"
    result = run(["mine", str(out), "0", str(marker)], work, module="prefdiff.reliability.worker")
    if result.returncode != 0:
        raise RuntimeError(f"the earlier mining failed: {result.stderr[-2000:]}")
    length = time.time() - marker.stat().st_mtime
    results = []
    for k, case in enumerate(cases):
        started = time.monotonic()
        state = {"before": snapshot(out)}
        seed = str(k + 1)

        def finished(code: int) -> None:
            state["before"] = snapshot(out)

        killed, delay, tries = _kill_worker(lambda mark: ["mine", str(out), seed, str(mark)], work,
                                            folder / f"marker-{k}", case.params["at"], length, finished)
        lost = changed(state["before"], out, may_grow=("pairs.jsonl",))
        unreadable = _pairs_readable(out)
        rerun = run(["mine", str(out), seed, str(folder / f"marker-{k}-rerun")], work,
                    module="prefdiff.reliability.worker")
        after = _pairs_readable(out) if rerun.returncode == 0 else f"rerun failed: {rerun.stderr[-300:]}"
        kept = changed(state["before"], out, may_grow=("pairs.jsonl",))
        passed = killed and not lost and unreadable is None and after is None and not kept
        detail = (f"killed at {delay:.2f} s of {length:.2f} s of writing; earlier files "
                  + ("as they were" if not lost + kept else f"CHANGED: {', '.join(lost + kept)[:300]}")
                  + ("" if unreadable is None else f"; unreadable after the kill: {unreadable}")
                  + ("; rerun finished, every pair readable" if after is None else f"; {after}"))
        if not killed:
            detail = f"the mining ended before every kill ({tries} tries); " + detail
        results.append(_result(case, passed, detail, started,
                               corrupted=bool(lost or kept or unreadable is not None)))
    return results
