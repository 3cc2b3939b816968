"""Errors that reach the user as one line naming the file (or stage) and the problem."""

from __future__ import annotations

from pathlib import Path


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
