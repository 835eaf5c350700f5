"""``KEY=VALUE`` command-line options (``--dataset-option``, ``--reward-option``) as keyword arguments."""

from __future__ import annotations

from typing import Any

from prefdiff.errors import UserError


def parse_options(pairs: list[str], flag: str) -> dict[str, Any]:
    """``["size=64", "root=/data"]`` -> ``{"size": 64, "root": "/data"}``, values parsed as YAML.

    :param pairs: the values the user gave, one ``KEY=VALUE`` each.
    :param flag: the flag they came from, named in the error (``--reward-option``).
    """
    import yaml

    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"{flag} '{pair}' is not KEY=VALUE")
        try:
            options[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise UserError(f"{flag} {key}: the value '{value}' is not valid YAML; quote it") from None
    return options
