"""Errors that reach the user as one line naming the file (or stage) and the problem."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class InputError(Exception):
    """Bad input: the message is ``<path>: <problem>`` and fits on one line."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = " ".join(str(problem).split())
        super().__init__(f"{self.path}: {self.problem}")


class StageError(Exception):
    """A stage could not do its work on valid input (e.g. too few views register)."""

    def __init__(self, stage: str, problem: str):
        self.stage = stage
        self.problem = " ".join(str(problem).split())
        super().__init__(f"{stage}: {self.problem}")


def exception_text(exc: BaseException, path: str | Path) -> str:
    """An exception as the problem part of an :class:`InputError` on ``path``: its type and
    message without the path (the error already starts with it)."""
    text = str(exc).replace(f"'{path}'", "").replace(str(path), "").strip(" :")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def read_json(path: str | Path) -> Any:
    """The JSON in ``path``; an :class:`InputError` naming the file when it is missing or
    not readable JSON."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(path, "missing") from None
    except (OSError, ValueError) as exc:
        raise InputError(path, f"not readable JSON ({exception_text(exc, path)})") from exc
