"""Bad input to every command: the files it is made of, and the cases (command, class, arguments, culprit).

Arguments name files under the fixtures folder as ``{w}``; each case must fail with one line naming
its culprit and exit code 2 (:func:`~prefdiff.reliability.common.one_line_error`).
"""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from prefdiff.reliability.case import Case
from prefdiff.reliability.common import one_line_error, run

KINDS = ("missing file", "wrong type", "malformed YAML or JSON", "unknown name", "out-of-range number",
         "corrupt safetensors", "foreign checkpoint", "empty dataset")

MODEL = ["--model", "{w}/model", "--dataset", "synthetic_textures", "--dataset-option", "resolution=8",
         "--conditioner", "class_label", "--steps", "2"]
SAMPLE = ["sample", *MODEL, "--n", "2", "--out", "{w}/out-sample"]
EDIT = ["edit", *MODEL, "--out", "{w}/out-edit"]
FIT = ["fit", "--config", "{w}/fit.yaml"]
WORKER = "@worker"
"""First argument of a case run through :mod:`prefdiff.reliability.worker` (`prefdiff bench` of the tiny recipe)."""
BENCH = [WORKER, "bench", "{w}/out-bench", "{w}/cache-bench", "{w}/marker-bench"]
LABEL = ["label", "{w}/samples", "--port", "0"]
REWARD = ["reward-model", "train", "{w}/pairs/pairs.jsonl", "--out", "{w}/out-reward", "--epochs", "1"]
SEGMENTER = ["medical", "train-segmenter", "{w}/task-empty", "{w}/out-segmenter/seg.safetensors"]
CONVERT = ["t2i", "convert-clip", "{w}/foreign.ckpt", "{w}/out-clip", "{w}/samples"]
"""An open_clip checkpoint to a CLIP folder; every case fails before the tokenizer folder is read."""

#: (command, class of bad input, arguments, what the one error line must name)
BAD_INPUTS: list[tuple[str, str, tuple[str, ...], str]] = [
    ("plugins", "missing file", ("plugins", "install", "{w}/no-such-plugin"), "no-such-plugin"),
    ("plugins", "wrong type", ("plugins", "--json", "yes"), "yes"),
    ("plugins", "malformed YAML or JSON", ("plugins", "--config", "{w}/bad.yaml"), "bad.yaml"),
    ("plugins", "unknown name", ("plugins", "uninstall", "prefdiff-no-such-plugin"), "prefdiff-no-such-plugin"),

    ("bench", "missing file", ("bench", "example", "--config", "{w}/no-such.yaml"), "no-such.yaml"),
    ("bench", "wrong type", ("bench", "example", "--seed", "abc"), "seed"),
    ("bench", "malformed YAML or JSON", ("bench", "example", "--config", "{w}/bad.yaml"), "bad.yaml"),
    ("bench", "unknown name", ("bench", "nowhere"), "nowhere"),
    ("bench", "unknown name", ("bench", "example", "--method", "ppo"), "ppo"),
    ("bench", "out-of-range number", ("bench", "example", "--threads", "0"), "--threads"),
    ("bench", "corrupt safetensors", (*BENCH[:3], "{w}/cache-torn", BENCH[4]), "cache-torn"),
    ("bench", "foreign checkpoint", (*BENCH[:3], "{w}/cache-foreign", BENCH[4]), "cache-foreign"),
    ("bench", "empty dataset", (*BENCH, '{"dataset_options": {"resolution": 8, "size": 0}}'), "size"),

    ("fit", "missing file", ("fit", "--config", "{w}/no-such.yaml"), "no-such.yaml"),
    ("fit", "missing file", (*FIT, "--ckpt_path", "{w}/no-such.ckpt"), "no-such.ckpt"),
    ("fit", "missing file", (*FIT, "--model.init_args.base", "{w}/no-such-model", "--model.init_args.model", "null"),
     "no-such-model"),
    ("fit", "wrong type", (*FIT, "--trainer.max_epochs", "abc"), "max_epochs"),
    ("fit", "wrong type", ("fit", "--config", "{w}/list.yaml"), "list.yaml"),
    ("fit", "wrong type", (*FIT, "--trainer.default_root_dir", "{w}/afile"), "afile"),
    ("fit", "wrong type", (*FIT, "--data.dataset_options", '{"resolution": "big"}'), "resolution"),
    ("fit", "malformed YAML or JSON", ("fit", "--config", "{w}/bad.yaml"), "bad.yaml"),
    ("fit", "malformed YAML or JSON", (*FIT, "--model.init_args.model", '{"kind": "unet2d", '), "model"),
    ("fit", "malformed YAML or JSON", (*FIT, "--data.pairs", "{w}/pairs-badline/pairs.jsonl", "--data.dataset",
                                       "null"), "pairs.jsonl:2"),
    ("fit", "unknown name", (*FIT, "--data.dataset", "nowhere"), "nowhere"),
    ("fit", "unknown name", (*FIT, "--model.init_args.reward", "nowhere"), "nowhere"),
    ("fit", "out-of-range number", (*FIT, "--trainer.max_steps", "-5"), "--trainer.max_steps"),
    ("fit", "out-of-range number", (*FIT, "--model.init_args.eta", "2"), "eta"),
    ("fit", "corrupt safetensors", (*FIT, "--model.init_args.base", "{w}/model-torn", "--model.init_args.model",
                                    "null"), "model-torn"),
    ("fit", "corrupt safetensors", ("fit", "--config", "{w}/fit-dpo.yaml", "--data.pairs",
                                    "{w}/pairs-torn/pairs.jsonl"), "a0.safetensors"),
    ("fit", "foreign checkpoint", (*FIT, "--ckpt_path", "{w}/foreign.ckpt"), "foreign.ckpt"),
    ("fit", "foreign checkpoint", (*FIT, "--ckpt_path", "{w}/torn.ckpt"), "torn.ckpt"),
    ("fit", "foreign checkpoint", (*FIT, "--model.init_args.base", "{w}/model-foreign", "--model.init_args.model",
                                   "null"), "model-foreign"),
    ("fit", "empty dataset", (*FIT, "--data.dataset_options", '{"resolution": 8, "size": 0}'), "size"),
    ("fit", "empty dataset", ("fit", "--config", "{w}/fit-dpo.yaml", "--data.pairs", "{w}/pairs-empty/pairs.jsonl"),
     "pairs.jsonl"),

    ("sample", "missing file", (*SAMPLE[:2], "{w}/no-such-model", *SAMPLE[3:]), "no-such-model"),
    ("sample", "wrong type", (*SAMPLE, "--n", "abc"), "abc"),
    ("sample", "wrong type", (*SAMPLE[:-1], "{w}/afile"), "afile"),
    ("sample", "wrong type", (*SAMPLE, "--dataset-option", "size=abc"), "size"),
    ("sample", "malformed YAML or JSON", (*SAMPLE, "--dataset-option", "size=[1"), "size"),
    ("sample", "malformed YAML or JSON", (*SAMPLE, "--config", "{w}/bad.yaml"), "bad.yaml"),
    ("sample", "unknown name", (*SAMPLE, "--dataset", "nowhere"), "nowhere"),
    ("sample", "unknown name", (*SAMPLE, "--conditioner", "nowhere"), "nowhere"),
    ("sample", "out-of-range number", (*SAMPLE, "--n", "0"), "--n"),
    ("sample", "corrupt safetensors", (*SAMPLE[:2], "{w}/model-torn", *SAMPLE[3:]), "model-torn"),
    ("sample", "corrupt safetensors", (*SAMPLE, "--lora", "{w}/lora-torn"), "lora-torn"),
    ("sample", "foreign checkpoint", (*SAMPLE, "--lora", "{w}/lora-foreign"), "lora-foreign"),
    ("sample", "foreign checkpoint", (*SAMPLE[:2], "{w}/model-foreign", *SAMPLE[3:]), "model-foreign"),
    ("sample", "empty dataset", (*SAMPLE, "--dataset-option", "size=0"), "size"),

    ("edit", "missing file", (*EDIT, "--mask", "{w}/no-such-mask.png"), "no-such-mask.png"),
    ("edit", "missing file", (*EDIT, "--image", "{w}/no-such-image.png", "--prompt", "a cat"), "no-such-image.png"),
    ("edit", "wrong type", (*EDIT, "--strength", "strong"), "strong"),
    ("edit", "wrong type", (*EDIT, "--mask", "{w}/mask-wide.safetensors"), "mask-wide"),
    ("edit", "malformed YAML or JSON", (*EDIT, "--config", "{w}/bad.yaml"), "bad.yaml"),
    ("edit", "unknown name", (*EDIT, "--conditioner", "nowhere"), "nowhere"),
    ("edit", "out-of-range number", (*EDIT, "--strength", "1.5"), "--strength"),
    ("edit", "out-of-range number", (*EDIT, "--index", "99999"), "--index"),
    ("edit", "out-of-range number", (*EDIT, "--mask", "{w}/mask-255.safetensors"), "mask-255"),
    ("edit", "corrupt safetensors", (*EDIT, "--mask", "{w}/torn.safetensors"), "torn.safetensors"),
    ("edit", "foreign checkpoint", (*EDIT[:2], "{w}/model-foreign", *EDIT[3:]), "model-foreign"),
    ("edit", "empty dataset", (*EDIT, "--dataset-option", "size=0"), "size"),

    ("label", "missing file", ("label", "{w}/no-such-folder", "--port", "0"), "no-such-folder"),
    ("label", "missing file", (*LABEL, "--instructions", "{w}/no-such.md"), "no-such.md"),
    ("label", "wrong type", (*LABEL[:2], "--port", "http"), "http"),
    ("label", "malformed YAML or JSON", ("label", "{w}/samples-badline", "--port", "0"), "pairs.jsonl:2"),
    ("label", "unknown name", (*LABEL, "--reward", "nowhere"), "nowhere"),
    ("label", "out-of-range number", (*LABEL, "--labels-per-pair", "0"), "--labels-per-pair"),
    ("label", "corrupt safetensors", ("label", "{w}/out-label", "--port", "0", *MODEL[:1], "{w}/model-torn",
                                      *MODEL[2:]), "model-torn"),
    ("label", "foreign checkpoint", ("label", "{w}/out-label", "--port", "0", *MODEL, "--lora", "{w}/lora-foreign"),
     "lora-foreign"),
    ("label", "empty dataset", ("label", "{w}/samples-empty", "--port", "0"), "samples-empty"),

    ("reward-model train", "missing file", ("reward-model", "train", "{w}/no-such.jsonl", "--out", "{w}/out-reward"),
     "no-such.jsonl"),
    ("reward-model train", "wrong type", (*REWARD, "--lr", "fast"), "fast"),
    ("reward-model train", "malformed YAML or JSON", ("reward-model", "train", "{w}/pairs-badline/pairs.jsonl",
                                                      "--out", "{w}/out-reward"), "pairs.jsonl:2"),
    ("reward-model train", "unknown name", ("reward-model", "tune", "{w}/pairs/pairs.jsonl"), "tune"),
    ("reward-model train", "out-of-range number", (*REWARD, "--held-out", "1.5"), "--held-out"),
    ("reward-model train", "corrupt safetensors", ("reward-model", "train", "{w}/pairs-torn/pairs.jsonl", "--out",
                                                   "{w}/out-reward"), "a0.safetensors"),
    ("reward-model train", "empty dataset", ("reward-model", "train", "{w}/pairs-empty/pairs.jsonl", "--out",
                                             "{w}/out-reward"), "pairs.jsonl"),

    ("new-plugin", "missing file", ("new-plugin", "good_name", "--config", "{w}/no-such.yaml"), "no-such.yaml"),
    ("new-plugin", "wrong type", ("new-plugin", "Bad-Name", "--dir", "{w}/out-plugin"), "Bad-Name"),
    ("new-plugin", "malformed YAML or JSON", ("new-plugin", "good_name", "--config", "{w}/bad.yaml"), "bad.yaml"),
    ("new-plugin", "unknown name", ("new-plugin", "good_name", "--dir", "{w}/nonempty"), "nonempty"),

    ("medical make-data", "missing file", ("medical", "make-data", "{w}/afile/task"), "afile"),
    ("medical make-data", "wrong type", ("medical", "make-data", "{w}/out-task", "--volumes", "many"), "many"),
    ("medical make-data", "malformed YAML or JSON", ("medical", "make-data", "--config", "{w}/bad.yaml"), "bad.yaml"),
    ("medical make-data", "unknown name", ("medical", "make-data", "{w}/out-task", "--config", "{w}/misspelt.yaml"),
     "depthh"),
    ("medical make-data", "unknown name", ("medical", "make-dta", "{w}/out-task"), "make-dta"),
    ("medical make-data", "out-of-range number", ("medical", "make-data", "{w}/out-task", "--size", "0"), "--size"),
    ("medical make-data", "empty dataset", ("medical", "make-data", "{w}/out-task", "--volumes", "0"), "--volumes"),
    ("medical make-data", "empty dataset", ("medical", "make-data", "{w}/nonempty"), "nonempty"),

    ("medical train-segmenter", "missing file", (*SEGMENTER[:2], "{w}/no-such-task", SEGMENTER[3]), "no-such-task"),
    ("medical train-segmenter", "wrong type", (*SEGMENTER, "--steps", "many"), "many"),
    ("medical train-segmenter", "malformed YAML or JSON", (*SEGMENTER, "--config", "{w}/bad.yaml"), "bad.yaml"),
    ("medical train-segmenter", "unknown name", (*SEGMENTER, "--arch", "vit"), "vit"),
    ("medical train-segmenter", "out-of-range number", (*SEGMENTER, "--steps", "0"), "--steps"),
    ("medical train-segmenter", "empty dataset", SEGMENTER, "imagesTr"),

    ("driving make-data", "missing file", ("driving", "make-data", "{w}/afile/nuscenes"), "afile"),
    ("driving make-data", "wrong type", ("driving", "make-data", "{w}/out-driving", "--duration", "fast"), "fast"),
    ("driving make-data", "wrong type", ("driving", "make-data", "{w}/nonempty"), "nonempty"),
    ("driving make-data", "wrong type", ("driving", "make-data", "{w}/dataroot-user"), "dataroot-user"),
    ("driving make-data", "malformed YAML or JSON", ("driving", "make-data", "--config", "{w}/bad.yaml"), "bad.yaml"),
    ("driving make-data", "unknown name", ("driving", "make-data", "{w}/out-driving", "--version", "v9"), "v9"),
    ("driving make-data", "out-of-range number", ("driving", "make-data", "{w}/out-driving", "--duration", "0"),
     "--duration"),
    ("driving make-data", "empty dataset", ("driving", "make-data", "{w}/out-driving", "--version", "v1.0-trainval",
                                            "--scenes", "0"), "--scenes"),

    ("robotics make-data", "missing file", ("robotics", "make-data", "{w}/afile/demos.hdf5"), "afile"),
    ("robotics make-data", "wrong type", ("robotics", "make-data", "{w}/out-demos.hdf5", "--demos", "many"), "many"),
    ("robotics make-data", "wrong type", ("robotics", "make-data", "{w}/afile"), "afile"),
    ("robotics make-data", "wrong type", ("robotics", "make-data", "{w}/users-lift.hdf5"), "users-lift.hdf5"),
    ("robotics make-data", "malformed YAML or JSON", ("robotics", "make-data", "--config", "{w}/bad.yaml"),
     "bad.yaml"),
    ("robotics make-data", "unknown name", ("robotics", "make-dta", "{w}/out-demos.hdf5"), "make-dta"),
    ("robotics make-data", "out-of-range number", ("robotics", "make-data", "{w}/out-demos.hdf5", "--fractions",
                                                   "[-1, 1, 1]"), "--fractions"),
    ("robotics make-data", "empty dataset", ("robotics", "make-data", "{w}/out-demos.hdf5", "--demos", "0"),
     "--demos"),

    ("t2i make-data", "missing file", ("t2i", "make-data", "{w}/afile/shapes"), "afile"),
    ("t2i make-data", "wrong type", ("t2i", "make-data", "{w}/out-shapes", "--train", "many"), "many"),
    ("t2i make-data", "malformed YAML or JSON", ("t2i", "make-data", "--config", "{w}/bad.yaml"), "bad.yaml"),
    ("t2i make-data", "unknown name", ("t2i", "make-data", "{w}/nonempty"), "nonempty"),
    ("t2i make-data", "out-of-range number", ("t2i", "make-data", "{w}/out-shapes", "--resolution", "0"),
     "--resolution"),
    ("t2i make-data", "empty dataset", ("t2i", "make-data", "{w}/out-shapes", "--train", "0"), "--train"),

    ("t2i convert-clip", "missing file", (*CONVERT[:2], "{w}/no-such.pt", *CONVERT[3:]), "no-such.pt"),
    ("t2i convert-clip", "wrong type", (*CONVERT, "--text-head-width", "wide"), "wide"),
    ("t2i convert-clip", "malformed YAML or JSON", (*CONVERT, "--config", "{w}/bad.yaml"), "bad.yaml"),
    ("t2i convert-clip", "unknown name", (*CONVERT[:3], "{w}/nonempty", CONVERT[4]), "nonempty"),
    ("t2i convert-clip", "out-of-range number", (*CONVERT, "--vision-head-width", "0"), "--vision-head-width"),
    ("t2i convert-clip", "corrupt safetensors", (*CONVERT[:2], "{w}/torn.safetensors", *CONVERT[3:]),
     "torn.safetensors"),
    ("t2i convert-clip", "foreign checkpoint", (*CONVERT[:2], "{w}/foreign.ckpt", *CONVERT[3:]), "foreign.ckpt"),
]

NOT_APPLICABLE = {
    "plugins": {"out-of-range number", "corrupt safetensors", "foreign checkpoint", "empty dataset"},
    "reward-model train": {"foreign checkpoint"},
    "new-plugin": {"out-of-range number", "corrupt safetensors", "foreign checkpoint", "empty dataset"},
    "medical make-data": {"corrupt safetensors", "foreign checkpoint"},
    "medical train-segmenter": {"corrupt safetensors", "foreign checkpoint"},
    "driving make-data": {"corrupt safetensors", "foreign checkpoint"},
    "robotics make-data": {"corrupt safetensors", "foreign checkpoint"},
    "t2i make-data": {"corrupt safetensors", "foreign checkpoint"},
    "t2i convert-clip": {"empty dataset"},
}
"""Classes of bad input a command takes no argument of (new-plugin reads no file, and so on)."""


# ----------------------------------------------------------- fixtures ----


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _pairs(folder: Path) -> Path:
    from prefdiff.reliability.kills import pair_file

    return pair_file(folder)


def make_fixtures(w: Path, work: Path) -> None:
    """Every file the cases name, under ``w``."""
    import torch

    from prefdiff.bench.recipe import recipe_key
    from prefdiff.feedback.candidates import write_sample_folder
    from prefdiff.models import add_lora, build_denoiser, save_lora, save_model
    from prefdiff.reliability.kills import TINY_MODEL, family_config
    from prefdiff.reliability.worker import tiny_bench_recipe
    from prefdiff.schedulers import build_scheduler
    from prefdiff.trainers import SFTModule

    w.mkdir(parents=True, exist_ok=True)
    (w / "bad.yaml").write_text("model:\n  init_args: [unclosed\n")
    (w / "list.yaml").write_text("- model\n- data\n")
    (w / "afile").write_text("a file, not a folder\n")
    (w / "nonempty").mkdir(exist_ok=True)
    (w / "nonempty" / "keep.txt").write_text("a user's file\n")
    (w / "misspelt.yaml").write_text("volumes: 3\ndepthh: 8\n")
    # A user's own data where make-data would write: a nuScenes dataroot, a robomimic file of another robot.
    (w / "dataroot-user" / "v1.0-mini").mkdir(parents=True, exist_ok=True)
    (w / "dataroot-user" / "samples").mkdir(exist_ok=True)
    import h5py

    with h5py.File(w / "users-lift.hdf5", "w") as f:
        f.create_group("data").attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1})
    for sub in ("imagesTr", "labelsTr"):  # a Decathlon task without a training volume
        (w / "task-empty" / sub).mkdir(parents=True, exist_ok=True)
    (w / "task-empty" / "dataset.json").write_text(json.dumps({"name": "empty", "labels": {"0": "background",
                                                               "1": "organ"}, "modality": {"0": "MRI"},
                                                               "training": []}))
    other = {**TINY_MODEL, "block_out_channels": [16, 32]}
    torch.manual_seed(0)
    save_model(build_denoiser(TINY_MODEL), w / "model")
    from safetensors.torch import save_file

    save_file({"keep": torch.ones(1, 1, 16, 16)}, str(w / "mask-wide.safetensors"))
    save_file({"keep": torch.full((1, 1, 8, 8), 255.0)}, str(w / "mask-255.safetensors"))
    shutil.rmtree(w / "model-torn", ignore_errors=True)
    shutil.copytree(w / "model", w / "model-torn")
    _truncate(w / "model-torn" / "net" / "diffusion_pytorch_model.safetensors")
    save_model(build_denoiser(other), w / "model-other")
    shutil.rmtree(w / "model-foreign", ignore_errors=True)
    shutil.copytree(w / "model", w / "model-foreign")
    shutil.copy(w / "model-other" / "net" / "diffusion_pytorch_model.safetensors",
                w / "model-foreign" / "net" / "diffusion_pytorch_model.safetensors")
    save_lora(add_lora(build_denoiser(TINY_MODEL)), w / "lora-torn")
    _truncate(w / "lora-torn" / "adapter_model.safetensors")
    save_lora(add_lora(build_denoiser(other)), w / "lora-foreign")
    (w / "torn.safetensors").write_bytes((w / "model" / "net" / "diffusion_pytorch_model.safetensors").read_bytes()[:100])
    module = SFTModule(model=other, conditioner="class_label", lora_rank=4)
    torch.save({"state_dict": module.state_dict(), "epoch": 0, "global_step": 2}, w / "foreign.ckpt")
    torch.save({"state_dict": SFTModule(model=TINY_MODEL, conditioner="class_label", lora_rank=4).state_dict(),
                "epoch": 0, "global_step": 2}, w / "torn.ckpt")
    _truncate(w / "torn.ckpt")
    for name in ("pairs", "pairs-torn", "pairs-badline"):
        shutil.rmtree(w / name, ignore_errors=True)
        _pairs(w / name)
    _truncate(w / "pairs-torn" / "a0.safetensors")
    lines = (w / "pairs-badline" / "pairs.jsonl").read_text().splitlines()
    (w / "pairs-badline" / "pairs.jsonl").write_text("\n".join([lines[0], "left is better", *lines[1:]]) + "\n")
    (w / "pairs-empty").mkdir(exist_ok=True)
    (w / "pairs-empty" / "pairs.jsonl").write_text("")
    write_sample_folder(w / "samples", torch.rand(2, 2, 3, 8, 8) * 2 - 1, [torch.tensor(0), torch.tensor(1)])
    (w / "samples-empty").mkdir(exist_ok=True)
    shutil.rmtree(w / "samples-badline", ignore_errors=True)
    shutil.copytree(w / "samples", w / "samples-badline")
    (w / "samples-badline" / "pairs.jsonl").write_text('{"id": "c000000-0-1", "winner": "a"}\nleft is better\n'
                                                      '{"id": "c000001-0-1", "winner": "b"}\n')
    fit = yaml.safe_load(family_config("ddpo", w / "fit-ddpo").read_text())
    fit["trainer"]["max_epochs"] = 1
    (w / "fit.yaml").write_text(yaml.safe_dump(fit))
    dpo = yaml.safe_load(family_config("dpo", w / "fit-dpo-pairs").read_text())
    (w / "fit-dpo.yaml").write_text(yaml.safe_dump(dpo))
    recipe = tiny_bench_recipe()
    for name, source in (("cache-torn", w / "model-torn"), ("cache-foreign", w / "model-foreign")):
        base = w / name / "bench" / f"tiny-{recipe_key(recipe, 0, w / name)}" / "base"
        shutil.rmtree(base, ignore_errors=True)
        shutil.copytree(source, base)
        build_scheduler().save_pretrained(base / "scheduler")


def run_inputs(cases: list[Case], work: Path, jobs: int) -> list[dict[str, Any]]:
    """Each bad-input case in its own process, ``jobs`` at a time."""
    w = work / "inputs"
    make_fixtures(w, work)

    def one(case: Case) -> dict[str, Any]:
        started = time.monotonic()
        argv = [a.replace("{w}", str(w)) for a in case.params["argv"]]
        worker = argv[0] == WORKER
        result = run(argv[worker:], work, module="prefdiff.reliability.worker" if worker else None, timeout=300)
        why = one_line_error(result, case.params["culprit"])
        line = next((ln for ln in result.stderr.splitlines() if ln.startswith("prefdiff: error: ")), "")
        return {**case.as_dict(), "passed": why is None, "detail": line[:400] if why is None else why,
                "seconds": round(time.monotonic() - started, 1)}

    with ThreadPoolExecutor(jobs) as pool:
        return list(pool.map(one, cases))
