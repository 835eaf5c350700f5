"""Plugin commands: a typed function becomes ``prefdiff PLUGIN NAME`` (see the commands hook).

One signature is both the function and its command line, as litgpt's recipes
have it: parameters without a default are positional arguments, the others
``--flags`` with dashes for underscores; the types convert and check the
values, and the docstring's ``:param NAME:`` lines are the help.
"""

from __future__ import annotations

import inspect
import re
import typing
from typing import Any, Callable


_SECTION = re.compile(r"^(Args|Arguments|Parameters|Params|Returns?|Raises|Yields?|Examples?|Notes?|See Also):?$")


def _param_docs(function: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    from docstring_parser import parse

    text = inspect.getdoc(function) or ""
    doc = parse(text)
    # The first paragraph, whole: docstring_parser's short description is its first line only. It ends
    # at a blank line, a ":param" line or a Google/NumPy section header ("Args:", "Parameters").
    first = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith(":") or _SECTION.match(line.strip()):
            break
        first.append(line.strip())
    return " ".join(first), {p.arg_name: " ".join((p.description or "").split()) for p in doc.params}


def add_function_command(subcommands, name: str, function: Callable[..., Any]) -> None:
    """Add ``name`` to a jsonargparse subcommands action, its arguments read off ``function``."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    summary, docs = _param_docs(function)
    parser = ArgumentParser(prog=name, description=summary, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file of these options")
    hints = typing.get_type_hints(function)
    for param in inspect.signature(function).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        kind = hints.get(param.name, str)
        help_text = docs.get(param.name, "")
        if param.default is param.empty:
            parser.add_argument(param.name, type=kind, help=help_text)
        elif kind is bool:
            parser.add_argument(f"--{param.name.replace('_', '-')}", dest=param.name, type=bool,
                                default=param.default, help=f"{help_text} (default {param.default})")
        else:
            parser.add_argument(f"--{param.name.replace('_', '-')}", dest=param.name, type=kind,
                                default=param.default, help=f"{help_text} (default {param.default})")
    subcommands.add_subcommand(name, parser, help=summary)


def call_function_command(function: Callable[..., Any], options: Any) -> Any:
    """Call ``function`` with the parsed ``options`` of its command."""
    names = [p.name for p in inspect.signature(function).parameters.values()
             if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return function(**{n: options[n] for n in names})
