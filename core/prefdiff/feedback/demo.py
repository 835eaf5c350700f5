"""Human feedback end to end, with simulated labelers: ``python -m prefdiff.feedback.demo``.

1. a base model of the built-in example (pretrained by SFT, cached like `prefdiff bench`'s)
   draws samples into a sample folder on demand;
2. simulated labelers who prefer by a hidden rule answer pairs through the
   labeling app's HTTP API (served by uvicorn); each behaves like a Bradley-Terry
   labeler, preferring ``a`` with probability ``sigmoid((rule(a) - rule(b)) / temperature)``;
   a second round asks the pairs the first reward model is least sure about;
3. a Bradley-Terry reward model is learned from the pair file (held-out accuracy);
4. `prefdiff fit` trains DDPO on that reward model, and Diffusion-DPO on the pairs directly;
5. the hidden rule scores base and aligned samples on held-out conditions and
   noise seeds (paired bootstrap interval).
"""

from __future__ import annotations

import argparse
import json
import math
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

from prefdiff.feedback.candidates import load_tensors
from prefdiff.quiet import QUIET_TRAINER


def brightness(samples: torch.Tensor) -> torch.Tensor:
    """Mean pixel value: the simplest rule a person might prefer by."""
    return samples.float().flatten(1).mean(1)


def hidden_rule(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The rule simulated labelers prefer by: ``brightness`` or any registered reward name."""
    if name == "brightness":
        return brightness
    from prefdiff.plugins import get_manager

    reward = get_manager().reward(name)
    return lambda samples: reward(samples)[0].float()


class SimulatedLabeler:
    """A labeler who answers through the HTTP API by a hidden rule, with Bradley-Terry noise.

    :param name: labeler name sent with each answer.
    :param rule: scores samples; the higher one is preferred.
    :param temperature: noise: P(prefer a) = sigmoid((rule(a) - rule(b)) / temperature).
    :param tie_below: answer "tie" when the rule's scores differ by less than this.
    """

    def __init__(self, name: str, rule: Callable[[torch.Tensor], torch.Tensor], *, temperature: float,
                 tie_below: float = 0.0, seed: int = 0) -> None:
        self.name, self.rule, self.temperature, self.tie_below = name, rule, temperature, tie_below
        self.generator = torch.Generator().manual_seed(seed)

    def choose(self, left: torch.Tensor, right: torch.Tensor) -> str:
        """'left', 'right' or 'tie' for two samples."""
        scores = self.rule(torch.stack([left, right]))
        diff = float(scores[0] - scores[1])
        if abs(diff) < self.tie_below:
            return "tie"
        p_left = 1.0 / (1.0 + math.exp(-diff / self.temperature))
        return "left" if float(torch.rand((), generator=self.generator)) < p_left else "right"

    def label(self, client, pair_root: Path, budget: int) -> int:
        """Answer up to ``budget`` pairs with ``client`` (an httpx client on the app); returns how many."""
        done = 0
        while done < budget:
            response = client.get("/api/next", params={"labeler": self.name})
            response.raise_for_status()
            pair = response.json()["pair"]
            if pair is None:
                break
            # The labeler "sees" the two samples: the files the page's images are drawn from.
            left, right = (load_tensors(pair_root / pair[key].removeprefix("/files/"))["sample"]
                           for key in ("left_url", "right_url"))
            side = self.choose(left, right)
            answer = pair[side] if side != "tie" else "tie"
            client.post("/api/answer", json={"pair": pair["id"], "labeler": self.name,
                                             "answer": answer}).raise_for_status()
            done += 1
        return done


class ThreadedServer:
    """The app on a real uvicorn server in a thread, on a free local port (``with`` block)."""

    def __init__(self, app) -> None:
        import socket

        import uvicorn

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "ThreadedServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the labeling server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def label_round(folder: Path, labelers: list[SimulatedLabeler], budget: int, *, source=None, reward=None,
                labels_per_pair: int = 2) -> dict[str, int]:
    """Serve the folder on uvicorn and let each labeler answer ``budget`` pairs over HTTP."""
    import httpx

    from prefdiff.feedback.app import TOKEN_HEADER, create_app
    from prefdiff.feedback.candidates import CandidatePool
    from prefdiff.feedback.store import LabelStore

    pair_file = folder / "pairs.jsonl"
    pool = CandidatePool(folder, pair_file, reward=reward, source=source)
    app = create_app(pool, LabelStore(pair_file), labels_per_pair=labels_per_pair)
    counts = {}
    with ThreadedServer(app) as server, httpx.Client(base_url=server.url, timeout=120) as client:
        client.headers[TOKEN_HEADER] = client.get("/api/token").json()["token"]  # as the page sends it
        for labeler in labelers:
            counts[labeler.name] = labeler.label(client, pool.pair_root, budget)
    return counts


@torch.no_grad()
def rule_on_held_out(base: Path, lora: Path | None, rule, conditions: torch.Tensor, *, num_steps: int,
                     seed: int, conditioner: str = "class_label") -> torch.Tensor:
    """The hidden rule's score of samples of held-out ``conditions`` with noise fixed by ``seed``."""
    from prefdiff.data import infer_sample_shape
    from prefdiff.models import load_lora, load_model
    from prefdiff.plugins import get_manager
    from prefdiff.sampling import sample
    from prefdiff.schedulers import load_scheduler

    denoiser = load_model(base, get_manager().conditioner(conditioner))
    if lora is not None:
        load_lora(denoiser, lora)
    denoiser.eval()
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((len(conditions), *infer_sample_shape(denoiser)), generator=g)
    out = sample(denoiser, load_scheduler(base), noise, conditions, num_steps=num_steps, eta=1.0, generator=g)
    return rule(out.samples)


def fit_ddpo(base: Path, reward_model: Path, out: Path, *, steps: int, conditions_per_step: int,
             samples_per_condition: int, num_steps: int, lr: float, timestep_fraction: float = 0.5,
             seed: int = 0, dataset_options: dict | None = None) -> Path:
    """`prefdiff fit` DDPO on the learned reward; returns the LoRA adapter folder."""
    config = {
        "seed_everything": seed,
        "trainer": {"accelerator": "cpu", "max_steps": steps, "default_root_dir": str(out), **QUIET_TRAINER,
                    "limit_val_batches": 0},
        "model": {"class_path": "prefdiff.trainers.PolicyGradientModule",
                  "init_args": {"base": str(base), "conditioner": "class_label", "method": "ddpo",
                                "reward": "preference_model", "reward_options": {"path": str(reward_model)},
                                "samples_per_condition": samples_per_condition, "num_steps": num_steps,
                                "eta": 1.0, "lr": lr, "lora_rank": 8, "timestep_fraction": timestep_fraction,
                                "seed": seed}},
        "data": {"dataset": "synthetic_textures",
                 "dataset_options": {"resolution": 16, **(dataset_options or {})},
                 "batch_size": conditions_per_step, "val_size": 0, "seed": seed},
    }
    return _fit(config, out, "ddpo_preference.yaml")


def fit_pairs(base: Path, pair_file: Path, out: Path, *, objective: str = "dpo", steps: int, beta: float = 2000.0,
              lr: float = 1e-3, batch_size: int = 8, seed: int = 0) -> Path:
    """`prefdiff fit` Diffusion-DPO (or KTO) on the labelled pairs directly; returns the LoRA adapter folder."""
    config = {
        "seed_everything": seed,
        "trainer": {"accelerator": "cpu", "max_steps": steps, "default_root_dir": str(out), **QUIET_TRAINER},
        "model": {"class_path": "prefdiff.trainers.PairModule",
                  "init_args": {"base": str(base), "conditioner": "class_label", "objective": objective,
                                "beta": beta, "lr": lr, "lora_rank": 8, "seed": seed}},
        "data": {"pairs": str(pair_file), "batch_size": batch_size, "val_size": 0, "seed": seed},
    }
    return _fit(config, out, f"{objective}_pairs.yaml")


def _fit(config: dict[str, Any], out: Path, name: str) -> Path:
    import yaml

    from prefdiff.fit import fit

    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    code = fit(["--config", str(path)])
    if code != 0:
        raise RuntimeError(f"prefdiff fit exited with {code}")
    return out / "lora"


def paired_summary(before: torch.Tensor, after: torch.Tensor) -> dict[str, Any]:
    """Means before/after and the paired improvement with a bootstrap 95% interval."""
    from prefdiff.bench.stats import paired_bootstrap_ci

    diff = after - before
    return {"before": float(before.mean()), "after": float(after.mean()), "improvement": float(diff.mean()),
            "improvement_ci95": paired_bootstrap_ci(diff), "n": int(diff.numel())}


def run_demo(out: Path, *, rule_name: str = "brightness", rounds: int = 2, pairs_per_round: int = 120,
             temperature: float = 0.05, ddpo_steps: int = 30, n_eval: int = 256, seed: int = 0,
             base: Path | None = None, quick: bool = False) -> dict[str, Any]:
    """The whole loop; writes ``out/results.json`` and returns it."""
    from prefdiff.feedback.candidates import ModelSource
    from prefdiff.feedback.training import train_reward_model
    from prefdiff.plugins import get_manager

    start = time.perf_counter()
    out = Path(out)
    if base is None:
        from prefdiff.bench import Benchmark
        from prefdiff.builtin.example import example_recipe

        base = Benchmark(example_recipe(quick=True), seed=seed).base_model()
    rule = hidden_rule(rule_name)
    folder = out / "samples"
    source = ModelSource(str(base), "synthetic_textures", conditioner="class_label",
                         dataset_options={"resolution": 16}, per_condition=4, conditions_per_draw=16,
                         num_steps=8, seed=seed)
    labelers = [SimulatedLabeler(f"sim{i}", rule, temperature=temperature, seed=seed + i) for i in range(2)]
    reward, rounds_report = None, []
    for r in range(rounds):
        counts = label_round(folder, labelers, pairs_per_round, source=source, reward=reward)
        report = train_reward_model(folder / "pairs.jsonl", out / "reward_model", seed=seed)
        rounds_report.append({"answers": counts, "held_out": report["held_out"], "labels": report["labels"]})
        print(f"round {r + 1}: {counts} answers; reward model held-out accuracy "
              f"{report['held_out']['accuracy']:.3f} {report['held_out']['accuracy_ci95']}", flush=True)
        # The next round asks where this model is least sure.
        reward = get_manager().reward("preference_model", path=str(out / "reward_model"))
    lora = fit_ddpo(base, out / "reward_model", out / "ddpo", steps=ddpo_steps, conditions_per_step=8,
                    samples_per_condition=16, num_steps=8, lr=1e-3, seed=seed)
    conditions = torch.tensor([get_manager().dataset("synthetic_textures", split="test", resolution=16)[i]["cond"]
                               for i in range(n_eval)])
    eval_seed = seed + 777_777  # noise never used while labeling or training
    before = rule_on_held_out(base, None, rule, conditions, num_steps=8, seed=eval_seed)
    after = rule_on_held_out(base, lora, rule, conditions, num_steps=8, seed=eval_seed)
    # The same labels without a reward model: Diffusion-DPO on the pairs (the example recipe's budget).
    dpo = fit_pairs(base, folder / "pairs.jsonl", out / "dpo", steps=30, seed=seed)
    after_dpo = rule_on_held_out(base, dpo, rule, conditions, num_steps=8, seed=eval_seed)
    agreement_report = _agreement(folder / "pairs.jsonl")
    results = {"rule": rule_name, "temperature": temperature, "rounds": rounds_report,
               "agreement": agreement_report, "reward_model": rounds_report[-1]["held_out"],
               "ddpo": {"steps": ddpo_steps, "samples_per_step": 8 * 16},
               "hidden_rule_held_out": paired_summary(before, after),
               "dpo_on_pairs": {"steps": 30, "beta": 2000.0,
                                "hidden_rule_held_out": paired_summary(before, after_dpo)},
               "wall_s": round(time.perf_counter() - start, 1), "threads": torch.get_num_threads()}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def _agreement(pair_file: Path) -> dict[str, Any]:
    from prefdiff.data import read_pairs
    from prefdiff.feedback.agreement import agreement

    return agreement(read_pairs(pair_file))


def main(argv: list[str] | None = None) -> int:
    """Command line of the demo."""
    parser = argparse.ArgumentParser(prog="python -m prefdiff.feedback.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/feedback-demo")
    parser.add_argument("--rule", default="brightness", help="brightness or a registered reward name")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pairs-per-round", type=int, default=120, help="answers per labeler and round")
    parser.add_argument("--temperature", type=float, default=0.05, help="labeler noise (rule units)")
    parser.add_argument("--ddpo-steps", type=int, default=30)
    parser.add_argument("--n-eval", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = run_demo(Path(args.out), rule_name=args.rule, rounds=args.rounds, pairs_per_round=args.pairs_per_round,
                       temperature=args.temperature, ddpo_steps=args.ddpo_steps, n_eval=args.n_eval, seed=args.seed)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
