"""What every stage needs around its work: logging to the rule's log file, one-line
errors, thread limits, and no partial output on failure."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from innout.errors import InputError, StageError
from innout.gpulock import pinned_messages

log = logging.getLogger("innout")


def setup_logging(log_file: str | Path | None, level: int = logging.INFO) -> logging.Logger:
    """Send the ``innout`` logger (and warnings) to ``log_file`` or stderr."""
    handler: logging.Handler
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file, mode="w")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)
    return log


def limit_threads(threads: int) -> None:
    """Keep numeric libraries within the cores the scheduler gave this job."""
    threads = max(1, int(threads))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # pragma: no cover - torch is a dependency, but stages without it still run
        pass


def remove_empty_parents(path: Path, stop_at: Path) -> None:
    """Remove ``path`` and its parents up to (excluding) ``stop_at`` while they are empty.

    Snakemake creates output folders before a job runs; a job that fails on bad input
    must leave none of them behind."""
    path, stop_at = Path(path).resolve(), Path(stop_at).resolve()
    while path != stop_at and stop_at in path.parents:
        try:
            path.rmdir()
        except OSError:
            return
        path = path.parent


@contextlib.contextmanager
def stage(name: str, log_file: str | Path | None, outputs: list[str | Path] = (), results_root: str | Path = "results") -> Iterator[logging.Logger]:
    """Run a stage: log to its file; on InputError/StageError print one line and exit 1.

    On any failure the stage's declared outputs and the folders Snakemake made for them
    are removed, so nothing partial stays under results/.
    """
    logger = setup_logging(log_file)
    logger.info("stage %s starting", name)
    for message in pinned_messages():  # innout.gpulock ran before logging was set up
        logger.info("gpu: %s", message)
    try:
        yield logger
    except (InputError, StageError) as err:
        logger.error("%s", err)
        _clean_outputs(outputs, results_root)
        print(f"innout {name}: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except BaseException:
        logger.exception("stage %s failed", name)
        _clean_outputs(outputs, results_root)
        raise
    logger.info("stage %s done", name)


def _clean_outputs(outputs, results_root) -> None:
    for out in outputs:
        out = Path(out)
        if out.is_dir() and not out.is_symlink():
            shutil.rmtree(out, ignore_errors=True)
        elif out.exists() or out.is_symlink():
            out.unlink()
        remove_empty_parents(out.parent, Path(results_root))


@contextlib.contextmanager
def atomic_dir(out_dir: str | Path) -> Iterator[Path]:
    """A temporary sibling of ``out_dir`` that replaces it when the block succeeds.

    On failure the temporary folder is removed and ``out_dir`` is untouched."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``path`` through a hidden sibling and a rename, so a reader (or a killed
    job) never sees it half written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def replace_dir(tmp: Path, out_dir: Path) -> None:
    """Move ``tmp`` onto ``out_dir``, replacing whatever was there."""
    old = None
    if out_dir.exists() or out_dir.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, old / "x")
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
