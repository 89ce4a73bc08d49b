"""What a sync sends: the residual stream's all-reduces as computed (float32), in bfloat16, or in
int8 with a float32 scale per block of `block` channels.

A compressed all-reduce must give every rank, and the simulated and distributed modes, the same
bits, so its sum is taken in one fixed order: each rank's part is quantized, the parts are
dequantized and added in rank order in float32 (float64 in float64 checks), and where a sum is
sent on it is quantized again. Two algorithms, chosen by tp alone (so prefill and decode compute
one function):

    tp = 2   one-shot: all-gather the quantized parts, sum locally. One collective; each rank
             receives (n - 1) Q bytes, which at n = 2 equals a ring all-reduce of Q bytes.
    tp > 2   two-shot: reduce-scatter as an all-to-all of quantized chunks (rank j sums chunk j),
             requantize, all-gather the sums. 2 (n - 1) / n Q bytes per rank, a ring all-reduce's
             volume at Q bytes, where one-shot would send (n - 1) Q.

Q is the quantized buffer: 2 bytes an element in bfloat16, 1 + 4 / block in int8 (with the
default block of 32, 28% of float32: at most a third). Blocks run along the channels of one token
(`block` must divide n_embd), so a scale never mixes tokens; the two-shot chunks are whole
blocks, and the last chunk is padded with zero blocks when tp does not divide their number (the
padding is sent and counted). Gradients pass through the quantizer unchanged (straight-through),
and the backward all-reduce at a region's start is compressed the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..errors import ConfigError

SYNC_DTYPES = ("float32", "bfloat16", "int8")
DEFAULT_BLOCK = 32
_SCALE_BYTES = 4  # float32 scales


@dataclass(frozen=True)
class SyncWire:
    dtype: str = "float32"
    block: int = DEFAULT_BLOCK  # int8: channels per scale

    def __post_init__(self) -> None:
        if self.dtype not in SYNC_DTYPES:
            raise ConfigError(f"sync_dtype={self.dtype!r} is invalid: choose one of "
                              f"{', '.join(SYNC_DTYPES)}")
        if isinstance(self.block, bool) or not isinstance(self.block, int) or self.block < 1:
            raise ConfigError(f"sync_block={self.block!r} is invalid: it must be a positive "
                              f"integer")

    @property
    def compressed(self) -> bool:
        return self.dtype != "float32"

    @property
    def unit(self) -> int:
        """Elements quantized together (one scale): `block` in int8, 1 in bfloat16."""
        return self.block if self.dtype == "int8" else 1

    @property
    def unit_bytes(self) -> int:
        return self.block + _SCALE_BYTES if self.dtype == "int8" else 2

    def describe(self) -> str:
        return f"int8 (block {self.block})" if self.dtype == "int8" else self.dtype

    def check(self, n_embd: int) -> None:
        if self.dtype == "int8" and n_embd % self.block:
            raise ConfigError(f"sync_dtype=int8: sync_block={self.block} does not divide "
                              f"n_embd={n_embd} (a block's scale covers channels of one token)")

    # --- what a compressed all-reduce sends ------------------------------------------------
    def chunk_units(self, numel: int, tp: int) -> int:
        """Quantization units per chunk of the two-shot algorithm (padded up)."""
        return -(-(numel // self.unit) // tp)

    def ops(self, numel: int, tp: int) -> list[tuple[str, int]]:
        """[(op, bytes of the full buffer)] of one all-reduce of `numel` elements per rank, in
        the form the counter records (an all-to-all's buffer is one rank's whole send buffer)."""
        if tp == 2:
            return [("all_gather", tp * numel // self.unit * self.unit_bytes)]
        full = tp * self.chunk_units(numel, tp) * self.unit_bytes
        return [("all_to_all", full), ("all_gather", full)]

    # --- the codec -------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[..., units, unit] values -> [..., units * unit_bytes] uint8."""
        if self.dtype == "bfloat16":
            return x.squeeze(-1).to(torch.bfloat16).contiguous().view(torch.uint8)
        x = x.to(_acc_dtype(x.dtype))
        scale = (x.abs().amax(dim=-1, keepdim=True) / 127).to(torch.float32)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale)).to(x.dtype)
        q = torch.round(x / safe).clamp_(-127, 127).to(torch.int8)
        return torch.cat([q.flatten(-2).view(torch.uint8),
                          scale.flatten(-2).contiguous().view(torch.uint8)], dim=-1)

    def decode(self, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The inverse of `encode`: [..., nbytes] uint8 -> [..., units, unit] in float32 or
        wider (`dtype` promoted to at least float32)."""
        acc = _acc_dtype(dtype)
        if self.dtype == "bfloat16":
            return b.view(torch.bfloat16).to(acc).unsqueeze(-1)
        units = b.shape[-1] // self.unit_bytes
        q, scale = b.split([units * self.block, units * _SCALE_BYTES], dim=-1)
        q = q.contiguous().view(torch.int8).unflatten(-1, (units, self.block))
        scale = scale.contiguous().view(torch.float32).unsqueeze(-1)
        return q.to(acc) * scale.to(acc)


class Variant(NamedTuple):
    """A plan with what its syncs send and when: the unit that bench, sweep and `plan` compare."""

    sync: str
    wire: SyncWire
    ladder: bool = False
    sequence_parallel: bool = False


def parse_variant(spec: str, n_embd: int | None = None, dtype: str = "float32",
                  block: int = DEFAULT_BLOCK, ladder: bool = False,
                  sequence_parallel: bool = False) -> Variant:
    """'PLAN[@DTYPE][@ladder][@sp]' (the --plans of bench and sweep, `plan --sync`) -> the
    Variant; what the spec does not name comes from the arguments."""
    plan, *opts = spec.split("@")
    dtypes = [o for o in opts if o not in ("ladder", "sp")]
    if len(dtypes) > 1:
        raise ConfigError(f"plan {spec!r} names {len(dtypes)} sync dtypes: give at most one")
    wire = SyncWire(dtypes[0] if dtypes else dtype, block)
    if n_embd is not None:
        wire.check(n_embd)
    return Variant(plan, wire, ladder or "ladder" in opts, sequence_parallel or "sp" in opts)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def compressed_all_reduce(comm, x: torch.Tensor, wire: SyncWire, phase: str,
                          tag: str) -> torch.Tensor:
    """[R, ...] -> [1, ...]: the sum over all tp ranks, sent as `wire` says (module doc).

    Runs in one process for every mode: `comm`'s cross-process primitives are identities when it
    holds every rank, so simulated and distributed runs execute the same arithmetic."""
    R, shape, tp = x.shape[0], x.shape[1:], comm.tp
    numel = x[0].numel()
    units = x.reshape(R, numel // wire.unit, wire.unit)
    if tp == 2:
        full = comm._cross_all_gather(wire.encode(units))  # [tp, bytes]: every rank's part
        comm._record_bytes(phase, "all_gather", tag, full.numel())
        return _rank_order_sum(wire.decode(full, x.dtype)).reshape(1, *shape).to(x.dtype)
    k = wire.chunk_units(numel, tp)
    padded = units.new_zeros(R, tp * k, wire.unit)
    padded[:, :units.shape[1]] = units
    send = wire.encode(padded.view(R, tp, k, wire.unit))  # [R, tp chunks, bytes]
    comm._record_bytes(phase, "all_to_all", tag, send[0].numel())
    recv = comm._cross_all_to_all(send)  # [tp source ranks, R chunks of mine, bytes]
    sums = _rank_order_sum(wire.decode(recv, x.dtype))  # [R, k, unit]
    full = comm._cross_all_gather(wire.encode(sums))  # [tp chunks, bytes]
    comm._record_bytes(phase, "all_gather", tag, full.numel())
    out = wire.decode(full, x.dtype).reshape(-1)[:numel]
    return out.reshape(1, *shape).to(x.dtype)


def _rank_order_sum(parts: torch.Tensor) -> torch.Tensor:
    """parts[0] + parts[1] + ... in this order: the same bits on every rank and in every mode
    (a reduction kernel may pick its own order)."""
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    return total
