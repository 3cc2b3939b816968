"""ILA: implicit intermediate-latent alignment (In-N-Out, stage 4).

In every self-attention layer (``attn1``) of the inpainting UNet, at every denoising
step, a target view attends both to itself and to the base view::

    out_i = lambda * SA(Q_i, K_i, V_i) + (1 - lambda) * SA(Q_i, K_p, V_p)

with ``K_p, V_p`` the base view's keys and values of the same layer and step.

Mechanics: :class:`ILAAttnProcessor` (an ``AttnProcessor2_0`` subclass) is installed
on every ``attn1`` layer with ``unet.set_attn_processor``; cross-attention (``attn2``)
keeps its processor. One :class:`ILAController` holds the mode and the per-layer store:

``OFF``     plain self-attention (the parent class's code).
``RECORD``  the UNet runs the base view (batch ``[uncond, cond]`` with classifier-free
            guidance, ``[base]`` without): every layer stores its K and V for this step.
``SHARE``   the UNet runs a batch of targets ordered as diffusers orders a CFG batch,
            ``[uncond targets..., cond targets...]``: the first half attends to the
            base's *unconditional* K/V, the second half to its *conditional* K/V (in
            general, row ``j`` of a batch of ``B`` rows takes base row ``j // (B / B_p)``
            of the ``B_p`` recorded rows).

The store holds one step's worth (every layer's K/V for the base batch) and is emptied
by :meth:`ILAController.clear` (the denoising loop does so after the last target batch
of each step) and at the start of every RECORD. ``lambda = 1`` skips the base attention
(plain inpainting); ``lambda = 0`` skips the view's own.

Mixing before the output projection is exact: ``to_out`` is affine and the weights sum
to one, so ``to_out(l a + (1 - l) b) = l to_out(a) + (1 - l) to_out(b)``.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

OFF, RECORD, SHARE = "off", "record", "share"


class ILAController:
    """The mode of every installed :class:`ILAAttnProcessor` and the base's K/V store."""

    def __init__(self, ila_lambda: float = 0.2):
        self.mode = OFF
        self.ila_lambda = float(ila_lambda)
        self.store: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.calls = {OFF: 0, RECORD: 0, SHARE: 0}  # per-layer processor calls, for tests and logs
        self.peak_bytes = 0  # largest store held (one step, every layer), for memory reports
        # inference stores the base's K/V detached; training keeps their graph so that the loss
        # of a target teaches the base's keys and values to carry what the target needs
        self.keep_graph = False
        # training only: a list makes SHARE mode compute the attention to the base explicitly and
        # append its probabilities (B, heads, L_target, L_base) per layer, graph kept, so that a loss
        # can say where it should land (innout.training.counterparts); None: the fused kernel
        self.base_attention: list[torch.Tensor] | None = None

    def record(self) -> None:
        """Next UNet call runs the base view: store every layer's K/V (replacing the last step's)."""
        self.clear()
        self.mode = RECORD

    def share(self, ila_lambda: float | None = None) -> None:
        """Next UNet calls run target batches: mix in the stored base K/V."""
        if ila_lambda is not None:
            self.ila_lambda = float(ila_lambda)
        if not 0.0 <= self.ila_lambda <= 1.0:
            raise ValueError(f"ila_lambda must be in [0, 1], got {self.ila_lambda}")
        self.mode = SHARE

    def off(self) -> None:
        self.mode = OFF

    def clear(self) -> None:
        """Free this step's base K/V."""
        self.peak_bytes = max(self.peak_bytes, self.stored_bytes())
        self.store.clear()

    def attend_base(self, layer: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    attention_mask: torch.Tensor | None) -> torch.Tensor:
        """``SA(Q_i, K_p, V_p)`` of layer ``layer`` (``(B, heads, L, D)`` each): the fused kernel, or the
        explicit softmax when :attr:`base_attention` collects the probabilities. A subclass may say where
        the attention lands instead (``innout.training.counterparts.CounterpartAttention``: a diagnostic)."""
        if self.base_attention is None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
        return _attend_keeping_probabilities(q, k, v, attention_mask, self.base_attention)

    def stored_bytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.store.values())


class ILAAttnProcessor(AttnProcessor2_0):
    """Self-attention with the base view's keys and values mixed in (see module doc)."""

    def __init__(self, controller: ILAController, name: str):
        super().__init__()
        self.controller = controller
        self.name = name

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:
        ctl = self.controller
        ctl.calls[ctl.mode] += 1
        if ctl.mode == OFF or encoder_hidden_states is not None:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)

        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        spatial = hidden_states.ndim == 4
        if spatial:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.reshape(b, c, h * w).transpose(1, 2)
        batch, tokens, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, tokens, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        heads = attn.heads
        head_dim = k.shape[-1] // heads

        def split(x: torch.Tensor) -> torch.Tensor:  # (B, L, H*D) -> (B, H, L, D)
            return x.view(batch, -1, heads, head_dim).transpose(1, 2)

        q, k, v = split(q), split(k), split(v)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)

        if ctl.mode == RECORD:
            ctl.store[self.name] = (k, v) if ctl.keep_graph else (k.detach(), v.detach())
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
        elif ctl.mode == SHARE:
            lam = ctl.ila_lambda
            if self.name not in ctl.store:
                raise RuntimeError(f"ILA: no base keys/values recorded for {self.name} at this step "
                                   "(run the base view in RECORD mode first)")
            k_p, v_p = ctl.store[self.name]
            if k_p.shape[2] != k.shape[2]:
                raise RuntimeError(f"ILA: base and target token counts differ at {self.name} "
                                   f"({k_p.shape[2]} vs {k.shape[2]}): views must share one resolution")
            rows = k_p.shape[0]
            if batch % rows:
                raise RuntimeError(f"ILA: a target batch of {batch} rows cannot be split into the base's {rows} halves")
            out = None
            if lam > 0.0:
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
            if lam < 1.0:
                # rows [0, n) take base row 0 (uncond), rows [n, 2n) base row 1 (cond)
                per = batch // rows
                k_b = k_p.to(q.dtype).repeat_interleave(per, dim=0)
                v_b = v_p.to(q.dtype).repeat_interleave(per, dim=0)
                shared = ctl.attend_base(self.name, q, k_b, v_b, attention_mask)
                out = shared if out is None else lam * out + (1.0 - lam) * shared
        else:  # pragma: no cover - guarded above
            raise RuntimeError(f"unknown ILA mode {ctl.mode!r}")

        out = out.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(q.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if spatial:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def attention_probabilities(q: torch.Tensor, k: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The softmax weights ``scaled_dot_product_attention`` uses (at its default scale,
    ``q``'s width ** -0.5): ``(B, heads, L_q, L_k)``."""
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    if attention_mask is not None:
        scores = scores + attention_mask
    return torch.softmax(scores, dim=-1)


def _attend_keeping_probabilities(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention_mask: torch.Tensor | None,
                                  kept: list) -> torch.Tensor:
    """What ``scaled_dot_product_attention`` computes, with the probabilities appended to ``kept``."""
    probabilities = attention_probabilities(q, k, attention_mask)
    kept.append(probabilities)
    return probabilities @ v


def is_self_attention(name: str) -> bool:
    """Processor names of the UNet's self-attention layers end with ``attn1.processor``."""
    return name.endswith("attn1.processor")


def install_ila(unet, controller: ILAController) -> dict:
    """Put an :class:`ILAAttnProcessor` on every ``attn1`` layer, keep the others.
    Returns the original processors (for :func:`uninstall_ila`)."""
    original = dict(unet.attn_processors)
    processors = {name: (ILAAttnProcessor(controller, name) if is_self_attention(name) else proc)
                  for name, proc in original.items()}
    if not any(is_self_attention(n) for n in processors):
        raise ValueError("ILA: this UNet has no attn1 (self-attention) layers")
    unet.set_attn_processor(dict(processors))  # set_attn_processor empties the dict it is given
    return original


def uninstall_ila(unet, original: dict) -> None:
    unet.set_attn_processor(dict(original))


@contextlib.contextmanager
def ila_installed(unet, controller: ILAController) -> Iterator[ILAController]:
    """``with ila_installed(pipe.unet, ctl): ...``: ILA processors inside, originals after."""
    original = install_ila(unet, controller)
    try:
        yield controller
    finally:
        uninstall_ila(unet, original)
