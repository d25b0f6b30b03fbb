"""A model's parameters held as one flat tensor per optimizer group (for DeepSpeed ZeRO 0-2).

Why: DeepSpeed's ZeRO-1/2 gradient hooks, gradient norm and weight re-pointing are Python loops over
every parameter tensor, a handful of small device ops each. A CLIP ViT-B has 302 parameter tensors:
counted on CPU, ZeRO-2 dispatched 19,286 aten ops per step where the bare PyTorch loop dispatched
12,024, and on a GPU each op is host time the device waits for. Flattened, DeepSpeed sees two
parameters (decay, no decay) and its loops run twice per step. FSDP's ``FlatParameter`` is the
same idea.

How: :class:`FlatParameters` owns ``flat_<group>`` parameters and keeps the wrapped model as a
submodule whose parameters were removed. Each forward splits the flat tensors into views and sets
them as plain attributes of the model's modules, so the model's code runs unchanged; autograd
gathers the views' gradients into each flat gradient with one ``cat`` (split's backward).
The views stay set after the forward: gradient checkpointing recomputes blocks in backward from them,
and evaluation calls ``encode_image``/``encode_text`` on :meth:`FlatParameters.unflattened`.

Alignment: every slot starts on a multiple of :data:`ALIGN_ELEMENTS` elements (256 bytes in bf16,
the caching allocator's granularity), with zero padding between slots. Without it, a 1-element slot
(``logit_scale``) at the head of a group put every bias after it 2 bytes off a 16-byte boundary, and
on an H200 cuBLASLt's GEMM-with-bias then fell back to an sm75 kernel for all 288 ``addmm`` calls of a
ViT-B/16 step (1.76 ms a call instead of 0.23 ms; 271 vs 121 ms per step). The padding gets zero
gradients (split's backward fills unused parts with zeros), so AdamW, weight decay, gradient norms
and the clamp leave it zero, and :meth:`FlatParameters.unflatten` never reads it.

Not for ZeRO-3, which partitions and gathers each parameter on its own: one flat parameter would be
gathered whole.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

ALIGN_ELEMENTS = 128
"""Slots start on multiples of this many elements: 256 bytes in bf16/fp16, 512 in fp32."""


def align_up(n: int, to: int = ALIGN_ELEMENTS) -> int:
    """``n`` rounded up to a multiple of ``to``."""
    return -(-n // to) * to


@dataclass(frozen=True)
class Slot:
    """Where one original parameter lives: its group's flat tensor, offset and shape."""

    name: str
    group: str
    offset: int
    shape: torch.Size

    @property
    def numel(self) -> int:
        return self.shape.numel()


class FlatParameters(nn.Module):
    """``module`` with its parameters stored as one flat ``nn.Parameter`` per group.

    ``groups`` is ``[(group_name, [parameter names]), ...]``; every trainable parameter of ``module``
    must be in exactly one group. The parameters are ``flat_<group_name>``; buffers stay
    ``module.<name>``. :meth:`unflatten` maps a state dict back to the original names. Each slot
    starts at a multiple of ``align`` elements (module docstring: why).
    """

    def __init__(
        self, module: nn.Module, groups: Sequence[tuple[str, Sequence[str]]], align: int = ALIGN_ELEMENTS
    ):
        super().__init__()
        params = dict(module.named_parameters())
        named = [n for _, names in groups for n in names]
        missing = sorted(set(params) - set(named))
        unknown = sorted(set(named) - set(params))
        if missing or unknown or len(named) != len(set(named)):
            raise ValueError(
                f"flat parameter groups must name each parameter once: missing {missing}, unknown {unknown}"
            )
        self._key_order = list(module.state_dict(keep_vars=True).keys())
        groups = [(g, names) for g, names in groups if names]  # an empty group gets no parameter
        self.align = align
        self.slots: list[Slot] = []
        for group, names in groups:
            offset = 0
            for name in names:
                self.slots.append(Slot(name, group, offset, params[name].shape))
                offset = align_up(offset + params[name].numel(), align)
            first = params[names[0]]
            flat = torch.zeros(offset, dtype=first.dtype, device=first.device)
            with torch.no_grad():
                for slot in self.slots[-len(names) :]:
                    flat.narrow(0, slot.offset, slot.numel).copy_(params[slot.name].detach().reshape(-1))
            self.register_parameter(f"flat_{group}", nn.Parameter(flat))
        self._group_slots = {g: [s for s in self.slots if s.group == g] for g, _ in groups}
        # split sizes per group: each slot, then its padding where it has any (a part no view uses;
        # no empty parts, which would be ops per step for nothing), and which parts are the slots
        self._split: dict[str, tuple[list[int], list[int]]] = {}
        for group, slots in self._group_slots.items():
            ends = [s.offset for s in slots[1:]] + [self.flat(group).numel()]
            sizes: list[int] = []
            parts: list[int] = []
            for s, end in zip(slots, ends, strict=True):
                parts.append(len(sizes))
                sizes.append(s.numel)
                if end > s.offset + s.numel:
                    sizes.append(end - s.offset - s.numel)
            self._split[group] = (sizes, parts)
        self._slot_by_name = {s.name: s for s in self.slots}
        self._owners: list[tuple[nn.Module, str]] = []
        for slot in self.slots:
            owner_name, _, leaf = slot.name.rpartition(".")
            owner = module.get_submodule(owner_name)
            del owner._parameters[leaf]
            self._owners.append((owner, leaf))
        self.module = module
        with torch.no_grad():
            self._set_views()

    @property
    def config(self) -> Any:
        """The wrapped model's architecture config (``CLIP.config``)."""
        return self.module.config

    def flat(self, group: str) -> nn.Parameter:
        """The flat parameter of ``group``."""
        return getattr(self, f"flat_{group}")

    @property
    def groups(self) -> list[str]:
        """The group names, in order (groups without parameters have none)."""
        return list(self._group_slots)

    def slot(self, name: str) -> Slot:
        """The slot of the original parameter ``name`` (``KeyError`` if it has none)."""
        return self._slot_by_name[name]

    def _set_views(self) -> None:
        # Straight into each module's __dict__: plain tensors, not Parameters, and without
        # nn.Module.__setattr__'s checks (302 of them per forward on a ViT-B).
        # One split per group (its backward is one cat, with zeros for the padding parts), not a
        # narrow per slot (whose backward would materialise a full-size gradient per slot).
        i = 0
        for group, slots in self._group_slots.items():
            sizes, slot_parts = self._split[group]
            pieces = self.flat(group).split(sizes)
            for slot, k in zip(slots, slot_parts, strict=True):
                part = pieces[k]
                owner, leaf = self._owners[i]
                owner.__dict__[leaf] = part.view(slot.shape)
                i += 1

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self._set_views()  # fresh views: this forward's autograd graph leads back to the flat tensors
        return self.module(*args, **kwargs)

    def unflattened(self) -> nn.Module:
        """The wrapped model, its parameters set (without autograd) to the current flat values: for
        calls other than ``forward``, as zero-shot evaluation's ``encode_image``/``encode_text``."""
        with torch.no_grad():
            self._set_views()
        return self.module

    def compile(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Compile the wrapped model; the split into views stays eager, outside the graph, so the
        compiled graph takes the views as inputs and its attribute stores are not traced."""
        self.module.compile(*args, **kwargs)

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> FlatParameters:
        # .to()/.bfloat16()/.cuda() replace the flat tensors; the attribute views must follow them
        # (stale views would also keep the old storage alive).
        super()._apply(fn, recurse)
        with torch.no_grad():
            self._set_views()
        return self

    def unflatten(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A state dict of this wrapper (``flat_<group>``, ``module.<buffer>``) under the wrapped model's
        own names, in its own key order."""
        out: dict[str, torch.Tensor] = {}
        for slot in self.slots:
            flat = state[f"flat_{slot.group}"]
            out[slot.name] = flat.narrow(0, slot.offset, slot.numel).view(slot.shape)
        for key, value in state.items():
            if key.startswith("module."):
                out[key[len("module.") :]] = value
        return {k: out[k] for k in self._key_order if k in out}


def unwrap(module: nn.Module) -> nn.Module:
    """The model itself, ready for calls other than ``forward``: a flat wrapper's current weights set
    on its wrapped model, or ``module`` unchanged."""
    return module.unflattened() if isinstance(module, FlatParameters) else module
