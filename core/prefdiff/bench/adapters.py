"""The aligned models a benchmark run leaves in its output folder, and how to sample them."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

#: The output folder's subfolder holding each method's aligned model.
ADAPTERS = "adapters"


def save_adapter(denoiser, out: Path, method: str, scheduler) -> None:
    """Write ``method``'s aligned model as ``out/adapters/METHOD`` as `prefdiff fit` writes it: the LoRA
    adapter, or for a method trained without one (``lora_rank`` 0) the whole model, with ``scheduler``."""
    from prefdiff.models import export_lora, has_lora, save_model

    if has_lora(denoiser):
        export_lora(denoiser, Path(out) / ADAPTERS / method)
    else:
        save_model(denoiser, Path(out) / ADAPTERS / method, scheduler)


def write_guide(staged: Path, out: Path, base: Path, recipe) -> Path | None:
    """Write ``adapters/README.md`` into the staged output folder (published as ``out``): the base model's
    folder and the `prefdiff sample` command that draws each adapter's held-out samples."""
    folder = Path(staged) / ADAPTERS
    methods = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    if not methods:
        return None
    out, base = Path(out).resolve(), Path(base).resolve()  # the commands work from any folder
    options = "".join(f" --dataset-option {shlex.quote(f'{key}={_yaml(_absolute(value))}')}"
                      for key, value in recipe.dataset_options.items())
    from prefdiff.models.lora import LORA_CONFIG

    whole = [method for method in methods if not (folder / method / LORA_CONFIG).is_file()]
    lora = [method for method in methods if method not in whole]
    lines = [f"# The aligned models of `prefdiff bench {recipe.domain}`", "", f"One per method ({', '.join(methods)})."]
    if lora:
        lines += [f"{', '.join(lora)}: a LoRA adapter on the base model at `{base}` (prefdiff's benchmark "
                  f"cache; a field that ships its base copies it there)."]
    if whole:
        lines += [f"{', '.join(whole)}: the whole model (trained without LoRA), aligned from the base at `{base}`."]
    lines += ["", "Sample one on the held-out conditions, as the benchmark did:", ""]
    for method in methods:
        model = (f"--model {shlex.quote(str(base))} --lora {shlex.quote(str(out / ADAPTERS / method))}"
                 if method in lora else f"--model {shlex.quote(str(out / ADAPTERS / method))}")
        lines += [f"    prefdiff sample {model} \\",
                  f"        --dataset {recipe.dataset}{options} --steps {recipe.num_steps} --n 8 "
                  f"--out runs/{recipe.domain}-{method}-samples", ""]
    lines += [f"With `--model {shlex.quote(str(base))}` alone the same command samples the base."]
    if lora:
        lines[-1] += (" The adapters are peft's format (`adapter_model.safetensors`, `adapter_config.json`); "
                      "`prefdiff.models.load_lora` reads them too.")
    guide = folder / "README.md"
    guide.write_text("\n".join(lines) + "\n")
    return guide


def _absolute(value: Any) -> Any:
    """A dataset option naming an existing file or folder (a relative --cache's data root), made absolute."""
    if isinstance(value, str) and value and Path(value).exists():
        return str(Path(value).resolve())
    return value


def _yaml(value: Any) -> str:
    """A dataset option's value as `--dataset-option KEY=VALUE` reads it back (YAML; JSON is YAML)."""
    import yaml

    if isinstance(value, str) and yaml.safe_load(value) == value:
        return value  # a path stays readable
    return json.dumps(value)
