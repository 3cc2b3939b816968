"""A GPU that is not there, for checking device placement on a CPU-only machine.

Code that runs on a GPU must keep every tensor of an operation on one device: a batch drawn
on the CPU and fed to a model on the GPU stops a CUDA run at once, but passes on a CPU,
where every test runs. :func:`virtual_gpu` makes ``cuda`` a label: inside it, a tensor moved
to ``cuda`` (``.to``, ``device=`` of a factory, ``Module.to``) stays in CPU memory but is
marked, reports ``device`` ``cuda:0``, and an operation that mixes marked and unmarked
tensors raises :class:`DeviceMismatch` the way CUDA would. The data are real, so
``float()``, ``.item()`` and ``.tolist()`` work as on a GPU; ``.numpy()`` of a marked
tensor raises, as on a GPU.

What CUDA allows and this allows too: a 0-dimensional CPU tensor beside GPU tensors (a
scalar), a GPU tensor indexed with CPU indices, a CPU tensor indexed with a one-integer GPU
tensor (read as a number), copies between devices (``copy_``, ``t[:, 0] = other``). The
gradients autograd makes are marked when read (``.grad`` of a marked tensor), so optimisers
run. :func:`pretend_cuda` gives CUDA's random-number state a placeholder, so that
``torch.random.fork_rng(devices=[0])`` (models seeded on the GPU, ``refine.reset_fields``)
runs; draws on the virtual GPU come from the CPU's generator. What it cannot see: kernels that
exist on one device only (fp16 convolutions run on a CPU here), autocast (off without CUDA),
what a GPU's random draws are, speed, memory.
"""

from __future__ import annotations

import contextlib
import sys

import torch
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

CUDA = torch.device("cuda", 0)
MARK = "_virtual_gpu"


class DeviceMismatch(RuntimeError):
    pass


def on_gpu(t) -> bool:
    return isinstance(t, torch.Tensor) and getattr(t, MARK, False)


def _mark(tree):
    for leaf in pytree.tree_leaves(tree):
        if isinstance(leaf, torch.Tensor):
            setattr(leaf, MARK, True)
    return tree


def _is_cuda(device) -> bool:
    if device is None:
        return False
    if isinstance(device, int):  # .to(0) / device=0
        return True
    return torch.device(device).type == "cuda"


def _target_device(func, args, kwargs):
    """(device asked for, args, kwargs with it replaced by the CPU) of a ``.to`` / factory call."""
    if "device" in kwargs:
        device = kwargs["device"]
        return device, args, {**kwargs, "device": "cpu" if _is_cuda(device) else device}
    if func is torch.Tensor.to:
        for i, a in enumerate(args[1:], 1):
            if isinstance(a, (str, torch.device, int)) and not isinstance(a, bool):
                replaced = list(args)
                replaced[i] = "cpu" if _is_cuda(a) else a
                return a, tuple(replaced), kwargs
            if isinstance(a, torch.Tensor):  # .to(other): other's device and dtype
                return (CUDA if on_gpu(a) else "cpu"), args[:i] + (a.dtype,) + args[i + 1:], kwargs
    return None, args, kwargs


def _with_mark(out, inputs, gpu: bool):
    """``out`` marked ``gpu``; a copy when it is one of ``inputs`` with the other mark (a
    ``.to()`` that had nothing to do returns its input, which must keep its own device)."""
    if not isinstance(out, torch.Tensor):
        return out
    if on_gpu(out) != gpu and any(out is t for t in inputs):
        out = out.clone()
    setattr(out, MARK, gpu)
    return out


def _has_tensor(index) -> bool:
    return any(isinstance(leaf, torch.Tensor) for leaf in pytree.tree_leaves(index))


COPIES = {torch.Tensor.copy_}


def _getitem(func, tensor: torch.Tensor, index):
    """``tensor[index]``: a GPU tensor takes CPU or GPU indices; a CPU tensor takes CPU
    indices, and a GPU index only when it holds one integer (read as a number, as diffusers'
    schedulers index their CPU tables with a GPU timestep); the result is on the tensor's device."""
    if not on_gpu(tensor):
        wrong = [t for t in pytree.tree_leaves(index) if on_gpu(t) and t.dim() > 0]
        if wrong:
            raise DeviceMismatch(f"indexing a cpu tensor with cuda:0 indices of shape {tuple(wrong[0].shape)}")
    out = func(tensor, index)
    setattr(out, MARK, on_gpu(tensor))
    return out


class _VirtualGpu(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func == torch.Tensor.device.__get__:  # (a new method-wrapper at each access: ==, not is)
            return CUDA if on_gpu(args[0]) else func(*args)
        if func == torch.Tensor.is_cuda.__get__:
            return on_gpu(args[0])
        if func is torch.Tensor.numpy and on_gpu(args[0]):
            raise DeviceMismatch("can't convert a cuda tensor to numpy: .cpu() it first")
        if func is torch.Tensor.cpu:
            return _with_mark(func(*args, **kwargs), args, False)
        if func is torch.Tensor.cuda:
            return _with_mark(args[0], args, True)
        device, args, kwargs = _target_device(func, args, kwargs)
        tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        marked = [t for t in tensors if on_gpu(t)]
        if device is not None:
            return _with_mark(func(*args, **kwargs), tensors, _is_cuda(device))
        if func is torch.Tensor.__setitem__ and not _has_tensor(args[1]):
            return func(*args, **kwargs)  # t[slices] = value is a copy, allowed between devices
        if func is torch.Tensor.__getitem__:
            return _getitem(func, args[0], args[1])
        if marked and func not in COPIES:
            first = args[0] if args else None
            if func is torch.Tensor.__setitem__ and on_gpu(first):
                pass  # a GPU tensor indexed with CPU indices: allowed
            else:
                loose = [t for t in tensors if not on_gpu(t) and t.dim() > 0]
                if loose:
                    raise DeviceMismatch(
                        f"{getattr(func, '__name__', func)}: expected all tensors on one device, found cuda:0 and cpu "
                        f"(a cpu tensor of shape {tuple(loose[0].shape)})")
        out = func(*args, **kwargs)
        return _mark(out) if marked and func not in COPIES else out


def _state(module: torch.nn.Module) -> list[torch.Tensor]:
    """What ``Module.to`` moves: parameters, their gradients, buffers."""
    params = list(module.parameters())
    return [*params, *(p.grad for p in params if p.grad is not None), *module.buffers()]


def _module_to(original):
    def to(self, *args, **kwargs):
        device = kwargs.get("device", next((a for a in args if isinstance(a, (str, torch.device, int))
                                            and not isinstance(a, bool)), None))
        if device is None:
            return original(self, *args, **kwargs)
        args = tuple("cpu" if a is device else a for a in args)
        kwargs = {**kwargs, **({"device": "cpu"} if "device" in kwargs else {})}
        for t in _state(self):
            setattr(t, MARK, False)  # the move itself is a no-op on the CPU: relabel after it
        result = original(self, *args, **kwargs)
        for t in _state(self):
            setattr(t, MARK, _is_cuda(device))
        return result
    return to


def pretend_cuda(monkeypatch) -> None:
    """Make the project's device resolution give ``cuda:0`` for ``cuda``/``cuda:N``/``auto``
    (``innout.devices.resolve_device`` and every module that imported it by name),
    ``torch.cuda.get_device_name`` answer ``virtual`` and CUDA's RNG state a placeholder (module
    doc): with :func:`virtual_gpu`, code asked to run on a GPU takes its GPU paths here."""
    import innout.devices as devices

    real = devices.resolve_device

    def resolve(device="auto"):
        name = str(device or "auto")
        return torch.device("cuda", 0) if name == "auto" or name.startswith("cuda") else real(device)

    for module in list(sys.modules.values()):
        if module is not None and getattr(module, "resolve_device", None) is real:
            monkeypatch.setattr(module, "resolve_device", resolve)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args, **kwargs: "virtual")
    # fork_rng(devices=[0]) saves and restores CUDA's generator state: a placeholder state that
    # round-trips (the real calls need a driver; the virtual GPU draws from the CPU's generator)
    held = {"state": torch.zeros(16, dtype=torch.uint8)}
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": held["state"].clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda new_state, device="cuda": held.update(state=new_state.clone()))
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # (what a CUDA run sets; restored after)


@contextlib.contextmanager
def virtual_gpu():
    """Inside: ``cuda`` is a label on CPU tensors (module doc)."""
    original = torch.nn.Module.to
    torch.nn.Module.to = _module_to(original)
    try:
        with _VirtualGpu():
            yield
    finally:
        torch.nn.Module.to = original
