r"""Activation memory: the Korthikanti et al. formula, and meters that measure bytes on CPU.

* :func:`activation_bytes_per_layer`: bytes one transformer layer keeps for backward,
  as Korthikanti et al. (2022), "Reducing Activation Recomputation in Large Transformer
  Models", section 4 and table 2, state it (``sbh(34 + 5as/h)`` and its variants).
* :class:`SavedTensorMeter`: bytes of the distinct storages autograd saves for backward,
  metered with :func:`torch.autograd.graph.saved_tensors_hooks`.
* :class:`LivePeakMeter`: current and peak bytes of the tensor storages created inside a
  ``with`` block (forward and backward), from a
  :class:`~torch.utils._python_dispatch.TorchDispatchMode` and weak references to storages.
  ``torch.distributed._tools.mem_tracker.MemTracker`` measures the same on CPU (it is a
  private module); the tests check the two agree.
* Sequence packing: :func:`pack_sequences` (first-fit decreasing), :func:`segment_ids`,
  :func:`block_diagonal_causal_mask`, :func:`packed_position_ids`.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from nemo_rl_theory._validation import require_int, require_number

__all__ = [
    "LivePeakMeter",
    "SavedTensorMeter",
    "activation_bytes_per_layer",
    "block_diagonal_causal_mask",
    "pack_sequences",
    "packed_position_ids",
    "segment_ids",
]

_RECOMPUTE = ("none", "selective", "full")


def activation_bytes_per_layer(
    seq_len: int,
    micro_batch: int,
    hidden: int,
    num_heads: int,
    *,
    tensor_parallel: int = 1,
    sequence_parallel: bool = False,
    recompute: str = "none",
    bytes_per_value: float = 2,
    mask_bytes: float = 1,
) -> float:
    r"""Bytes of activations one transformer layer stores for backward (per tensor-parallel rank).

    Korthikanti et al. (2022), section 4.1 and table 2, with :math:`s` = ``seq_len``,
    :math:`b` = ``micro_batch``, :math:`h` = ``hidden``, :math:`a` = ``num_heads``,
    :math:`t` = ``tensor_parallel``, for 2-byte activations and 1-byte dropout masks:

    .. math::

        \begin{aligned}
        \text{none}&: sbh\,(34 + 5as/h)\\
        \text{TP}&: sbh\,(10 + \tfrac{24}{t}
          + \tfrac{5as}{ht})\\
        \text{TP+SP}&: sbh\,(\tfrac{34}{t}
          + \tfrac{5as}{ht})\\
        \text{TP, selective}&: sbh\,(10 + \tfrac{24}{t})\\
        \text{TP+SP, selective}&: sbh\,\tfrac{34}{t}\\
        \text{full}&: 2sbh
        \end{aligned}

    The constants count stored tensors: per layer 16 values of size :math:`sbh`
    (LayerNorm inputs 2, QKV input 1, Q K V 3, projection input 1, MLP input 1,
    GeLU input 4, second-linear input 4) at 2 bytes, two :math:`sbh` dropout masks at
    1 byte, and :math:`as^2b`-sized softmax output and dropout output (2 bytes) and
    dropout mask (1 byte). With :math:`p` = ``bytes_per_value`` and
    :math:`m` = ``mask_bytes`` the same accounting reads

    .. math::

        \begin{aligned}
        &sbh\,(16p + 2m)\\
        &+ as^2b\,(2p + m),
        \end{aligned}

    which is :math:`sbh(34 + 5as/h)` at :math:`p = 2, m = 1`. Under tensor parallelism
    the LayerNorm inputs, the QKV and MLP inputs and the two masks (:math:`4p + 2m`) are
    replicated and the rest is divided by :math:`t`; sequence parallelism divides the
    replicated part by :math:`t` too. Selective recomputation drops the :math:`as^2b`
    term (softmax, its dropout and the attention over values are recomputed). Full
    recomputation keeps only the layer input, :math:`p\,sbh` (the paper's :math:`2sbh`);
    with sequence parallelism that input is sequence-sharded, so :math:`p\,sbh/t` (the
    paper's table gives the :math:`t`-free :math:`2sbh`; the division is this library's
    reading of sequence parallelism, which a simulated rank's saved bytes confirm in the
    tests). Small per-token statistics (LayerNorm mean and
    inverse standard deviation) and parameters are not counted, as in the paper.

    Args:
        seq_len, micro_batch, hidden, num_heads: positive ints; ``hidden`` divisible by
            ``num_heads``, ``num_heads`` by ``tensor_parallel``.
        tensor_parallel: tensor-parallel size :math:`t` (1 = none).
        sequence_parallel: shard the replicated part along the sequence (needs ``t > 1``
            to change anything).
        recompute: ``"none"``, ``"selective"`` or ``"full"``.
        bytes_per_value: bytes of a stored activation value (2 for bf16/fp16, 4 for fp32).
        mask_bytes: bytes of a stored dropout-mask entry (1 for a bool/uint8 mask).

    Returns:
        Bytes (a float; it is an integer whenever the inputs make it one).
    """
    s = require_int("seq_len", seq_len)
    b = require_int("micro_batch", micro_batch)
    h = require_int("hidden", hidden)
    a = require_int("num_heads", num_heads)
    t = require_int("tensor_parallel", tensor_parallel)
    if not isinstance(sequence_parallel, bool):
        raise TypeError(f"sequence_parallel must be a bool, got {type(sequence_parallel).__name__}")
    if recompute not in _RECOMPUTE:
        raise ValueError(f"recompute must be one of {_RECOMPUTE}, got {recompute!r}")
    p = require_number("bytes_per_value", bytes_per_value, low=0.0, low_inclusive=False)
    m = require_number("mask_bytes", mask_bytes, low=0.0, low_inclusive=False)
    if h % a:
        raise ValueError(f"hidden ({h}) must be divisible by num_heads ({a})")
    if a % t:
        raise ValueError(f"num_heads ({a}) must be divisible by tensor_parallel ({t})")

    sbh = float(s * b * h)
    if recompute == "full":
        return p * sbh / (t if sequence_parallel else 1)
    replicated = (4 * p + 2 * m) * sbh
    split = 12 * p * sbh
    attention = (2 * p + m) * a * s * s * b
    total = (replicated / t if sequence_parallel else replicated) + split / t
    if recompute == "none":
        total += attention / t
    return total


def _storage_key(t: Tensor) -> tuple[int, int]:
    st = t.untyped_storage()
    return st.data_ptr(), st.nbytes()


class SavedTensorMeter:
    r"""Bytes of the distinct storages autograd saves for backward inside a ``with`` block.

    A :func:`torch.autograd.graph.saved_tensors_hooks` pack hook sees every tensor an
    operation saves; the meter records its storage and returns the tensor unchanged, so
    memory behaviour is not altered. Two saved views of one storage (``q`` and ``k`` sliced
    from one QKV output) count once, with the storage's full size. A storage is recognised
    by its data pointer while it is alive (a weak reference forgets it when it is freed), so
    a later storage that reuses the address counts again.

    Args:
        exclude: tensors whose storages are not activations (typically
            ``model.parameters()``); saved references to them are skipped.

    Attributes:
        bytes: sum of the distinct storages' sizes (bytes).
        storages: one ``(nbytes, dtype, shape of the first saved view)`` per distinct storage.
        saved: number of pack-hook calls (tensors saved, with repeats).
    """

    def __init__(self, exclude: Iterable[Tensor] = ()) -> None:
        self._exclude = {_storage_key(p) for p in exclude}
        self.storages: list[tuple[int, torch.dtype, tuple[int, ...]]] = []
        self.saved = 0
        self._alive: set[tuple[int, int]] = set()
        self._hooks: Any = None

    @property
    def bytes(self) -> int:
        return sum(nbytes for nbytes, _, _ in self.storages)

    def _pack(self, t: Tensor) -> Tensor:
        self.saved += 1
        key = _storage_key(t)
        if key not in self._exclude and key not in self._alive:
            self._alive.add(key)
            self.storages.append((key[1], t.dtype, tuple(t.shape)))
            weakref.finalize(t.untyped_storage(), self._alive.discard, key)
        return t

    def __enter__(self) -> SavedTensorMeter:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)


class LivePeakMeter(TorchDispatchMode):
    r"""Current and peak bytes of the tensor storages created inside a ``with`` block.

    Every ATen call (forward and, when ``backward()`` runs inside the block, backward) passes
    through ``__torch_dispatch__``; a storage that an output holds and that the call's
    inputs did not is new: its ``nbytes`` are added to ``current`` and a weak reference
    subtracts them when the storage is freed. ``peak`` is the maximum of ``current``.

    What is counted: storages allocated inside the block, including returned outputs and
    gradients that are still alive. Not counted: tensors that existed before the block
    (inputs, parameters), views, and in-place results (they create no storage). Byte counts
    are exact ``nbytes`` (no allocator rounding), so they can be compared with formulas.

    Attributes:
        current: bytes of tracked storages alive now.
        peak: the largest ``current`` seen.
        allocated: total bytes of all storages created (freed or not).
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self.allocated = 0
        self._live: dict[int, int] = {}

    def _release(self, ptr: int, nbytes: int) -> None:
        if self._live.get(ptr) == nbytes:
            del self._live[ptr]
            self.current -= nbytes

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        seen = {
            x.untyped_storage().data_ptr()
            for x in tree_flatten((args, kwargs))[0]
            if isinstance(x, Tensor) and x.layout == torch.strided
        }
        for x in tree_flatten(out)[0]:
            if not isinstance(x, Tensor) or x.layout != torch.strided:
                continue
            st = x.untyped_storage()
            ptr, nbytes = st.data_ptr(), st.nbytes()
            if nbytes == 0 or ptr in seen or ptr in self._live:
                continue
            self._live[ptr] = nbytes
            self.current += nbytes
            self.allocated += nbytes
            self.peak = max(self.peak, self.current)
            weakref.finalize(st, self._release, ptr, nbytes)
        return out


# --------------------------------------------------------------------------- packing


def _lengths(name: str, lengths: object) -> list[int]:
    if isinstance(lengths, Tensor):
        if lengths.dim() != 1 or lengths.is_floating_point() or lengths.dtype == torch.bool:
            raise TypeError(f"{name} must be a 1-D integer tensor or a sequence of ints")
        lengths = lengths.tolist()
    if not isinstance(lengths, Sequence) or isinstance(lengths, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of ints, got {type(lengths).__name__}")
    if len(lengths) == 0:
        raise ValueError(f"{name} must not be empty")
    return [require_int(f"{name}[{i}]", n) for i, n in enumerate(lengths)]


def pack_sequences(lengths: Sequence[int] | Tensor, capacity: int) -> list[list[int]]:
    r"""Group sequences into rows of at most ``capacity`` tokens (first-fit decreasing).

    Sequences are taken longest first; each goes into the first row with room, or opens a
    new row. First-fit decreasing uses at most :math:`\tfrac{11}{9}\,\mathrm{OPT} + 1` rows.

    Args:
        lengths: token count of each sequence (ints >= 1).
        capacity: tokens per packed row; must be >= ``max(lengths)``.

    Returns:
        Rows, each a list of sequence indices in the order they are laid out.
    """
    ls = _lengths("lengths", lengths)
    cap = require_int("capacity", capacity)
    if max(ls) > cap:
        raise ValueError(f"capacity ({cap}) must be >= the longest sequence ({max(ls)})")
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(ls)), key=lambda j: (-ls[j], j)):
        for r, free in enumerate(room):
            if ls[i] <= free:
                rows[r].append(i)
                room[r] -= ls[i]
                break
        else:
            rows.append([i])
            room.append(cap - ls[i])
    return rows


def segment_ids(lengths: Sequence[int] | Tensor) -> Tensor:
    """``Tensor[N]`` (int64, ``N = sum(lengths)``): the index of the sequence each packed token belongs to."""
    ls = _lengths("lengths", lengths)
    return torch.repeat_interleave(torch.arange(len(ls)), torch.tensor(ls))


def packed_position_ids(lengths: Sequence[int] | Tensor) -> Tensor:
    """``Tensor[N]`` (int64): each token's position inside its own sequence (restarts at 0)."""
    ls = _lengths("lengths", lengths)
    return torch.cat([torch.arange(n) for n in ls])


def block_diagonal_causal_mask(lengths: Sequence[int] | Tensor) -> Tensor:
    r"""``Tensor[N, N]`` bool: token :math:`i` may attend to :math:`j` iff same sequence and :math:`j \le i`."""
    seg = segment_ids(lengths)
    n = seg.numel()
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    return causal & (seg[:, None] == seg[None, :])
