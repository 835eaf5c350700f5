"""Every shipped base is the one its field's committed recipe pretrains (prefdiff.bench.shipped)."""

import hashlib
import json
from pathlib import Path

import pytest

from prefdiff.bench.recipe import BASE_FIELDS, BASE_FORMAT
from prefdiff.bench.shipped import RECORD
from prefdiff.plugins import get_manager


def shipped_recipes():
    manager = get_manager()
    found = []
    for name in manager.names("benchmarks"):
        recipe = manager.benchmark(name, quick=False)
        if recipe.shipped_bases and (Path(recipe.shipped_bases) / recipe.domain / RECORD).is_file():
            found.append(pytest.param(name, id=name))
    return found


def test_the_demo_and_the_example_configs_have_their_bases():
    names = {p.values[0] for p in shipped_recipes()}
    assert {"example", "medical"} <= names


@pytest.mark.parametrize("name", shipped_recipes())
def test_a_shipped_base_matches_its_recipe(name):
    from prefdiff.models import load_model

    manager = get_manager()
    full, quick = manager.benchmark(name, quick=False), manager.benchmark(name, quick=True)
    folder = Path(full.shipped_bases) / full.domain
    record = json.loads((folder / RECORD).read_text())
    hashed = record["hashed"]
    # The key is the hash of what was recorded, and the recorded recipe is today's.
    blob = json.dumps(hashed, sort_keys=True, default=str)
    assert record["key"] == hashlib.sha256(blob.encode()).hexdigest()[:12]
    assert hashed["base"] == BASE_FORMAT and hashed["seed"] == record["seed"] == 0
    for recipe in (full, quick):  # --quick aligns the same base
        for field in BASE_FIELDS:
            if field == "dataset_options":  # prepare adds the data's location ($CACHE/...)
                expected = json.loads(json.dumps(recipe.dataset_options))
                assert expected.items() <= hashed[field].items(), field
            else:
                assert hashed[field] == json.loads(json.dumps(getattr(recipe, field), default=str)), field
    assert load_model(folder).sample_shape  # it opens as the model folder it is
