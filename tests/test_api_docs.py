"""docs/plugins.md's API reference lists exactly ``prefdiff.api.__all__``."""

import re
from pathlib import Path

from prefdiff import api

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def documented_names() -> list[str]:
    text = DOC.read_text()
    section = text[text.index("## API reference"):]
    section = section[:section.index("### Deprecations")]
    return re.findall(r"^- `([A-Za-z_][A-Za-z0-9_]*)", section, flags=re.M)


def test_api_reference_lists_exactly_the_api():
    names = documented_names()
    assert len(names) == len(set(names)), "a name is documented twice"
    assert sorted(names) == sorted(api.__all__)


def test_every_api_name_has_a_docstring():
    missing = [n for n in api.__all__ if not (getattr(getattr(api, n), "__doc__", None) or "").strip()]
    assert missing == []
