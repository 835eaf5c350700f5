"""`prefdiff new-plugin NAME`: write a pip-installable plugin package that works as is."""

from __future__ import annotations

import keyword
import re
from pathlib import Path

from prefdiff.errors import UserError

PYPROJECT = '''[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "prefdiff-{name}"
version = "0.1.0"
description = "A prefdiff plugin: the {name} dataset and reward."
requires-python = ">=3.10"
dependencies = ["prefdiff"]

[project.entry-points.prefdiff]
{name} = "prefdiff_{module}"

[tool.setuptools]
packages = ["prefdiff_{module}"]
'''

MODULE = '''"""prefdiff plugin `{name}`: a synthetic dataset and a contrast reward.

Replace the dataset with your field's data and the reward with what "good"
means there; `prefdiff plugins` lists what this module registers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from prefdiff.api import UserError, hookimpl


class Blobs(Dataset):
    """Grey images with one Gaussian blob; the condition is the blob's quadrant (0-3)."""

    def __init__(self, split: str = "train", size: int = 512, resolution: int = 16, seed: int = 0) -> None:
        offsets = {{"train": 0, "val": 100_000, "test": 200_000}}
        if split not in offsets:
            raise UserError(f"split must be one of {{', '.join(offsets)}}, got '{{split}}'")
        if size <= 0:
            raise UserError(f"dataset size must be > 0, got {{size}}")
        self.offset, self.size, self.resolution, self.seed = offsets[split], size, resolution, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.offset + index)
        quadrant = int(torch.randint(4, (1,), generator=g))
        r = self.resolution
        centre = (torch.tensor([quadrant // 2, quadrant % 2]) + 0.25 + 0.5 * torch.rand(2, generator=g)) * r / 2
        yy, xx = torch.meshgrid(torch.arange(r), torch.arange(r), indexing="ij")
        width = r / 8 * (0.5 + torch.rand((), generator=g))
        blob = torch.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (2 * width**2))
        image = (2 * blob - 1).unsqueeze(0).repeat(3, 1, 1)
        return {{"x0": image, "cond": torch.tensor(quadrant)}}


def contrast():
    """The standard deviation of each image's pixels: higher is more contrast."""

    def reward(samples: torch.Tensor, conditions: Any = None):
        scores = samples.flatten(1).std(dim=1)
        return scores, {{"contrast": scores.detach().mean().item()}}

    return reward


@hookimpl
def prefdiff_register_datasets(register):
    register("{name}_blobs", Blobs)


@hookimpl
def prefdiff_register_rewards(register):
    register("{name}_contrast", contrast, differentiable=True)
'''

TESTS = '''"""Tests written with prefdiff.testing, as every plugin should have."""

import torch

import prefdiff_{module} as plugin
from prefdiff.testing import check_reward, fresh_manager, plugin_info


def test_the_plugin_is_installed_and_lists_what_it_registers():
    info = plugin_info("{name}")
    assert info.errors == []
    assert info.registered["rewards"] == ["{name}_contrast"]
    assert info.registered["datasets"] == ["{name}_blobs"]


def test_reward_meets_the_contract():
    reward = fresh_manager().reward("{name}_contrast")
    samples = torch.rand(4, 3, 16, 16) * 2 - 1
    check_reward(reward, torch.arange(4), samples)
    flat, busy = torch.zeros(1, 3, 16, 16), samples[:1]
    assert reward(busy)[0] > reward(flat)[0]


def test_dataset_items():
    item = plugin.Blobs("train", size=4)[0]
    assert item["x0"].shape == (3, 16, 16) and -1 <= item["x0"].min() and item["x0"].max() <= 1
    assert 0 <= int(item["cond"]) < 4
'''

CONFTEST = '''"""prefdiff's test fixtures for every test here: a fresh plugin manager, a private cache, one thread."""

pytest_plugins = ["prefdiff.testing"]
'''

README = '''# prefdiff-{name}

A prefdiff plugin: the `{name}_blobs` dataset and the `{name}_contrast` reward.

```bash
pip install -e .            # or: prefdiff plugins install -e .
prefdiff plugins            # lists {name} with what it registers
pytest tests                # the tests use prefdiff.testing
```

Train with the reward by name, e.g. in a `prefdiff fit` config:
`model.init_args.reward: {name}_contrast`, `data.dataset: {name}_blobs`.
'''


def new_plugin(name: str, directory: str | Path | None = None) -> Path:
    """Write the plugin package for ``name`` into ``directory`` (default ``./prefdiff-NAME``)."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or keyword.iskeyword(name):
        raise UserError(f"plugin name '{name}' must be lower-case letters, digits and underscores, "
                        f"starting with a letter")
    from prefdiff.plugins import DEFAULT_PLUGINS, ENTRY_POINT_GROUP, metadata

    taken = set(DEFAULT_PLUGINS) | {ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    if name in taken:  # installed beside it, one of the two would not load (`prefdiff plugins` says which)
        raise UserError(f"plugin name '{name}' is taken by an installed plugin (`prefdiff plugins` lists them); "
                        f"pick another name")
    root = Path(directory) if directory else Path(f"prefdiff-{name}")
    if root.exists() and any(root.iterdir()):
        raise UserError(f"{root} exists and is not empty; pick another --dir")
    files = {
        "pyproject.toml": PYPROJECT,
        f"prefdiff_{name}/__init__.py": MODULE,
        f"tests/test_{name}.py": TESTS,
        "conftest.py": CONFTEST,
        "README.md": README,
    }
    for rel, template in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(name=name, module=name))
    return root
