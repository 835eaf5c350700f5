"""What every alignment LightningModule shares: model, schedule, reward, RNG, validation."""

from __future__ import annotations

import contextlib
import random
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from prefdiff.data import condition_count
from prefdiff.errors import UserError
from prefdiff.models.memo import BUDGET_MB, BoundedMemo
from prefdiff.models import (FROZEN_DTYPES, LoraOptions, ModelPreset, add_lora, build_denoiser, check_lora_init,
                             default_lora_targets, hold_frozen_in, load_model, saved_conditioner)
from prefdiff.plugins import get_manager
from prefdiff.sampling import SDE_KINDS, is_flow, noised, sample, shifted, training_target
from prefdiff.schedulers import build_scheduler, load_scheduler

#: --model.sdpa_backend -> the name of torch.nn.attention.SDPBackend it forces.
SDPA_BACKENDS = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION",
                 "math": "MATH"}
#: torch.compile's modes (reduce-overhead captures CUDA graphs).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
LORA_TARGETS = ("attention", "blocks")
TIMESTEP_SAMPLING = ("uniform", "logit_normal")
#: The Trainer precisions that autocast: what --model.frozen_dtype needs (the -true ones would cast the adapter too).
AUTOCAST_PRECISIONS = ("bf16-mixed", "16-mixed")


class TrainingData(Enum):
    """What a trainer family trains on; the benchmark runner and `prefdiff fit` ask it."""

    TARGETS = "targets"
    """Dataset items with a target sample ``x0`` and its condition (SFT)."""
    CONDITIONS = "conditions"
    """Conditions only: the method samples its own data (online methods)."""
    PAIRS = "pairs"
    """Winner/loser pairs from a pair file: human labels, or mined by a benchmark."""
    SCORED_SAMPLES = "scored_samples"
    """Samples with their rewards (reward-weighted SFT)."""

    @property
    def mined(self) -> bool:
        """Whether a benchmark makes this data by sampling the base model and scoring it."""
        return self in (TrainingData.PAIRS, TrainingData.SCORED_SAMPLES)


class AlignmentModule(pl.LightningModule):
    """Base of the trainers: builds the denoiser, the noise schedule and the reward.

    :param model: a fresh model preset (see :class:`prefdiff.models.ModelPreset`).
    :param base: folder of a saved base model to start from (instead of ``model``).
    :param conditioner: registered conditioner name, or None for raw conditions.
    :param conditioner_options: keyword options for the conditioner factory.
    :param lora_rank: LoRA rank; 0 trains every weight (full fine-tune).
    :param lora_alpha: LoRA scale numerator (default: the rank).
    :param reward: registered reward name or weighted sum ``"0.7*a + 0.3*b"``.
    :param reward_options: keyword options for the reward factory.
    :param num_steps: sampling steps (DDIM, or flow matching's Euler steps).
    :param eta: stochasticity of sampling, in [0, 1]: DDIM's eta, or for a flow-matching
        model the SDE noise level ``a`` (Flow-GRPO); > 0 is needed for log-probs.
    :param sde: flow matching only: ``sde`` (Flow-GRPO's SDE) or ``cps`` (coefficients-preserving).
    :param sde_window: flow matching only: ``[first, end)``, the sampling steps that are stochastic
        (MixGRPO's and Flow-GRPO-Fast's window, fixed); the others take ODE steps and are not trained.
    :param sde_window_size: flow matching only: draw the window afresh for every batch, this many
        consecutive steps placed uniformly inside ``sde_window`` (default: all steps), as
        Flow-GRPO-Fast's ``sde_window_size`` in its ``sde_window_range`` (yifan123/flow_grpo). Every
        step of the range is then trained, a few per batch, at a window's cost.
    :param timestep_sampling: flow matching only: the noise levels the data-driven objectives (sft, rwr,
        dpo, kto) train at. ``uniform``: s uniform in [0, 1) (Lipman et al. 2023). ``logit_normal``:
        s = sigmoid(n), n ~ N(0, 1) (Esser et al. 2024, sec. 3.1), then the scheduler's ``shift``, as
        diffusers' SD3 and FLUX training scripts and flow_grpo's SD3 DPO draw them: the levels SD3 and
        FLUX were trained at, most of them mid-to-high noise.
    :param sample_chunks: online methods sample their batch in this many chunks, so a chunk's
        reward can be computed while the next one samples.
    :param reward_workers: score in this many worker processes (or Ray actors) overlapped with
        sampling (:mod:`prefdiff.reward_pool`); 0 scores in this process.
    :param reward_backend: ``process`` or ``ray`` (the optional ``ray`` extra).
    :param guidance_scale: classifier-free guidance weight; 1 turns it off.
    :param lr: AdamW learning rate.
    :param max_grad_norm: gradient clipping norm; 0 turns it off.
    :param seed: seeds every random draw the module makes (kept in the checkpoint, so a resumed run
        draws what an uninterrupted one does). `prefdiff fit` sets it to ``--seed_everything`` unless it
        is given; None elsewhere means 0.
    :param scheduler: scheduler options for a fresh model (DDIMScheduler's, or num_train_timesteps
        and shift for flow matching).
    :param lora_targets: which layers LoRA adapts: ``attention`` (the attention projections, the default
        for text-to-image pipelines) or ``blocks`` (every Linear/Conv inside the UNet blocks, the default
        for the fields' UNets); None keeps the model's default.
    :param lora_init: how LoRA's A matrices start: ``gaussian`` (std 1/rank, as diffusers' LoRA scripts,
        TRL and Flow-GRPO start them; the default for text-to-image pipelines) or ``kaiming`` (peft's
        default; the default for the fields' UNets); None keeps the model's default. B starts at zero.
    :param negative_prompt: text-to-image pipelines: the prompt classifier-free guidance steers away
        from, in sampling and wherever the trainer applies guidance ("" by default, as diffusers).
    :param distilled_guidance: a guidance-distilled FLUX transformer's embedded guidance value
        (FluxPipeline's ``guidance_scale``); None keeps FluxPipeline's default, 3.5. Not classifier-free
        guidance, which is ``guidance_scale``.

    Performance options (none changes the numbers beyond float tolerance; tests/test_levers.py;
    benchmarks/gpu.sh measures each one on and off):

    :param channels_last: the denoiser's network and its image inputs in channels-last memory format
        (NHWC convolutions without layout conversions on GPUs).
    :param sdpa_backend: force scaled-dot-product attention onto one kernel during fit: ``flash``,
        ``efficient`` (memory-efficient), ``cudnn`` or ``math``; None lets torch choose.
    :param compile: ``torch.compile`` the denoiser's network (after LoRA is injected).
    :param compile_mode: torch.compile's mode: ``default``, ``reduce-overhead`` (CUDA graphs),
        ``max-autotune`` or ``max-autotune-no-cudagraphs``.
    :param fused_optimizer: AdamW's fused kernel (one launch per step instead of one per tensor group).
    :param frozen_dtype: ``bfloat16`` or ``float16``: hold the weights that do not train (the base network
        under a LoRA adapter, a pipeline's VAE and text encoders) in this dtype, read from the folder in
        it, and the trained ones in float32, as diffusers' LoRA scripts do with ``--mixed_precision``.
        Half the memory of the frozen weights; needs a LoRA adapter and ``--trainer.precision bf16-mixed``
        (or ``16-mixed``), whose autocast runs each layer in half precision; ``float16`` needs a GPU. None
        keeps every weight in float32.
    :param variant: the weight variant to read from a pipeline folder (``--model.base``): ``fp16``,
        ``non_ema``, ... as ``from_pretrained(variant=...)``; a component without it reads its plain weights.
        None: the plain weights, or a component's only variant (a folder downloaded with ``*fp16*`` only).
    :param latent_cache_mb: host memory for the VAE latents of a latent model's training images, each
        encoded once while they fit (pairs, SFT images); once full, later images are encoded each time
        they are read. Per process.
    :param prompt_cache_mb: the same for a pipeline's prompt embeddings (SD3's are 5.5 MB a prompt).
    :param gradient_checkpointing: recompute the network's block activations in backward (diffusers'
        ``enable_gradient_checkpointing``): less memory, more compute.
    """

    def __init__(self, model: dict | None = None, base: str | None = None,
                 conditioner: str | None = None, conditioner_options: dict | None = None,
                 lora_rank: int = 8, lora_alpha: float | None = None,
                 reward: str | None = None, reward_options: dict | None = None,
                 num_steps: int = 20, eta: float = 1.0, guidance_scale: float = 1.0,
                 lr: float = 1e-4, max_grad_norm: float = 1.0, seed: int | None = None,
                 scheduler: dict | None = None, sde: str | None = None,
                 sde_window: list[int] | None = None, sde_window_size: int | None = None,
                 timestep_sampling: str = "uniform",
                 sample_chunks: int = 1, reward_workers: int = 0,
                 reward_backend: str = "process", lora_targets: str | None = None, channels_last: bool = False,
                 sdpa_backend: str | None = None, compile: bool = False, compile_mode: str = "default",
                 fused_optimizer: bool = False,
                 gradient_checkpointing: bool = False,
                 lora_init: str | None = None, negative_prompt: str = "", distilled_guidance: float | None = None,
                 frozen_dtype: str | None = None, variant: str | None = None, latent_cache_mb: float = BUDGET_MB,
                 prompt_cache_mb: float = BUDGET_MB) -> None:  # pragma: no mutate block
        super().__init__()
        self.save_hyperparameters()
        if seed is None:
            self.hparams.seed = 0
        if (model is None) == (base is None):
            raise UserError("give exactly one of --model.model (a fresh preset) or --model.base "
                            "(a saved model folder)")
        if base is not None and scheduler:
            raise UserError(f"--model.scheduler builds a fresh model's scheduler, but a saved model "
                            f"(--model.base {base}) samples with its own scheduler/ folder; drop --model.scheduler, "
                            f"or edit {Path(base) / 'scheduler' / 'scheduler_config.json'}")
        if base is None and variant is not None:
            raise UserError(f"--model.variant ('{variant}') picks the weight files of a pipeline folder given as "
                            f"--model.base; --model.model builds a fresh network: drop --model.variant")
        if num_steps < 1:
            raise UserError(f"--model.num_steps must be >= 1, got {num_steps}")
        if not 0.0 <= eta <= 1.0:
            raise UserError(f"--model.eta must be in [0, 1], got {eta}")
        if lr <= 0:
            raise UserError(f"--model.lr must be > 0, got {lr}")
        for name, budget in (("latent_cache_mb", latent_cache_mb), ("prompt_cache_mb", prompt_cache_mb)):
            if budget < 0:
                raise UserError(f"--model.{name} must be >= 0 (0: no cache), got {budget}")
        if sample_chunks < 1 or reward_workers < 0:
            raise UserError(f"--model.sample_chunks must be >= 1 and --model.reward_workers >= 0, got "
                            f"{sample_chunks} and {reward_workers}")
        self._check_performance_options()
        self.denoiser = self.new_denoiser()
        self.noise_scheduler = (load_scheduler(base) if base is not None else
                                build_scheduler(scheduler, self.denoiser.preset.prediction_type))
        self.flow = is_flow(self.noise_scheduler)
        self._check_family(sde, sde_window)
        self._prepare_network()
        manager = get_manager()
        self.reward_fn = manager.reward(reward, **(reward_options or {})) if reward else None
        self.reward_queries = 0
        # A pipeline's VAE and text encoders come from its folder, not from checkpoints.
        self.strict_loading = not self.denoiser.frozen_parts()

    def new_denoiser(self):
        """The denoiser the options describe, as built before training: the base model or a fresh
        preset, with its conditioner, and the LoRA adapters when ``lora_rank`` > 0."""
        hp = self.hparams
        name, options = hp.conditioner, dict(hp.conditioner_options or {})
        saved = saved_conditioner(hp.base) if hp.base is not None else None
        if saved is not None and name in (None, saved[0]):  # the base's own, unless another is named
            name, options = saved[0], {**saved[1], **options}
        cond_module = get_manager().conditioner(name, **options) if name else None
        frozen = FROZEN_DTYPES[hp.frozen_dtype] if hp.frozen_dtype else None
        if hp.base is not None:
            denoiser = load_model(hp.base, cond_module, dtype=frozen, variant=hp.variant)
        else:
            denoiser = build_denoiser(ModelPreset(**hp.model), cond_module)
        denoiser.set_negative_prompt(hp.negative_prompt)
        denoiser.set_distilled_guidance(hp.distilled_guidance, flag="--model.init_args.distilled_guidance")
        for part, budget in ((denoiser.codec, hp.latent_cache_mb), (denoiser.conditioner, hp.prompt_cache_mb)):
            if isinstance(getattr(part, "cache", None), BoundedMemo):
                part.cache.budget_mb = budget
        if hp.lora_rank > 0:
            add_lora(denoiser, LoraOptions(r=hp.lora_rank, alpha=hp.lora_alpha or float(hp.lora_rank),
                                           target_modules=self._lora_target_names(denoiser.net),
                                           init=hp.lora_init))
        if frozen is not None:
            hold_frozen_in(denoiser, frozen)
        return denoiser

    def frozen_keys(self, state: dict[str, Any]) -> list[str]:
        """Keys of ``state`` (this module's state dict) that belong to the model's frozen parts."""
        prefixes = tuple(f"denoiser.{part}." for part in self.denoiser.frozen_parts())
        return [k for k in state if prefixes and k.startswith(prefixes)]

    def _check_family(self, sde: str | None, sde_window: list[int] | None) -> None:
        """The model, its scheduler and the sampling options must be of one family."""
        if self.flow != (self.denoiser.prediction_type == "flow"):
            raise UserError(f"the model predicts {self.denoiser.prediction_type} but its scheduler is "
                            f"{type(self.noise_scheduler).__name__}; a flow model needs a "
                            f"FlowMatchEulerDiscreteScheduler and an epsilon/v model a DDIM-style one "
                            f"(check the folder's scheduler/)")
        size = self.hparams.sde_window_size
        if not self.flow and (sde is not None or sde_window is not None or size is not None):
            raise UserError("--model.sde, --model.sde_window and --model.sde_window_size are flow-matching options; "
                            "this model samples by DDIM")
        if self.hparams.timestep_sampling not in TIMESTEP_SAMPLING:
            raise UserError(f"--model.timestep_sampling must be one of {', '.join(TIMESTEP_SAMPLING)}, "
                            f"got '{self.hparams.timestep_sampling}'")
        if not self.flow and self.hparams.timestep_sampling != "uniform":
            raise UserError("--model.timestep_sampling logit_normal is a flow-matching option; this model trains "
                            "at DDIM timesteps drawn uniformly")
        if sde is not None and sde not in SDE_KINDS:
            raise UserError(f"--model.sde must be one of {', '.join(SDE_KINDS)}, got '{sde}'")
        if sde_window is not None:
            first, end = (list(sde_window) + [None, None])[:2]
            if len(sde_window) != 2 or not 0 <= first < end <= self.hparams.num_steps:
                raise UserError(f"--model.sde_window must be [first, end] with 0 <= first < end <= num_steps="
                                f"{self.hparams.num_steps}, got {list(sde_window)}")
        if size is not None:
            first, end = sde_window or (0, self.hparams.num_steps)
            if not 1 <= size <= end - first:
                raise UserError(f"--model.sde_window_size must be in [1, {end - first}] (the steps of "
                                f"{'--model.sde_window' if sde_window else '--model.num_steps'}), got {size}")

    def _check_performance_options(self) -> None:
        hp = self.hparams
        if hp.reward_workers > 0:
            from prefdiff.reward_pool import check_backend

            check_backend(hp.reward_backend)
        hp.lora_init = check_lora_init(hp.lora_init)
        if hp.lora_targets is not None and hp.lora_targets not in LORA_TARGETS:
            raise UserError(f"--model.lora_targets must be one of {', '.join(LORA_TARGETS)}, got '{hp.lora_targets}'")
        if hp.sdpa_backend is not None and hp.sdpa_backend not in SDPA_BACKENDS:
            raise UserError(f"--model.sdpa_backend must be one of {', '.join(SDPA_BACKENDS)}, got '{hp.sdpa_backend}'")
        if hp.compile_mode not in COMPILE_MODES:
            raise UserError(f"--model.compile_mode must be one of {', '.join(COMPILE_MODES)}, got '{hp.compile_mode}'")
        if hp.frozen_dtype is not None and hp.frozen_dtype not in FROZEN_DTYPES:
            raise UserError(f"--model.frozen_dtype must be one of {', '.join(FROZEN_DTYPES)}, got '{hp.frozen_dtype}'")
        if hp.frozen_dtype is not None and hp.lora_rank <= 0:
            raise UserError("--model.frozen_dtype holds the weights under a LoRA adapter in half precision; a full "
                            "fine-tune (--model.lora_rank 0) trains and writes every weight in float32: drop "
                            "--model.frozen_dtype, or train an adapter with --model.lora_rank > 0")

    def _lora_target_names(self, net: torch.nn.Module) -> list[str]:
        """The layers of ``net`` that ``--model.lora_targets`` names (empty: the model's default targets)."""
        which = self.hparams.lora_targets
        if which is None:
            return []
        names = default_lora_targets(net, attention_only=which == "attention")
        if not names:
            raise UserError(f"--model.lora_targets {which}: the network ({type(net).__name__}) has no such layers")
        return names

    def _prepare_network(self) -> None:
        """Apply the performance options to the denoiser's network, after LoRA so that they cover the
        adapters too: checkpointing, memory format, then compilation (which traces the other two)."""
        hp, net = self.hparams, self.denoiser.net
        if hp.gradient_checkpointing:
            if not getattr(net, "_supports_gradient_checkpointing", False):
                raise UserError(f"--model.gradient_checkpointing needs a diffusers network that supports it; "
                                f"{type(net).__name__} does not")
            net.enable_gradient_checkpointing()
        if hp.channels_last:
            net.to(memory_format=torch.channels_last)  # 4-D weights only: the convolutions
            net.register_forward_pre_hook(_channels_last_inputs, with_kwargs=True)
        if hp.compile:
            net.compile(mode=hp.compile_mode, dynamic=False)  # in place: state-dict keys unchanged

    def sampler_options(self) -> dict[str, Any]:
        """The family's own sampling options (flow matching: the SDE kind and window)."""
        if not self.flow:
            return {}
        window = self.hparams.sde_window
        return {"sde": self.hparams.sde or "sde", "sde_window": tuple(window) if window else None}

    def draw_sde_window(self, generator: torch.Generator) -> dict[str, Any]:
        """``{"sde_window": ...}`` drawn for one batch with ``--model.sde_window_size``, else nothing:
        Flow-GRPO-Fast's start uniform in ``[first, end - size]``, the window ``[start, start + size)``."""
        hp = self.hparams
        if not self.flow or hp.sde_window_size is None:
            return {}
        first, end = hp.sde_window or (0, hp.num_steps)
        start = int(torch.randint(first, end - hp.sde_window_size + 1, (), generator=generator))
        return {"sde_window": (start, start + hp.sde_window_size)}

    # ------------------------------------------------------ what it needs ----

    @classmethod
    def training_data(cls, **options: Any) -> TrainingData:
        """The data this family trains on with the given fixed options (default: conditions)."""
        return TrainingData.CONDITIONS

    @classmethod
    def uses_reward(cls, **options: Any) -> bool:
        """Whether this family trains on what a reward says (default: yes)."""
        return True

    # ------------------------------------------------------------ helpers ----

    def require_reward(self, differentiable: bool = False):
        """The reward, with a clear error when the method needs one it lacks."""
        method = type(self).__name__
        if self.reward_fn is None:
            raise UserError(f"{method} needs --model.reward; `prefdiff plugins` lists the rewards")
        if differentiable and not self.reward_fn.differentiable:
            raise UserError(f"{method} backpropagates through the reward but "
                            f"{self.reward_fn.describe()} is not differentiable; pick a "
                            f"differentiable reward or a policy-gradient method (ddpo, grpo)")
        return self.reward_fn

    def score(self, samples: torch.Tensor, cond: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        """Score samples with the (checked) reward and count the queries."""
        scores, info = self.require_reward()(samples, cond)
        self.reward_queries += samples.shape[0]
        # Numbers in info (e.g. each part of a composite reward) go to the logs.
        numbers = {k: v for k, v in info.items() if isinstance(v, (int, float))}
        if numbers and self._trainer is not None:
            self.log_metrics(numbers)
        return scores, info

    def sample_and_score(self, cond: Any, batch: int, generator: torch.Generator, group: int = 1, **kwargs):
        """Sample ``batch`` trajectories for ``cond`` and score their decoded samples: ``(out, rewards)``.

        The batch is sampled in ``--model.sample_chunks`` chunks (whole groups of ``group``); with
        ``--model.reward_workers`` a chunk is scored in a worker while the next one samples, and
        the scores are checked against the reward contract as in-process ones are.
        """
        from prefdiff.data import select
        from prefdiff.rewards import check_reward_output, finite_rows
        from prefdiff.sampling import concat_outputs

        reward = self.require_reward()
        kwargs = {**self.draw_sde_window(generator), **kwargs}  # one window for the batch's chunks
        groups = batch // group
        per_chunk = -(-groups // self.hparams.sample_chunks) * group
        outputs, scores, pending = [], [], []
        with torch.no_grad():
            for start in range(0, batch, per_chunk):
                part = select(cond, slice(start, start + per_chunk))
                size = min(per_chunk, batch - start)
                out = self.run_sampler(part, size, generator, group, return_trajectory=True, **kwargs)
                outputs.append(out)
                samples = self.denoiser.decode(out.samples)
                if self.reward_workers_pool is not None:
                    pending.append((self.reward_workers_pool.submit(samples, part), size, finite_rows(samples)))
                else:
                    scores.append(self.score(samples, part)[0])
            for future, size, finite in pending:
                part_scores, info = check_reward_output(future.result(), size, reward.describe(),
                                                        samples_finite=lambda finite=finite: finite)
                self.reward_queries += size
                numbers = {k: v for k, v in info.items() if isinstance(v, (int, float))}
                if numbers and self._trainer is not None:
                    self.log_metrics(numbers)
                scores.append(part_scores.to(self.device))
        return concat_outputs(outputs), torch.cat(scores)

    @property
    def reward_workers_pool(self):
        """The worker pool scoring rewards (None when scoring in this process); started on first use."""
        if self.hparams.reward_workers == 0:
            return None
        if getattr(self, "_reward_pool", None) is None:
            from prefdiff.reward_pool import RewardPool

            self._reward_pool = RewardPool(self.hparams.reward, self.hparams.reward_options,
                                           workers=self.hparams.reward_workers, backend=self.hparams.reward_backend)
        return self._reward_pool

    def configure_model(self) -> None:
        """Shard the denoiser with FSDP2 when the Trainer's strategy is Lightning's ModelParallelStrategy
        (:mod:`prefdiff.trainers.sharding`); under any other strategy the model stays whole."""
        from pytorch_lightning.strategies import ModelParallelStrategy

        if self._trainer is None or not isinstance(self.trainer.strategy, ModelParallelStrategy):
            return
        from prefdiff.trainers.sharding import is_sharded, shard_denoiser

        if is_sharded(self.denoiser):  # Lightning calls this hook again for each stage
            return
        mesh = self.device_mesh
        if mesh["tensor_parallel"].size() != 1:
            raise UserError(f"prefdiff shards its models across data-parallel ranks only (FSDP2); give the "
                            f"ModelParallelStrategy --trainer.strategy.init_args.data_parallel_size "
                            f"{mesh.size()} and --trainer.strategy.init_args.tensor_parallel_size 1")
        shard_denoiser(self.denoiser, mesh["data_parallel"])

    def on_fit_end(self) -> None:
        """After a sharded fit, gather the trained weights into a whole denoiser (on every rank), so that
        the model or adapter is exported, sampled and evaluated as after any other fit."""
        from prefdiff.trainers.sharding import gather_full_state, is_sharded

        if not is_sharded(self.denoiser):
            return
        state = gather_full_state(self.denoiser)  # a collective: every rank takes part
        whole = self.new_denoiser()
        whole.load_state_dict(state)
        self.denoiser = whole.to(self.device)

    def setup(self, stage: str) -> None:
        precision = str(self.trainer.precision) if self._trainer is not None else None
        if self.hparams.frozen_dtype and precision not in (None, *AUTOCAST_PRECISIONS):
            raise UserError(f"--model.frozen_dtype {self.hparams.frozen_dtype} holds the frozen weights in half "
                            f"precision, which only autocast can mix with the float32 adapter; add "
                            f"--trainer.precision bf16-mixed (the Trainer's is {precision})")
        if self.hparams.frozen_dtype == "float16" and precision is not None \
                and self.trainer.strategy.root_device.type == "cpu":
            raise UserError("--model.frozen_dtype float16 needs a GPU: on a CPU, torch's group norm cannot mix float16 "
                            "weights with float32 activations; use --model.frozen_dtype bfloat16")
        # The attention kernel is a process-wide setting: forced for the run, restored at teardown.
        if self.hparams.sdpa_backend is not None and getattr(self, "_sdpa", None) is None:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            self._sdpa = contextlib.ExitStack()
            self._sdpa.enter_context(sdpa_kernel(getattr(SDPBackend, SDPA_BACKENDS[self.hparams.sdpa_backend])))

    def teardown(self, stage: str) -> None:
        if getattr(self, "_sdpa", None) is not None:
            self._sdpa.close()
            self._sdpa = None
        pool = getattr(self, "_reward_pool", None)
        if pool is not None:
            pool.close()
            self._reward_pool = None

    def step_generator(self, salt: int = 0, *, per_rank: bool = True) -> torch.Generator:
        """A generator fixed by (seed, global step, rank): resumed runs draw the same noise.

        Online methods sample with a generator per rank, so ranks draw different samples.
        Methods that train on data draw for the whole global batch from one generator
        (``per_rank=False``) and keep their rank's share (:meth:`rank_share`), so a DDP run
        is the same training as one process with the same global batch.
        """
        rank = self.global_rank if per_rank else 0
        seed = self.hparams.seed * 1_000_003 + self.global_step * 7_919 + salt * 104_729 + rank * 15_485_863
        return torch.Generator(device="cpu").manual_seed(seed % (2**63))

    @property
    def world_size(self) -> int:
        """Processes training together (1 outside a Trainer)."""
        return self.trainer.world_size if self._trainer is not None else 1

    def rank_share(self, draws: torch.Tensor) -> torch.Tensor:
        """This rank's slice of a draw made for the whole global batch (rank r takes the r-th slice)."""
        n = draws.shape[0] // self.world_size
        return draws[self.global_rank * n:(self.global_rank + 1) * n]

    def sample_shape(self) -> tuple[int, ...]:
        from prefdiff.data import infer_sample_shape

        return infer_sample_shape(self.denoiser)

    def draw_noise(self, batch: int, generator: torch.Generator, group: int = 1) -> torch.Tensor:
        """Initial noise for ``batch`` samples; with ``group`` > 1 each run of ``group`` consecutive
        samples (a condition's group) starts from the same noise (an option of Flow-GRPO)."""
        noise = torch.randn((batch // group, *self.sample_shape()), generator=generator)
        return noise.repeat_interleave(group, dim=0).to(self.device)

    def run_sampler(self, cond: Any, batch: int, generator: torch.Generator, group: int = 1, **kwargs):
        """Sample from the current policy with the module's settings (DDIM or flow matching)."""
        hp = self.hparams
        uncond = self.denoiser.null_condition(cond) if hp.guidance_scale != 1.0 else None
        kwargs.setdefault("eta", hp.eta)
        return sample(self.denoiser, self.noise_scheduler, self.draw_noise(batch, generator, group), cond,
                      num_steps=hp.num_steps, guidance_scale=hp.guidance_scale, uncond=uncond,
                      generator=generator, **{**self.sampler_options(), **kwargs}, **self.denoiser.pinned(cond))

    def log_prob_options(self, cond: Any) -> dict[str, Any]:
        """The options under which a stored step's log-prob reproduces the sampler's."""
        hp = self.hparams
        uncond = self.denoiser.null_condition(cond) if hp.guidance_scale != 1 else None
        options = {"eta": hp.eta, "guidance_scale": hp.guidance_scale, "uncond": uncond}
        pinned = self.denoiser.pinned(cond)
        if pinned:
            options["keep_mask"] = pinned["keep_mask"]
        if self.flow:
            options["sde"] = hp.sde or "sde"
        return options

    def trainable_steps(self, out, fraction: float, generator: torch.Generator, min_std: float = 0.0) -> list[int]:
        """A random ``fraction`` (at least one) of the sampling steps that drew noise of std ``min_std`` or
        more. A deterministic step (DDIM's last onto alpha 1, an ODE step outside the SDE window) has
        log-prob 0 and no gradient: training it would only dilute the update. A step's log-prob gradient
        grows as 1 / std, so a floor keeps near-deterministic steps (DDIM's onto t = 1: std 0.009 at 10
        steps) from dominating an update whose reward they barely move."""
        candidates = out.stochastic.nonzero().flatten()
        if len(candidates) == 0:
            raise UserError("no sampling step is stochastic, so there is no log-prob to train; set "
                            "--model.eta > 0 (and a non-empty --model.sde_window)")
        if min_std > 0:
            stds = out.noise_std.cpu()[candidates]
            loud = stds >= min_std
            if not loud.any():
                raise UserError(f"no sampling step draws noise of std >= --model.min_step_std {min_std:g} (the "
                                f"largest is {stds.max():.3g}); lower it, or raise --model.eta")
            candidates = candidates[loud]
        count = max(1, int(len(candidates) * fraction))
        return candidates[torch.randperm(len(candidates), generator=generator)[:count]].tolist()

    def add_noise(self, x0: torch.Tensor, generator: torch.Generator):
        """``(x_t, t, target)`` for ``x0`` in the model's space, t uniform over the training
        timesteps; the target is what the network predicts (:func:`~prefdiff.sampling.training_target`).
        The draws are made for the global batch from a rank-free ``generator`` (:meth:`rank_share`)."""
        t, eps = self.draw_training_noise(x0, generator)
        return noised(self.noise_scheduler, x0, eps, t), t, training_target(self.noise_scheduler, x0, eps, t)

    def draw_training_noise(self, x0: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(t, eps)`` for a batch ``x0``, drawn for the global batch (DDP-exact) from a rank-free ``generator``:
        t uniform over the training timesteps (DDIM), or 1000 s with s drawn by ``--model.timestep_sampling``
        (flow matching)."""
        n, world = x0.shape[0], self.world_size
        steps = self.noise_scheduler.config.num_train_timesteps
        if self.flow and self.hparams.timestep_sampling == "logit_normal":
            t = shifted(self.noise_scheduler, torch.sigmoid(torch.randn(n * world, generator=generator))) * steps
        elif self.flow:
            t = torch.rand(n * world, generator=generator) * steps
        else:
            t = torch.randint(0, steps, (n * world,), generator=generator)
        eps = torch.randn((n * world, *x0.shape[1:]), generator=generator)
        return self.rank_share(t).to(x0.device), self.rank_share(eps).to(x0)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.denoiser.parameters() if p.requires_grad]

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip by ``--model.max_grad_norm`` in the automatically optimised families too (the Trainer's
        own ``gradient_clip_val``, when set, takes precedence)."""
        clip = gradient_clip_val if gradient_clip_val is not None else self.hparams.max_grad_norm
        if clip and clip > 0:
            self.clip_gradients(optimizer, gradient_clip_val=clip,
                                gradient_clip_algorithm=gradient_clip_algorithm or "norm")

    def configure_optimizers(self):
        params = self.trainable_parameters()
        if not params:
            raise UserError("the model has no trainable parameters; set --model.lora_rank > 0 "
                            "or train the full model with --model.lora_rank 0")
        fused = {"fused": True} if self.hparams.fused_optimizer else {}
        return torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=0.0, **fused)

    def clip_and_step(self, optimizer) -> None:
        """Clip gradients and step (manual optimization)."""
        if self.hparams.max_grad_norm > 0:
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.max_grad_norm,
                                gradient_clip_algorithm="norm")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def logging_step(self) -> bool:
        """Whether this step's metrics reach a logger: Lightning's loggers write step
        metrics every ``log_every_n_steps`` steps only, and each ``self.log`` call
        costs about a millisecond in Lightning's result collection, so logging the
        other steps is pure overhead (docs/benchmarks.md, performance figure 1)."""
        if self._trainer is None:
            return False
        try:
            return bool(self.trainer._logger_connector.should_update_logs)
        except AttributeError:  # another Lightning version: log every step, as before
            return True

    def log_progress(self, name: str, value: torch.Tensor, batch_size: int) -> None:
        """Log the step's headline number: every step when a progress bar shows it,
        else on the logging steps only."""
        if self._trainer is not None and (self.trainer.progress_bar_callback is not None or self.logging_step()):
            self.log(name, value, prog_bar=True, batch_size=batch_size)

    def log_metrics(self, metrics: dict[str, Any], prefix: str = "train") -> None:
        """Log a dict of step metrics on the steps that reach a logger (see :meth:`logging_step`)."""
        if not self.logging_step():
            return
        values = {f"{prefix}/{k}": float(v) for k, v in metrics.items()}
        self.log_dict(values, prog_bar=False, on_step=True, on_epoch=False,
                      batch_size=1, sync_dist=False)

    # --------------------------------------------------------- validation ----

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if self.reward_fn is None:
            return
        cond = batch["cond"]
        n = condition_count(cond)
        generator = torch.Generator().manual_seed(self.hparams.seed + 10_000 + batch_idx)
        with torch.no_grad():
            samples = self.denoiser.decode(self.run_sampler(cond, n, generator, eta=0.0).samples)
            scores, _ = self.reward_fn(samples, cond)
        self.log("val/reward", scores.mean(), prog_bar=True, batch_size=n, sync_dist=True)
        if batch_idx == 0:
            self._last_val_samples = samples.detach().cpu()

    def on_validation_epoch_end(self) -> None:
        samples = getattr(self, "_last_val_samples", None)
        if samples is None or self.trainer.log_dir is None or self.global_rank != 0:
            return
        from prefdiff.viz import save_grid

        if samples.ndim == 4 and samples.shape[1] in (1, 3):
            save_grid(samples, f"{self.trainer.log_dir}/samples/epoch{self.current_epoch:03d}.png")

    # -------------------------------------------------------- checkpoints ----

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        for key in self.frozen_keys(checkpoint["state_dict"]):
            del checkpoint["state_dict"][key]
        # Everything a resumed run needs to draw the same numbers as an uninterrupted one.
        np_state = np.random.get_state()
        checkpoint["prefdiff"] = {
            "torch_rng": torch.get_rng_state(),
            "python_rng": list(random.getstate()[1]),
            "python_rng_pos": random.getstate()[2],
            "numpy_rng": torch.from_numpy(np_state[1].astype(np.int64)),
            "numpy_rng_pos": int(np_state[2]),
            "reward_queries": self.reward_queries,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        _mid_epoch_stop_is_mid_epoch(checkpoint)
        state = checkpoint.get("prefdiff")
        if state is None:
            return
        torch.set_rng_state(state["torch_rng"])
        random.setstate((3, tuple(state["python_rng"]), state["python_rng_pos"]))
        np.random.set_state(("MT19937", state["numpy_rng"].numpy().astype(np.uint32),
                             state["numpy_rng_pos"], 0, 0.0))
        self.reward_queries = int(state["reward_queries"])


def check_step_selection(timestep_fraction: float, min_step_std: float) -> None:
    """The options of :meth:`AlignmentModule.trainable_steps`, checked when a module that trains step
    log-probs is built."""
    if not 0 < timestep_fraction <= 1:
        raise UserError(f"--model.timestep_fraction must be in (0, 1], got {timestep_fraction}")
    if min_step_std < 0:
        raise UserError(f"--model.min_step_std must be >= 0 (0 trains every stochastic step), got {min_step_std}")


def _mid_epoch_stop_is_mid_epoch(checkpoint: dict[str, Any]) -> None:
    """Make Lightning resume a run that ``--trainer.max_steps`` stopped inside an epoch inside that epoch.

    Such a checkpoint counts its epoch as processed (the epoch loop ended), which Lightning reads as a
    stop at the epoch's end: a run extended with ``--ckpt_path last`` would skip the rest of the epoch.
    Its batch progress says the epoch's last batch was not reached, so it is marked as stopped mid-epoch;
    the training sampler then continues after the batches already trained (:class:`~prefdiff.data.EpochSampler`).
    """
    loop = checkpoint.get("loops", {}).get("fit_loop", {})
    epochs, batches = loop.get("epoch_progress"), loop.get("epoch_loop.batch_progress")
    if not epochs or not batches or batches.get("is_last_batch", True) or batches["current"]["completed"] == 0:
        return
    for counts in (epochs["total"], epochs["current"]):
        if counts["started"] == counts["processed"] and counts["completed"] == counts["processed"] - 1:
            counts["processed"] -= 1


def _channels_last_inputs(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Forward pre-hook of ``--model.channels_last``: image-shaped (4-D) inputs in channels-last format."""
    def convert(x: Any) -> Any:
        return x.contiguous(memory_format=torch.channels_last) if torch.is_tensor(x) and x.ndim == 4 else x

    return tuple(convert(a) for a in args), {k: convert(v) for k, v in kwargs.items()}
