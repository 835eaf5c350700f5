"""The per-domain benchmark runner behind `prefdiff bench DOMAIN`.

Generic over the :class:`~prefdiff.bench.recipe.Recipe` a plugin registers:
pretrain the base model by SFT (or load it from the cache), align a LoRA on it
with each method, score base and aligned models on the same held-out
conditions and noise seeds with the held-out judge, and write results.json,
report.md and PNG figures. Output is written to a staging folder that
replaces ``--out`` only at the end (:mod:`prefdiff.bench.publish`).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch

from prefdiff.bench.adapters import save_adapter, write_guide
from prefdiff.bench.curves import judge_curve
from prefdiff.bench.memory import PeakRSS
from prefdiff.bench.publish import publish, staging_folder
from prefdiff.bench.recipe import Recipe, key_material, recipe_key
from prefdiff.bench.shipped import install, restore_extras, ship, shipped_base
from prefdiff.bench.report import report_markdown, small_eval_warning
from prefdiff.bench.stats import paired_bootstrap_ci, sliced_wasserstein, summary
from prefdiff.cache import cache_root
from prefdiff.data import condition_count, repeat_condition, select
from prefdiff.errors import UserError
from prefdiff.quiet import lightning_chatter_to, quiet_trainer

log = logging.getLogger("prefdiff.bench")

CURVE_CONDITIONS = 16
"""Held-out samples (the first conditions and noise of the evaluation) the judge
scores during training, for the reward-against-time curves."""
CURVE_POINTS = 5
"""Evaluations during each method's training (after the base model's at 0 s)."""
SCORE_CHUNK = 64
"""Samples per sampler and reward call during evaluation."""


def _seed(seed: int) -> None:
    import pytorch_lightning as pl

    pl.seed_everything(seed, workers=True, verbose=False)


def method_seed(seed: int, method: str) -> int:
    """The seed of one method's training: from the run's seed and the method's name alone."""
    import hashlib

    digest = hashlib.sha256(f"{seed}:{method}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _trainer(max_steps: int, seed: int, callbacks: list | None = None):
    _seed(seed)
    return quiet_trainer(max_steps, callbacks=callbacks)


class Benchmark:
    """One run of one domain's recipe.

    :param recipe: the recipe as its plugin registered it; ``recipe.prepare`` runs here.
    :param reward: train with this reward instead of the recipe's (a plugin author's new reward).
    :param judge: evaluate with this reward instead of the recipe's judge.
    """

    def __init__(self, recipe: Recipe, *, seed: int = 0, quick: bool = False, cache: Path | None = None,
                 reward: str | None = None, judge: str | None = None) -> None:
        from prefdiff.plugins import get_manager

        self.manager = get_manager()
        self.seed, self.quick = seed, quick
        root = Path(cache or cache_root())
        self.data_dir = root / "bench" / f"{recipe.domain}-data"
        for path in restore_extras(recipe.shipped_bases, recipe.domain, self.data_dir):
            log.info(f"shipped with the field: {path}")
        if recipe.prepare is not None:
            prepared = recipe.prepare(recipe, self.data_dir)
            if not isinstance(prepared, Recipe):
                raise UserError(f"the '{recipe.domain}' recipe's prepare returned {type(prepared).__name__}, "
                                f"not the prepared Recipe; return dataclasses.replace(recipe, ...)")
            recipe = prepared
        if reward is not None:
            recipe = replace(recipe, reward=reward, reward_options={})
        if judge is not None:
            recipe = replace(recipe, judge=judge, judge_options={})
        self.recipe = recipe
        self.key = recipe_key(recipe, seed, root)
        self.key_material = json.loads(key_material(recipe, seed, root))
        self.cache = root / "bench" / f"{recipe.domain}-{self.key}"
        self.cache.mkdir(parents=True, exist_ok=True)
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

        from prefdiff.models.io import is_model_folder

        base = self.cache / "base"
        if is_model_folder(base):
            log.info(f"base model: cached at {base}")
            return base
        r = self.recipe
        found = shipped_base(r.shipped_bases, r.domain, self.key)
        if found is not None:
            log.info(f"base model: the shipped {r.domain} base from {found}")
            return install(found, base)
        log.info(f"base model: pretraining {r.pretrain_steps} SFT steps (cached afterwards in {base})")
        # Seed before the network is built: its initial weights come from the seed, not
        # from whatever the recipe's prepare step left in the global generator.
        _seed(self.seed)
        start_from = {"base": r.model["pipeline"]} if "pipeline" in r.model else {"model": r.model}
        # No gradient clipping: the bases were pretrained and measured that way (SFT ignored
        # max_grad_norm until it was fixed, and the cache keys of those bases stand).
        module = SFTModule(**start_from, lora_rank=0, lr=1e-3, max_grad_norm=0.0, **self.module_options())
        data = PrefDataModule.from_datasets(self.dataset("train", r.train_size),
                                            batch_size=r.pretrain_batch, seed=self.seed)
        start = time.perf_counter()
        _trainer(r.pretrain_steps, self.seed).fit(module, datamodule=data)
        tmp = self.cache / f".base-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        save_model(module.denoiser, tmp, module.noise_scheduler)  # with scheduler/
        (tmp / "pretrain.json").write_text(json.dumps(
            {"steps": r.pretrain_steps, "wall_s": time.perf_counter() - start}))
        os.replace(tmp, base)
        return base

    def reward_files(self) -> list[Path]:
        """Files in the data folder that the recipe's rewards and judge read (their options name them)."""
        r = self.recipe
        values = [*r.reward_options.values(), *r.judge_options.values(),
                  *(v for options in r.other_reward_options.values() for v in options.values())]
        files = {Path(v).resolve() for v in values if isinstance(v, str) and Path(v).is_file()}
        data = self.data_dir.resolve()
        return sorted(f for f in files if data in f.parents)

    def ship_base(self) -> Path:
        """Write this run's base into the recipe's shipped-bases folder (``--ship-base``)."""
        if self.recipe.shipped_bases is None:
            raise UserError(f"the '{self.recipe.domain}' recipe names no shipped_bases folder; nothing to ship to")
        target = ship(self.cache / "base", self.recipe.shipped_bases, self.recipe.domain, self.key, self.seed,
                      self.key_material, extras=self.reward_files(), data_dir=self.data_dir)
        log.info(f"base model shipped to {target}")
        return target

    # -- evaluation -----------------------------------------------------------

    def eval_set(self) -> tuple[Any, torch.Tensor | None]:
        """The held-out conditions and, where the dataset has them, their real samples."""
        from prefdiff.data import collate

        test = self.dataset("test")
        items = [test[i] for i in range(min(self.recipe.n_eval, len(test)))]
        warning = small_eval_warning(len(items))
        if warning:  # also in report.md, which report_markdown writes from results["n_eval"]
            log.warning(f"{self.recipe.domain}: {warning} (dataset '{self.recipe.dataset}', split test)")
        batch = collate(items)
        return batch["cond"], batch.get("x0")

    @torch.no_grad()
    def generate(self, denoiser, scheduler, cond, noise: torch.Tensor) -> torch.Tensor:
        """Decoded samples for ``cond`` from ``noise``, with the step noise every model shares."""
        from prefdiff.sampling import sample

        denoiser.eval()
        # The same step noise for every model: base and aligned samples stay paired.
        generator = torch.Generator().manual_seed(self.seed + 778)
        chunks = []
        for start in range(0, len(noise), SCORE_CHUNK):
            part = select(cond, slice(start, start + SCORE_CHUNK))
            out = sample(denoiser, scheduler, noise[start:start + SCORE_CHUNK], part, generator=generator,
                         num_steps=self.recipe.num_steps, eta=self.recipe.eta, **denoiser.pinned(part))
            chunks.append(denoiser.decode(out.samples))  # judges and figures see samples, not latents
        return torch.cat(chunks)

    @staticmethod
    def score(reward, samples: torch.Tensor, cond) -> tuple[torch.Tensor, dict[str, float]]:
        """Every sample's score, and the numbers the reward reports in ``info`` (a success
        rate, say) averaged over the samples."""
        scores, totals = [], {}
        for s in range(0, len(samples), SCORE_CHUNK):
            part, info = reward(samples[s:s + SCORE_CHUNK], select(cond, slice(s, s + SCORE_CHUNK)))
            scores.append(part.detach().float())
            for key, value in info.items():
                if isinstance(value, (int, float)):
                    totals[key] = totals.get(key, 0.0) + float(value) * len(part)
        return torch.cat(scores).cpu(), {key: total / len(samples) for key, total in totals.items()}

    # -- the run --------------------------------------------------------------

    def run(self, methods: list[str], out: Path) -> dict[str, Any]:
        """Pretrain (or load) the base, align with each method, evaluate, write the outputs into ``out``."""
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

        log.info(f"evaluating the base model on {n} held-out conditions x {k} samples")
        base_samples = self.generate(base, scheduler, cond, noise)
        base_scores, base_info = self.score(self.judge, base_samples, cond)
        # The reward-against-time curves score a small fixed subset during training.
        n_curve = min(CURVE_CONDITIONS, len(noise))
        curve_cond, curve_noise = select(cond, slice(0, n_curve)), noise[:n_curve]

        def curve_score(denoiser) -> float:
            samples = self.generate(denoiser, scheduler, curve_cond, curve_noise)
            return float(self.score(self.judge, samples, curve_cond)[0].mean())

        curve_base = curve_score(base)
        torch.manual_seed(self.seed)
        # A pipeline recipe's untrained model is its initial pipeline (trained VAE, random UNet).
        untrained = load_model(r.model["pipeline"]) if "pipeline" in r.model else build_denoiser(r.model, cond_module)
        untrained_scores, _ = self.score(self.judge, self.generate(untrained, scheduler, cond, noise), cond)
        results: dict[str, Any] = {
            "domain": r.domain, "reward": r.reward, "judge": r.judge, "quick": self.quick,
            "seed": self.seed, "n_eval": n, "eval_samples": k,
            "base": {**summary(base_scores), **_judge_info(base_info),
                     "train_reward_mean": float(self.score(self.reward, base_samples, cond)[0].mean()),
                     **({"drift": drift(base_samples, real)} if real is not None else {})},
            "untrained": summary(untrained_scores),
            "curve_samples": n_curve,
            "methods": {},
        }
        if real is not None and real.shape[1:] == base_samples.shape[1:]:
            # The reference a field trusts: the judge on the real held-out samples of the same conditions.
            real_scores, real_info = self.score(self.judge, real, select(cond, slice(None, None, k)))
            results["real"] = {**summary(real_scores), **_judge_info(real_info)}
        rows = {"base": base_samples}
        aligned_models: dict[str, Any] = {}
        mined = None
        for method in methods:
            data = METHODS[method][0].training_data(**METHODS[method][1])
            if data.mined and mined is None:
                mined = self.mine(base, scheduler, out)
            log.info(f"aligning with {method} ({r.methods.get(method, {}).get('steps', r.align_steps)} steps)")
            module, wall, peak, curve = self.align(method, base_dir, mined, curve=(curve_score, curve_base))
            aligned = module.denoiser
            save_adapter(aligned, out, method, scheduler)
            samples = self.generate(aligned, scheduler, cond, noise)
            scores, info = self.score(self.judge, samples, cond)
            diff = (scores - base_scores).view(n, k).mean(1)
            entry = {**summary(scores), **_judge_info(info), "improvement": float(diff.mean()),
                     "improvement_ci95": paired_bootstrap_ci(diff, seed=self.seed),
                     # kept so seeds pool without a rerun (prefdiff.bench.seeds)
                     "improvement_per_condition": diff.tolist(),
                     "train_reward_mean": float(self.score(self.reward, samples, cond)[0].mean()),
                     "reward_queries": int(module.reward_queries + (mined.queries if data.mined else 0)),
                     "train_wall_s": round(wall - curve.eval_s, 2), "peak_rss_mb": round(peak, 1),
                     "curve": curve.points, "curve_eval_s": round(curve.eval_s, 2)}
            if real is not None:
                entry["drift"] = drift(samples, real)
            results["methods"][method] = entry
            rows[method] = samples
            aligned_models[method] = aligned
            log.info(f"  {method}: judge {entry['reward_mean']:.4f} (base {results['base']['reward_mean']:.4f}), "
                     f"improvement {entry['improvement']:+.4f} CI95 "
                     f"[{entry['improvement_ci95'][0]:+.4f}, {entry['improvement_ci95'][1]:+.4f}]")
        if r.edit is not None:
            best = max(results["methods"], key=lambda m: results["methods"][m]["improvement"], default=None)
            model = aligned_models.get(best, base)
            log.info(f"editing with the {best or 'base'} model")
            results["edit"] = {"model": best or "base", **r.edit(model, scheduler, out)}
        if r.metrics is not None:
            # The real held-out samples go first, one copy per sample drawn, so every row lines up with cond.
            real_row = {"real": real.repeat_interleave(k, 0)} if "real" in results else {}
            for name, values in r.metrics({**real_row, **rows}, cond).items():
                target = results[name] if name in ("base", "real") else results["methods"].get(name)
                if target is not None:
                    target["metrics"] = values
        results["env"] = environment()
        self.write_figures(rows, cond, out)
        (out / "results.json").write_text(json.dumps(results, indent=2))
        (out / "report.md").write_text(report_markdown(results, self.recipe))
        return results

    def mine(self, base, scheduler, out: Path):
        """Sample the base model several times per training condition and rank by the reward."""
        from prefdiff.data import mine, write_best_worst_pairs

        r = self.recipe
        log.info(f"mining pairs: {r.mine_conditions} conditions x {r.mine_per_condition} samples")
        train = self.dataset("train", r.train_size)
        conds = [train[i]["cond"] for i in range(min(r.mine_conditions, len(train)))]
        mined = mine(base, scheduler, self.reward, conds, per_condition=r.mine_per_condition,
                     num_steps=r.num_steps, eta=r.eta, seed=self.seed + 1)
        self.pair_file = write_best_worst_pairs(mined, out / "mined", labeler=f"reward:{r.reward}")
        return mined

    def training_set(self, data, mined):
        """The dataset a method of training-data kind ``data`` trains on."""
        from prefdiff.data import PairDataset, WeightedSamples
        from prefdiff.trainers import TrainingData

        if data is TrainingData.PAIRS:
            return PairDataset(self.pair_file)
        if data is TrainingData.SCORED_SAMPLES:
            return WeightedSamples(mined)
        return self.dataset("train", self.recipe.train_size)

    def method_options(self, method: str) -> tuple[dict[str, Any], int]:
        """(module options, training steps) of ``method`` as the recipe sets them, with the reward
        it trains with (:meth:`Recipe.reward_for`) and that reward's options."""
        from prefdiff.trainers import METHODS

        r = self.recipe
        cls, fixed = METHODS[method]
        options = {**self.module_options(), "seed": method_seed(self.seed, method), **fixed,
                   **r.methods.get(method, {})}
        steps = options.pop("steps", r.align_steps)
        if cls.uses_reward(**fixed):
            name, reward_options = r.reward_for(method)
            options["reward"] = name
            if reward_options:
                options.setdefault("reward_options", reward_options)
        else:
            options.pop("reward", None)
        options.setdefault("lora_rank", r.lora_rank)
        return options, steps

    def align(self, method: str, base_dir: Path, mined, curve: tuple[Callable[[Any], float], float] | None = None):
        """Train one method; returns (module, wall seconds, peak RSS MB, curve callback or None).

        ``curve = (score, base value)`` records the held-out reward during training
        (:func:`~prefdiff.bench.curves.judge_curve`); the wall seconds include its
        evaluations, whose sum the callback holds in ``eval_s``.
        """
        from prefdiff.datamodule import PrefDataModule
        from prefdiff.trainers import METHODS

        r = self.recipe
        cls, fixed = METHODS[method]
        seed = method_seed(self.seed, method)
        options, steps = self.method_options(method)
        # Seed from (seed, method) before the adapter is built: a method's result depends on
        # neither which methods ran before it nor their number.
        _seed(seed)
        try:
            module = cls(base=str(base_dir), **options)
        except UserError as exc:  # worded for `prefdiff fit`; here the options come from the recipe
            raise UserError(f"the '{r.domain}' recipe's options for {method} are invalid: "
                            f"{str(exc).replace('--model.', '')}") from None
        train = self.training_set(cls.training_data(**fixed), mined)
        batch = min(r.align_batch, len(train))
        data = PrefDataModule.from_datasets(train, batch_size=batch, seed=seed)
        recorder = judge_curve(curve[0], curve[1], max(1, steps // CURVE_POINTS)) if curve else None
        start = time.perf_counter()
        with PeakRSS() as memory:
            _trainer(steps, seed, [recorder] if recorder else None).fit(module, datamodule=data)
        return module, time.perf_counter() - start, memory.peak, recorder

    def write_figures(self, rows: dict[str, torch.Tensor], cond, out: Path) -> None:
        """The recipe's before/after figure, or a labelled grid of image samples."""
        if self.recipe.render is not None:
            self.recipe.render(rows, cond, out / "samples.png")
            return
        first = next(iter(rows.values()))
        if first.ndim == 4 and first.shape[1] in (1, 3):
            from prefdiff.viz import save_labelled_rows

            save_labelled_rows(rows, out / "samples.png", columns=8)


def _judge_info(info: dict[str, float]) -> dict[str, Any]:
    return {"judge_info": info} if info else {}


def environment() -> dict[str, Any]:
    """What a published number ran on: versions, threads, and the commit of this checkout."""
    return {"torch": torch.__version__, "device": "cpu", "threads": torch.get_num_threads(),
            "machine": platform.machine(), "python": platform.python_version(), **source_commit()}


#: What a benchmark run writes into the checkout: a field's outputs, the page and the README table
#: made from them. Changes there leave the source clean (the second field of a `make bench` finds
#: the first one's results written).
PUBLISHED = ("benchmarks/results", "docs/benchmarks.md", "docs/figures", "README.md")


def source_commit(root: Path | None = None) -> dict[str, Any]:
    """``{"commit": sha, "clean": bool}`` of the git checkout prefdiff runs from (``unknown``
    outside one); ``clean`` is False when tracked files other than the :data:`PUBLISHED`
    outputs differ from the commit."""
    root = root or Path(__file__).resolve().parents[3]

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=30, check=True).stdout.strip()

    try:
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".",
                      *(f":(exclude){path}" for path in PUBLISHED))
        return {"commit": git("rev-parse", "--short=12", "HEAD"), "clean": changed == ""}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "clean": False}


def run_benchmark(domain: str, *, methods: list[str] | None = None, quick: bool = False, seed: int = 0,
                  out: str | Path | None = None, cache: Path | None = None,
                  reward: str | None = None, judge: str | None = None, ship_base: bool = False) -> dict[str, Any]:
    """Run one domain's benchmark and move its outputs into ``out`` atomically.

    Progress goes to the ``prefdiff.bench`` logger; it and Lightning's own lines
    are written to ``out/bench.log``. ``reward`` and ``judge`` replace the
    recipe's (a plugin author benchmarking a new reward).
    """
    from prefdiff.plugins import get_manager

    recipe = get_manager().benchmark(domain, quick=quick)
    out = Path(out or f"runs/bench-{domain}{'-quick' if quick else ''}")
    tmp = staging_folder(out)
    try:
        with lightning_chatter_to(tmp / "bench.log"):
            bench = Benchmark(recipe, seed=seed, quick=quick, cache=cache, reward=reward, judge=judge)
            results = bench.run(methods or list(bench.recipe.default_methods), tmp)
            write_guide(tmp, out, bench.cache / "base", bench.recipe)
            if ship_base:
                bench.ship_base()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish(tmp, out)
    return results
