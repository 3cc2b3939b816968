"""One GPU per job on a machine with several: a per-machine device lock.

Snakemake's ``--resources gpu=N`` bounds how many GPU jobs run at once, but every job would
still see every GPU and land on GPU 0. :func:`pin_job_gpu`, called by a GPU rule's script
before anything imports torch, takes a free GPU of this machine and sets
``CUDA_VISIBLE_DEVICES`` to it (``CUDA_DEVICE_ORDER=PCI_BUS_ID``, so the index is
``nvidia-smi``'s):

* the GPUs to choose from are those this job may see: ``CUDA_VISIBLE_DEVICES`` when it is
  set (a user's choice for the whole run), else every GPU ``nvidia-smi`` lists;
* one lock file per GPU, ``<dir>/gpu-<uuid or index>.lock``, ``dir`` =
  ``$INNOUT_GPU_LOCK_DIR`` or ``/tmp/innout-gpu-locks`` (shared by every user and every
  workflow of the machine: mode 1777 like /tmp); a GPU is taken with ``flock`` (exclusive,
  non-blocking), so two jobs never hold the same one, and the kernel releases the lock
  when the job's process ends, however it ends (SIGKILL included): there is no stale lock;
* when every GPU is held, the job waits, saying so every 10 s, until one is freed;
* under Slurm the scheduler already gave the job its GPUs (the slurm executor turns the
  ``gpu`` resource into ``--gpus``): when the job sees no more GPUs than it asked for,
  nothing is locked or changed; a Slurm job that sees none gets a warning (no ``--gpus``).

Lock files hold the holder's pid, host and job for whoever looks (``cat``). Processes the
job starts (or a rule script re-imported by a spawned data loader) inherit its GPU: the
job's environment carries ``INNOUT_GPU_PINNED``.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

DEFAULT_LOCK_DIR = "/tmp/innout-gpu-locks"
PINNED_MARK = "INNOUT_GPU_PINNED"  # set in a pinned job's environment: its child processes inherit the GPU
WAIT_LOG_SECONDS = 10.0
POLL_SECONDS = 0.5


@dataclass
class Gpu:
    index: str  # what CUDA_VISIBLE_DEVICES gets (nvidia-smi's index, or the entry the user gave)
    uuid: Optional[str] = None
    name: str = ""

    @property
    def lock_name(self) -> str:
        key = self.uuid or self.index
        return "gpu-" + re.sub(r"[^A-Za-z0-9_.-]", "_", key) + ".lock"


@dataclass
class Pinned:
    """What :func:`pin_job_gpu` did: the GPUs held (their open lock files) and what to log."""

    gpus: list[Gpu] = field(default_factory=list)
    handles: list[Any] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    waited_seconds: float = 0.0


# the lock files stay open (held) for the rest of the process: kept here
PINNED: Optional[Pinned] = None


def list_gpus() -> list[Gpu]:
    """The machine's GPUs as ``nvidia-smi`` lists them (empty without nvidia-smi or GPUs)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid,name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:
        return []
    gpus = []
    for line in out.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2 and parts[0].isdigit():
            gpus.append(Gpu(index=parts[0], uuid=parts[1] or None, name=",".join(parts[2:]).strip()))
    return gpus


def candidate_gpus(environ: Optional[dict] = None) -> list[Gpu]:
    """The GPUs this job may choose from: ``CUDA_VISIBLE_DEVICES`` when set (entries are
    matched to nvidia-smi's indices or UUIDs for their lock names), else all of them."""
    env = os.environ if environ is None else environ
    machine = list_gpus()
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return machine
    by_key = {g.index: g for g in machine} | {g.uuid: g for g in machine if g.uuid}
    chosen = []
    for entry in (e.strip() for e in visible.split(",")):
        if not entry or entry == "-1":
            break  # CUDA stops at the first invalid entry
        chosen.append(by_key.get(entry, Gpu(index=entry)))
    return chosen


def _slurm_gpus(env: dict) -> Optional[str]:
    """The GPUs Slurm gave this job (None outside Slurm or without any)."""
    if not env.get("SLURM_JOB_ID"):
        return None
    for key in ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES"):
        if env.get(key):
            return env[key]
    return None


def _open_lock(path: Path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        os.fchmod(fd, 0o666)  # other users' jobs must be able to open it for locking too
    except OSError:
        pass
    return os.fdopen(fd, "r+")


def _try_lock(handle) -> bool:
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip().replace("\n", " ") or "?"
    except OSError:
        return "?"


def lock_dir(environ: Optional[dict] = None) -> Path:
    env = os.environ if environ is None else environ
    folder = Path(env.get("INNOUT_GPU_LOCK_DIR") or DEFAULT_LOCK_DIR)
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        try:
            folder.chmod(0o1777)  # shared by every user of the machine, like /tmp
        except OSError:
            pass
    return folder


def acquire_gpus(count: int, gpus: list[Gpu], folder: Path, *, job: str = "", say: Callable[[str], None] = print,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> Pinned:
    """Hold ``count`` of ``gpus`` (waiting while fewer are free), through their lock files
    in ``folder``. The returned handles must stay open as long as the GPUs are used."""
    if count > len(gpus):
        raise RuntimeError(f"the job needs {count} GPUs, this machine offers {len(gpus)}")
    pinned = Pinned()
    start = last_said = clock()
    while True:
        for gpu in gpus:
            if gpu in pinned.gpus:
                continue
            path = folder / gpu.lock_name
            handle = _open_lock(path)
            if _try_lock(handle):
                handle.seek(0)
                handle.truncate()
                handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}: {job}\n")
                handle.flush()
                pinned.gpus.append(gpu)
                pinned.handles.append(handle)
                if len(pinned.gpus) == count:
                    pinned.waited_seconds = clock() - start
                    return pinned
            else:
                handle.close()
        now = clock()
        if now - last_said >= WAIT_LOG_SECONDS or now == start:
            busy = "; ".join(f"GPU {g.index}: {_holder(folder / g.lock_name)}" for g in gpus if g not in pinned.gpus)
            say(f"waiting for a free GPU ({now - start:.0f} s; {busy})")
            last_said = now
        sleep(POLL_SECONDS)


def pin_gpus(count: int, job: str = "", environ: Optional[dict] = None, say: Callable[[str], None] = None) -> Pinned:
    """Give this process ``count`` GPUs of its own (module docstring) by setting
    ``CUDA_VISIBLE_DEVICES`` in ``environ`` (default: ``os.environ``). ``count`` 0: nothing."""
    global PINNED
    env = os.environ if environ is None else environ
    pinned = Pinned()
    notes = pinned.messages

    def tell(message: str) -> None:
        notes.append(message)
        (say or (lambda m: print(f"innout gpu: {m}", file=sys.stderr, flush=True)))(message)

    if count <= 0:
        return pinned
    if env.get(PINNED_MARK):  # a process the job spawned (nerfstudio's data loaders): the job's GPU is its GPU
        return pinned
    env[PINNED_MARK] = str(os.getpid())
    PINNED = pinned
    slurm = _slurm_gpus(env)
    gpus = candidate_gpus(env)
    if env.get("SLURM_JOB_ID") and len(gpus) <= count:
        if slurm:
            tell(f"Slurm gave this job GPU(s) {slurm}; nothing to pin")
        else:
            tell("a Slurm job without a GPU: request one (resources gpu / gpu_model, or slurm_extra='--gpus=1')")
        return pinned
    if not gpus:
        tell("no GPU found (nvidia-smi lists none): the stage's device setting decides what runs")
        return pinned
    held = acquire_gpus(count, gpus, lock_dir(env), job=job, say=tell)
    held.messages = notes
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # the index is nvidia-smi's
    env["CUDA_VISIBLE_DEVICES"] = ",".join(g.index for g in held.gpus)
    tell(f"holding GPU {env['CUDA_VISIBLE_DEVICES']} ({', '.join(g.name or g.uuid or g.index for g in held.gpus)}) "
         f"of {len(gpus)}; lock files in {lock_dir(env)}" + (f"; waited {held.waited_seconds:.0f} s" if held.waited_seconds >= 1 else ""))
    PINNED = held
    return held


def pin_job_gpu(snakemake: Any) -> Pinned:
    """:func:`pin_gpus` for a Snakemake job: as many GPUs as its ``gpu`` resource. Call it
    first in a rule script, before anything imports torch."""
    resources = getattr(snakemake, "resources", {}) or {}
    try:
        count = int(resources.get("gpu", 0) or 0)
    except (TypeError, ValueError):
        count = 0
    rule = getattr(snakemake, "rule", "") or ""
    wildcards = getattr(snakemake, "wildcards", None)
    named = dict(wildcards.items()) if hasattr(wildcards, "items") else {}
    job = rule + "".join(f" {k}={v}" for k, v in named.items())
    return pin_gpus(count, job=job)


def pinned_messages() -> list[str]:
    """What pinning said, for the stage's log (it ran before logging was set up)."""
    return list(PINNED.messages) if PINNED is not None else []
