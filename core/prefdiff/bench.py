"""The per-domain benchmark runner behind `prefdiff bench DOMAIN`.

Generic over the :class:`Recipe` a plugin registers: pretrain the base model by
SFT (or load it from the cache), align a LoRA on it with each method, score
base and aligned models on the same held-out conditions and noise seeds with
the held-out judge, and write results.json, report.md and PNG figures. Output
is written to a temporary folder that replaces ``--out`` only at the end, so a
failed run never leaves a half-written or overwritten result.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from prefdiff.data import condition_count, repeat_condition, select
from prefdiff.errors import UserError

CACHE_VARIABLE = "PREFDIFF_CACHE"
CURVE_CONDITIONS = 16
"""Held-out samples (the first conditions and noise of the evaluation) the judge
scores during training, for the reward-against-time curves."""
CURVE_POINTS = 5
"""Evaluations during each method's training (after the base model's at 0 s)."""


@dataclass
class Recipe:
    """Everything `prefdiff bench` needs to know about one domain."""

    domain: str
    dataset: str
    model: dict
    reward: str
    judge: str
    dataset_options: dict = field(default_factory=dict)
    conditioner: str | None = None
    conditioner_options: dict = field(default_factory=dict)
    reward_options: dict = field(default_factory=dict)
    judge_options: dict = field(default_factory=dict)
    judge_note: str = ""
    methods: dict[str, dict] = field(default_factory=dict)
    """Per-method module options (beta, lr, ...) over the trainers' defaults; the key
    ``steps`` sets that method's training steps instead of ``align_steps``."""
    default_methods: list[str] = field(default_factory=lambda: ["dpo", "ddpo"])
    pretrain_steps: int = 1000
    pretrain_batch: int = 32
    align_steps: int = 50
    align_batch: int = 8
    lora_rank: int = 8
    n_eval: int = 64
    eval_samples: int = 1
    """Noise draws per held-out condition. With more than one, the improvement's
    interval is a paired bootstrap over conditions of their mean difference, which
    narrows it where one sample per condition is mostly sampling noise."""
    num_steps: int = 20
    eta: float = 1.0
    """DDIM eta of evaluation and mining: the stochastic sampler the policy-gradient
    methods optimise; fixed noise keeps base and aligned samples paired."""
    mine_conditions: int = 128
    mine_per_condition: int = 4
    train_size: int | None = None
    """Passed to the dataset factory as ``size`` when set."""
    prepare: Callable[[Path], dict] | None = None
    """Called with a cache folder before anything else; returns Recipe fields to
    override (e.g. ``dataset_options`` with the root of generated data)."""
    drift: Callable[[torch.Tensor, torch.Tensor], float] | None = None
    """drift(samples, real) -> float; default: sliced Wasserstein-1 distance."""
    drift_note: str = ""
    """What ``drift`` measures, for the report (when the recipe brings its own)."""
    render: Callable[[dict[str, torch.Tensor], Any, Path], None] | None = None
    """render({row name: samples}, conditions, png path): the before/after figure."""
    edit: Callable[[Any, Any, Path], dict] | None = None
    """edit(denoiser, scheduler, out_dir) -> {"reward_mean", "preservation", ...}: the
    field's editing task, run on the aligned model with the best judge improvement
    (the base model when no method ran); it may write figures into out_dir."""


# ----------------------------------------------------------- statistics ----


def paired_bootstrap_ci(diff: torch.Tensor, n_resamples: int = 2000, seed: int = 0) -> list[float]:
    """95% percentile interval of the mean of paired differences (Efron 1979)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(diff), (n_resamples, len(diff)), generator=g)
    means = diff.double()[idx].mean(1)
    return [float(torch.quantile(means, 0.025)), float(torch.quantile(means, 0.975))]


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, projections: int = 256, seed: int = 0) -> float:
    """Sliced Wasserstein-1 distance between two sample sets (Rabin et al. 2011).

    Both sets are flattened; equal sizes are compared by sorting projections.
    """
    a, b = a.flatten(1).double(), b.flatten(1).double()
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(a.shape[1], projections, generator=g, dtype=torch.float64)
    directions /= directions.norm(dim=0, keepdim=True)
    pa, pb = (a @ directions).sort(0).values, (b @ directions).sort(0).values
    return float((pa - pb).abs().mean())


class PeakRSS:
    """Peak resident memory of this process while the block runs (polls /proc)."""

    def __enter__(self) -> "PeakRSS":
        self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_mb())

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------- runner ----


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_VARIABLE, Path.home() / ".cache" / "prefdiff"))


def _recipe_key(recipe: Recipe, seed: int) -> str:
    keyed = {k: v for k, v in asdict(recipe).items()
             if k in ("domain", "dataset", "dataset_options", "model", "conditioner",
                      "conditioner_options", "pretrain_steps", "pretrain_batch", "train_size")}
    # "base": how a base model is made; 2 = its initial weights come from the seed
    blob = json.dumps({**keyed, "seed": seed, "base": 2}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _seed(seed: int) -> None:
    import pytorch_lightning as pl

    pl.seed_everything(seed, workers=True, verbose=False)


def _trainer(max_steps: int, seed: int, callbacks: list | None = None):
    import pytorch_lightning as pl

    _seed(seed)
    return pl.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, use_distributed_sampler=False,
                      limit_val_batches=0, num_sanity_val_steps=0, deterministic=False,
                      callbacks=callbacks or [])


def judge_curve(score: Callable[[Any], float], start: float, every: int):
    """A Lightning callback recording ``[training seconds, held-out reward]`` every ``every`` batches.

    ``score(denoiser)`` evaluates the model (the judge on a small fixed subset);
    its time is excluded from the training clock and summed in ``eval_s``. The
    first point is ``[0, start]``, the base model; the last is taken at the end
    of training. Evaluation runs on a forked RNG and restores the train mode,
    so training draws the same numbers with or without the curve.
    """
    import pytorch_lightning as pl

    class JudgeCurve(pl.Callback):
        def __init__(self) -> None:
            self.points: list[list[float]] = [[0.0, start]]
            self.eval_s = 0.0
            self.batches = 0
            self.scored_at = 0

        def on_train_start(self, trainer, module) -> None:
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, *args: Any) -> None:
            self.batches += 1
            if self.batches % every == 0:
                self._score(module)

        def on_train_end(self, trainer, module) -> None:
            if self.scored_at != self.batches:
                self._score(module)

        def _score(self, module) -> None:
            began = time.perf_counter()
            training = module.denoiser.training
            with torch.random.fork_rng(devices=[]):
                value = score(module.denoiser)
            module.denoiser.train(training)
            self.points.append([round(began - self.start - self.eval_s, 3), value])
            self.scored_at = self.batches
            self.eval_s += time.perf_counter() - began

    return JudgeCurve()


class Benchmark:
    """One run of one domain's recipe."""

    def __init__(self, recipe: Recipe, *, seed: int = 0, quick: bool = False,
                 cache: Path | None = None, log: Callable[[str], None] = print) -> None:
        from prefdiff.plugins import get_manager

        self.manager = get_manager()
        self.seed, self.quick, self.log = seed, quick, log
        self.cache = (cache or cache_root()) / "bench" / f"{recipe.domain}-{_recipe_key(recipe, seed)}"
        self.cache.mkdir(parents=True, exist_ok=True)
        if recipe.prepare is not None:
            recipe = replace(recipe, **recipe.prepare(self.cache.parent / f"{recipe.domain}-data"))
        self.recipe = recipe
        self.judge = self.manager.reward(recipe.judge, **recipe.judge_options)
        self.reward = self.manager.reward(recipe.reward, **recipe.reward_options)

    # -- data ---------------------------------------------------------------

    def dataset(self, split: str, size: int | None = None):
        options = dict(self.recipe.dataset_options)
        if size is not None:
            options["size"] = size
        data = self.manager.dataset(self.recipe.dataset, split=split, **options)
        if len(data) == 0:
            raise UserError(f"dataset '{self.recipe.dataset}' split '{split}' is empty")
        return data

    def module_options(self) -> dict[str, Any]:
        r = self.recipe
        return {"conditioner": r.conditioner, "conditioner_options": r.conditioner_options or None,
                "num_steps": r.num_steps, "seed": self.seed}

    # -- base model -----------------------------------------------------------

    def base_model(self) -> Path:
        """Pretrain the base model by SFT, or reuse the cached one."""
        from prefdiff.datamodule import PrefDataModule
        from prefdiff.models import save_model
        from prefdiff.trainers import SFTModule

        base = self.cache / "base"
        if (base / "prefdiff_model.json").is_file():
            self.log(f"base model: cached at {base}")
            return base
        r = self.recipe
        self.log(f"base model: pretraining {r.pretrain_steps} SFT steps (cached afterwards in {base})")
        # Seed before the network is built: its initial weights come from the seed, not
        # from whatever the recipe's prepare step left in the global generator.
        _seed(self.seed)
        module = SFTModule(model=r.model, lora_rank=0, lr=1e-3, **self.module_options())
        data = PrefDataModule.from_datasets(self.dataset("train", r.train_size),
                                            batch_size=r.pretrain_batch, seed=self.seed)
        start = time.perf_counter()
        _trainer(r.pretrain_steps, self.seed).fit(module, datamodule=data)
        tmp = self.cache / f".base-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        save_model(module.denoiser, tmp)
        module.noise_scheduler.save_pretrained(tmp / "scheduler")
        (tmp / "pretrain.json").write_text(json.dumps(
            {"steps": r.pretrain_steps, "wall_s": time.perf_counter() - start}))
        os.replace(tmp, base)
        return base

    # -- evaluation -----------------------------------------------------------

    def eval_set(self) -> tuple[Any, torch.Tensor | None]:
        """The held-out conditions and, where the dataset has them, their real samples."""
        from prefdiff.data import collate

        test = self.dataset("test")
        items = [test[i] for i in range(min(self.recipe.n_eval, len(test)))]
        batch = collate(items)
        return batch["cond"], batch.get("x0")

    @torch.no_grad()
    def generate(self, denoiser, scheduler, cond, noise: torch.Tensor) -> torch.Tensor:
        from prefdiff.sampling import sample

        denoiser.eval()
        # The same step noise for every model: base and aligned samples stay paired.
        generator = torch.Generator().manual_seed(self.seed + 778)
        chunks = []
        for start in range(0, len(noise), 64):
            part = select(cond, slice(start, start + 64))
            chunks.append(sample(denoiser, scheduler, noise[start:start + 64], part, generator=generator,
                                 num_steps=self.recipe.num_steps, eta=self.recipe.eta).samples)
        return torch.cat(chunks)

    def score(self, reward, samples: torch.Tensor, cond) -> torch.Tensor:
        """Scores of every sample; the numbers the reward reports in ``info``
        (e.g. a success rate) are averaged into ``self.last_info``."""
        scores, totals = [], {}
        for s in range(0, len(samples), 64):
            part, info = reward(samples[s:s + 64], select(cond, slice(s, s + 64)))
            scores.append(part.detach().float())
            for key, value in info.items():
                if isinstance(value, (int, float)):
                    totals[key] = totals.get(key, 0.0) + float(value) * len(part)
        self.last_info = {key: total / len(samples) for key, total in totals.items()}
        return torch.cat(scores).cpu()

    def judge_scores(self, samples: torch.Tensor, cond) -> tuple[torch.Tensor, dict[str, float]]:
        """The held-out judge's scores and its averaged info numbers."""
        scores = self.score(self.judge, samples, cond)
        return scores, self.last_info

    # -- the run --------------------------------------------------------------

    def run(self, methods: list[str], out: Path) -> dict[str, Any]:
        from prefdiff.data import infer_sample_shape
        from prefdiff.models import build_denoiser, load_model
        from prefdiff.schedulers import load_scheduler
        from prefdiff.trainers import METHODS

        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise UserError(f"unknown method '{unknown[0]}'; known methods: {', '.join(METHODS)}")
        r = self.recipe
        base_dir = self.base_model()
        cond_module = (self.manager.conditioner(r.conditioner, **r.conditioner_options)
                       if r.conditioner else None)
        base = load_model(base_dir, cond_module)
        scheduler = load_scheduler(base_dir)
        cond, real = self.eval_set()
        n, k = condition_count(cond), r.eval_samples
        cond = repeat_condition(cond, k)
        noise = torch.randn((n * k, *infer_sample_shape(base)),
                            generator=torch.Generator().manual_seed(self.seed + 777))

        def drift(samples: torch.Tensor, real: torch.Tensor) -> float:
            return (r.drift or sliced_wasserstein)(samples[::k], real)  # one draw per condition

        self.log(f"evaluating the base model on {n} held-out conditions x {k} samples")
        base_samples = self.generate(base, scheduler, cond, noise)
        base_scores, base_info = self.judge_scores(base_samples, cond)
        # The reward-against-time curves score a small fixed subset during training.
        n_curve = min(CURVE_CONDITIONS, len(noise))
        curve_cond, curve_noise = select(cond, slice(0, n_curve)), noise[:n_curve]

        def curve_score(denoiser) -> float:
            samples = self.generate(denoiser, scheduler, curve_cond, curve_noise)
            return float(self.score(self.judge, samples, curve_cond).mean())

        curve_base = curve_score(base)
        torch.manual_seed(self.seed)
        untrained = build_denoiser(r.model, cond_module)
        untrained_scores = self.score(self.judge, self.generate(untrained, scheduler, cond, noise), cond)
        results: dict[str, Any] = {
            "domain": r.domain, "reward": r.reward, "judge": r.judge, "quick": self.quick,
            "seed": self.seed, "n_eval": n, "eval_samples": k,
            "base": {**_summary(base_scores), **_judge_info(base_info),
                     "train_reward_mean": float(self.score(self.reward, base_samples, cond).mean()),
                     **({"drift": drift(base_samples, real)} if real is not None else {})},
            "untrained": _summary(untrained_scores),
            "curve_samples": n_curve,
            "methods": {},
        }
        rows = {"base": base_samples}
        aligned_models: dict[str, Any] = {}
        mined = None
        for method in methods:
            cls, fixed = METHODS[method]
            if method in ("dpo", "kto", "rwr") and mined is None:
                mined = self.mine(base, scheduler, out)
            self.log(f"aligning with {method} ({r.methods.get(method, {}).get('steps', r.align_steps)} steps)")
            module, wall, peak, curve = self.align(method, cls, fixed, base_dir, mined, out,
                                                   curve=(curve_score, curve_base))
            aligned = module.denoiser
            samples = self.generate(aligned, scheduler, cond, noise)
            scores, info = self.judge_scores(samples, cond)
            diff = (scores - base_scores).view(n, k).mean(1)
            entry = {**_summary(scores), **_judge_info(info), "improvement": float(diff.mean()),
                     "improvement_ci95": paired_bootstrap_ci(diff, seed=self.seed),
                     "train_reward_mean": float(self.score(self.reward, samples, cond).mean()),
                     "reward_queries": int(module.reward_queries + (mined.queries if method in ("dpo", "kto", "rwr") else 0)),
                     "train_wall_s": round(wall - curve.eval_s, 2), "peak_rss_mb": round(peak, 1),
                     "curve": curve.points, "curve_eval_s": round(curve.eval_s, 2)}
            if real is not None:
                entry["drift"] = drift(samples, real)
            results["methods"][method] = entry
            rows[method] = samples
            aligned_models[method] = aligned
            self.log(f"  {method}: judge {entry['reward_mean']:.4f} (base {results['base']['reward_mean']:.4f}), "
                     f"improvement {entry['improvement']:+.4f} CI95 "
                     f"[{entry['improvement_ci95'][0]:+.4f}, {entry['improvement_ci95'][1]:+.4f}]")
        if r.edit is not None:
            best = max(results["methods"], key=lambda m: results["methods"][m]["improvement"], default=None)
            model = aligned_models.get(best, base)
            self.log(f"editing with the {best or 'base'} model")
            results["edit"] = {"model": best or "base", **r.edit(model, scheduler, out)}
        results["env"] = {"torch": torch.__version__, "device": "cpu", "threads": torch.get_num_threads(),
                          "machine": platform.machine(), "python": platform.python_version()}
        self.write_figures(rows, cond, out)
        (out / "results.json").write_text(json.dumps(results, indent=2))
        (out / "report.md").write_text(report_markdown(results, self.recipe))
        return results

    def mine(self, base, scheduler, out: Path):
        """Sample the base model several times per training condition and rank by the reward."""
        from prefdiff.data import mine, write_best_worst_pairs

        r = self.recipe
        self.log(f"mining pairs: {r.mine_conditions} conditions x {r.mine_per_condition} samples")
        train = self.dataset("train", r.train_size)
        conds = [train[i]["cond"] for i in range(min(r.mine_conditions, len(train)))]
        mined = mine(base, scheduler, self.reward, conds, per_condition=r.mine_per_condition,
                     num_steps=r.num_steps, eta=r.eta, seed=self.seed + 1)
        self.pair_file = write_best_worst_pairs(mined, out / "mined", labeler=f"reward:{r.reward}")
        return mined

    def align(self, method: str, cls, fixed: dict, base_dir: Path, mined, out: Path,
              curve: tuple[Callable[[Any], float], float] | None = None):
        """Train one method; returns (module, wall seconds, peak RSS MB, curve callback or None).

        ``curve = (score, base value)`` records the held-out reward during training
        (:func:`judge_curve`); the wall seconds include its evaluations, whose sum
        the callback holds in ``eval_s``.
        """
        from prefdiff.data import PairDataset, WeightedSamples
        from prefdiff.datamodule import PrefDataModule

        r = self.recipe
        options = {**self.module_options(), **fixed, **r.methods.get(method, {})}
        steps = options.pop("steps", r.align_steps)
        if options.setdefault("reward", r.reward) == r.reward and r.reward_options:
            options.setdefault("reward_options", r.reward_options)
        if method == "sft":
            options.pop("reward")
        options.setdefault("lora_rank", r.lora_rank)
        # Seed before the adapter is built: a method's result must not depend on
        # which methods ran before it.
        _seed(self.seed)
        module = cls(base=str(base_dir), **options)
        if method in ("dpo", "kto"):
            train = PairDataset(self.pair_file)
        elif method == "rwr":
            train = WeightedSamples(mined)
        else:
            train = self.dataset("train", r.train_size)
        batch = min(r.align_batch, len(train))
        data = PrefDataModule.from_datasets(train, batch_size=batch, seed=self.seed)
        recorder = judge_curve(curve[0], curve[1], max(1, steps // CURVE_POINTS)) if curve else None
        start = time.perf_counter()
        with PeakRSS() as memory:
            _trainer(steps, self.seed, [recorder] if recorder else None).fit(module, datamodule=data)
        return module, time.perf_counter() - start, memory.peak, recorder

    def write_figures(self, rows: dict[str, torch.Tensor], cond, out: Path) -> None:
        if self.recipe.render is not None:
            self.recipe.render(rows, cond, out / "samples.png")
            return
        first = next(iter(rows.values()))
        if first.ndim == 4 and first.shape[1] in (1, 3):
            from prefdiff.viz import save_grid

            k = min(8, first.shape[0])
            save_grid(torch.cat([v[:k] for v in rows.values()]), out / "samples.png", nrow=k, scale=3)
            (out / "samples.txt").write_text("rows, top to bottom: " + ", ".join(rows) + "\n")


def _judge_info(info: dict[str, float]) -> dict[str, Any]:
    return {"judge_info": info} if info else {}


def _summary(scores: torch.Tensor) -> dict[str, float]:
    return {"reward_mean": float(scores.mean()), "reward_std": float(scores.std(correction=0))}


def report_markdown(results: dict[str, Any], recipe: Recipe) -> str:
    """The human-readable table of one run."""
    lines = [f"# Benchmark: {results['domain']}", "",
             f"Training reward `{results['reward']}`; held-out judge `{results['judge']}`"
             + (f" ({recipe.judge_note})" if recipe.judge_note else "") + ".",
             f"Seed {results['seed']}, {results['n_eval']} held-out conditions"
             f" x {results.get('eval_samples', 1)} samples, quick={results['quick']}. "
             "Drift: " + (recipe.drift_note or ("the recipe's own measure" if recipe.drift else
                          "sliced Wasserstein-1 distance of samples to real held-out data")) + ".", "",
             "| model | judge mean | judge std | improvement | CI95 | drift | reward queries | train s | peak MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    b, u = results["base"], results["untrained"]
    lines.append(f"| untrained | {u['reward_mean']:.4f} | {u['reward_std']:.4f} | | | | | | |")
    lines.append(f"| base | {b['reward_mean']:.4f} | {b['reward_std']:.4f} | | | {b.get('drift', float('nan')):.4f} | | | |")
    for name, m in results["methods"].items():
        lo, hi = m["improvement_ci95"]
        lines.append(f"| {name} | {m['reward_mean']:.4f} | {m['reward_std']:.4f} | {m['improvement']:+.4f} | "
                     f"[{lo:+.4f}, {hi:+.4f}] | {m.get('drift', float('nan')):.4f} | {m['reward_queries']} | "
                     f"{m['train_wall_s']:.1f} | {m['peak_rss_mb']:.0f} |")
    if "edit" in results:
        lines += ["", "Editing: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                           for k, v in results["edit"].items()) + "."]
    lines += ["", "![samples](samples.png)", ""]
    return "\n".join(lines)


def run_benchmark(domain: str, *, methods: list[str] | None = None, quick: bool = False, seed: int = 0,
                  out: str | Path | None = None, cache: Path | None = None,
                  reward: str | None = None, judge: str | None = None,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run one domain's benchmark and move its outputs into ``out`` atomically.

    ``reward`` and ``judge`` replace the recipe's (a plugin author benchmarking a new reward).
    """
    from prefdiff.plugins import get_manager

    recipe = get_manager().benchmark(domain, quick=quick)
    if reward is not None:
        recipe = replace(recipe, reward=reward, reward_options={})
    if judge is not None:
        recipe = replace(recipe, judge=judge, judge_options={})
    out = Path(out or f"runs/bench-{domain}{'-quick' if quick else ''}")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        results = Benchmark(recipe, seed=seed, quick=quick, cache=cache, log=log).run(
            methods or list(recipe.default_methods), tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish(tmp, out)
    return results


def publish(new: Path, out: Path) -> None:
    """Put the finished run ``new`` in place of ``out``, keeping what the run does not write.

    Files of the old folder that the new run has no file of the same name for
    (a results folder's NOTES.md, a user's own files) are copied into the new
    one first, so the old folder stays whole until the folders swap with two
    renames: ``out`` is never half written, and a crash loses nothing.
    """
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        for entry in out.iterdir():
            if not (new / entry.name).exists():
                (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, new / entry.name)
        os.replace(out, old)
    os.replace(new, out)
    shutil.rmtree(old, ignore_errors=True)
