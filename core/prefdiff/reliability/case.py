"""One case of the catalogue: its id, the promise it tests, the command, and what it needs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Case:
    """One case: ``id`` is unique and stable; ``params`` hold everything the run needs."""

    id: str
    promise: str
    command: str
    what: str
    params: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
