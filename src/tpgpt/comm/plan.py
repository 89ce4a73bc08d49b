"""Sync plans: where a tensor-parallel GPT all-reduces its residual stream.

Each layer has two sync points, after attention (`a`) and after the MLP (`m`); a plan is one bit
per sync point, in order (layer 0 a, layer 0 m, layer 1 a, ...). Presets per layer:

    tp        a=1 m=1   Megatron: exactly the dense model, 2 forward all-reduces per layer
    spd       a=0 m=1   Sync-Point Drop (arXiv:2502.20727): 1 per layer
    parallel  a=0 m=0   rank r keeps its own stream; a run of parallel layers syncs once, at its
                        end (so a lone parallel layer is an spd layer)

The last layer's `m` bit is always on: the final LayerNorm needs the whole stream.

The sublayers between two syncs form a *region*. Entering a region costs one all-reduce in the
backward pass (Megatron's f), leaving it one in the forward pass (Megatron's g). This module
derives the communication of a whole training step from the plan alone, independently of the
model code, so that tests can hold the counts the model observes against it; generation's
(`count_inference`: a prefill and a decode step, forward only) too.
"""
from __future__ import annotations

from dataclasses import dataclass
from ..errors import ConfigError

LAYER_KINDS = {"tp": (1, 1), "spd": (0, 1), "parallel": (0, 0)}
_KIND_OF_BITS = {(1, 1): "tp", (0, 1): "spd", (0, 0): "parallel", (1, 0): "attn-sync"}


@dataclass(frozen=True)
class SyncPlan:
    """A validated sync plan for `n_layer` layers: `bits[2*i]` is layer i's a, `bits[2*i+1]`
    its m."""

    bits: tuple[int, ...]
    spec: str
    kinds: tuple[str, ...] | None = None  # the declared layer kinds, when given as kinds

    @property
    def n_layer(self) -> int:
        return len(self.bits) // 2

    @classmethod
    def parse(cls, spec: str, n_layer: int) -> "SyncPlan":
        """Read a preset (`spd`), a comma list of kinds (`tp,spd`) or explicit `bits:0111`."""
        if isinstance(spec, SyncPlan):
            if spec.n_layer != n_layer:
                raise ConfigError(f"sync plan {spec.spec!r} is for {spec.n_layer} layers, "
                                 f"the model has n_layer={n_layer}")
            return spec
        if not isinstance(spec, str) or not spec.strip():
            raise ConfigError(f"sync={spec!r} is invalid: give a preset (tp, spd, parallel), a "
                              f"comma list of them, or bits:<{2 * n_layer} bits of 0/1>")
        spec = spec.strip()
        if spec.startswith("bits:"):
            return cls(_parse_bits(spec[5:], n_layer), spec)
        kinds = [k.strip() for k in spec.split(",")]
        for k in kinds:
            if k not in LAYER_KINDS:
                raise ConfigError(f"unknown layer kind {k!r} in sync={spec!r}: valid kinds are "
                                 f"{', '.join(LAYER_KINDS)} (or bits:...)")
        if n_layer % len(kinds):
            raise ConfigError(f"sync={spec!r} lists {len(kinds)} layer kinds, which does not "
                              f"divide n_layer={n_layer}: give 1 or a divisor of {n_layer} kinds")
        kinds = kinds * (n_layer // len(kinds))
        bits: list[int] = []
        for i, kind in enumerate(kinds):
            a, m = LAYER_KINDS[kind]
            run_ends = kind == "parallel" and (i == n_layer - 1 or kinds[i + 1] != "parallel")
            bits += [a, 1 if run_ends else m]
        bits[-1] = 1  # the final LayerNorm reads the whole stream
        return cls(tuple(bits), spec, tuple(kinds))

    def sync_after(self, sublayer: int) -> bool:
        return bool(self.bits[sublayer])

    def layer_kind(self, layer: int) -> str:
        if self.kinds is not None:
            return self.kinds[layer]
        a, m = self.bits[2 * layer], self.bits[2 * layer + 1]
        return _KIND_OF_BITS[(a, m)]

    @property
    def num_syncs(self) -> int:
        """Forward all-reduces of the residual stream per pass (= regions)."""
        return sum(self.bits)

    def forward_syncs(self, tp: int) -> int:
        """Forward all-reduces per pass at `tp` ranks: none at tp=1, where there is no sync."""
        return self.num_syncs if tp > 1 else 0

    def is_dense_at(self, tp: int) -> bool:
        """Whether tp ranks under this plan compute the dense GPT: every sync on, or one rank."""
        return tp == 1 or all(self.bits)

    def regions(self) -> list[list[int]]:
        """Sublayer indices (2*layer + 0 for attention, + 1 for the MLP) grouped by region."""
        out, cur = [], []
        for s, bit in enumerate(self.bits):
            cur.append(s)
            if bit:
                out.append(cur)
                cur = []
        return out

    def region_starts(self) -> list[bool]:
        return [s == 0 or bool(self.bits[s - 1]) for s in range(len(self.bits))]

    @property
    def bitstring(self) -> str:
        return "".join(map(str, self.bits))


def _parse_bits(body: str, n_layer: int) -> tuple[int, ...]:
    want = 2 * n_layer
    body = body.strip()
    bad = sorted(set(body) - {"0", "1"})
    if bad:
        raise ConfigError(f"sync bits {body!r} contain {''.join(bad)!r}: only 0 and 1 are allowed "
                         f"({want} bits, 2 per layer: after attention, after MLP)")
    if len(body) != want:
        raise ConfigError(f"sync bits {body!r} have {len(body)} bits: n_layer={n_layer} needs "
                         f"exactly {want} (2 per layer: after attention, after MLP)")
    if body[-1] != "1":
        raise ConfigError(f"sync bits {body!r} end in 0: the last layer must sync after its MLP "
                         f"(the final LayerNorm needs the whole stream)")
    return tuple(int(c) for c in body)


def validate_tp(tp, config, vocab_parallel: bool = False, vocab_size: int | None = None) -> None:
    """tp must divide n_head, tp and the KV heads must divide one another (GQA), and a
    vocab-parallel embedding needs the vocabulary divisible by tp."""
    n_head, kv = config.n_head, config.kv_heads
    vocab_size = config.vocab_size if vocab_size is None else vocab_size
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise ConfigError(f"tp={tp!r} is invalid: it must be a positive integer")
    if n_head % tp:
        divisors = [d for d in range(1, n_head + 1) if n_head % d == 0]
        raise ConfigError(f"tp={tp} does not divide n_head={n_head}: valid tp values are "
                         f"{', '.join(map(str, divisors))}")
    if kv % tp and tp % kv:
        raise ConfigError(f"tp={tp} and n_kv_head={kv} must divide one another: each rank "
                          f"holds whole KV heads, or one KV head replicated over tp/{kv} ranks")
    if vocab_parallel and vocab_size % tp:
        raise ConfigError(f"vocab_parallel needs vocab_size divisible by tp: "
                          f"vocab_size={vocab_size} is not a multiple of tp={tp} (pad it, e.g. to "
                         f"{-(-vocab_size // tp) * tp})")


@dataclass(frozen=True)
class Collective:
    """One line of the accounting: `count` collectives of `nbytes` each (the full buffer)."""

    phase: str  # fwd | bwd | grad (replicated-parameter gradients, once per optimizer step)
    op: str  # all_reduce | all_reduce_max | all_gather | all_to_all (compressed syncs)
    tag: str  # what it is for: sync, region, embedding, loss, head, replicated_grads
    count: int
    nbytes: int


def replicated_per_rank_numel(plan: SyncPlan, config, sequence_parallel: bool = False) -> int:
    """Elements of replicated parameters whose gradients differ per rank under `plan`.

    Inside a multi-sublayer region each sublayer's norm reads a per-rank stream, and each
    sublayer's output bias except the region's last is added to the per-rank stream. Under
    sequence parallelism every norm (the final one too) and every output bias does. Qwen3's
    q/k norms always do: each rank normalises its own heads.
    """
    C, gpt2 = config.n_embd, config.family == "gpt2"
    ln = C * (2 if gpt2 and config.bias else 1)  # LayerNorm w (+ b); RMSNorm w
    out_bias = C if gpt2 and config.bias else 0  # the c_proj biases (none in a llama block)
    qk = 2 * config.head_size * config.n_layer if config.qk_norm else 0
    if sequence_parallel:
        return (len(plan.bits) + 1) * ln + len(plan.bits) * out_bias + qk
    n = qk
    for region in plan.regions():
        if len(region) > 1:
            n += len(region) * ln + (len(region) - 1) * out_bias
    return n


def kv_replica_numel(config, tp: int) -> int:
    """Elements of the k and v projections (with Qwen2's biases) whose gradients are summed over
    the ranks that hold the same KV head, when tp > n_kv_head (TPComm.sum_over_replicas: one
    buffer of every KV head, all-reduced over the TP group); 0 otherwise."""
    kv = config.kv_heads
    if config.family == "gpt2" or tp <= kv:
        return 0
    per_head = config.head_size * (config.n_embd + (1 if config.qkv_bias else 0))
    return config.n_layer * 2 * kv * per_head


def sequence_collectives(plan: SyncPlan, phases: tuple[str, ...], act: int) -> list[Collective]:
    """The residual stream's collectives under sequence parallelism (`act` bytes: the whole
    stream, one rank's buffer): each region entered by an all-gather and left by a
    reduce-scatter, the backward the other way round; the stream is split after the embedding
    (backward all-gather) and gathered after the final LayerNorm (forward); the backward of a
    one-sublayer region gathers its input again (model/blocks.py)."""
    fwd, *bwd = phases
    regions, syncs = len(plan.regions()), plan.num_syncs
    out = [Collective(fwd, "all_gather", "region", regions, act),
           Collective(fwd, "reduce_scatter", "sync", syncs, act),
           Collective(fwd, "all_gather", "sequence", 1, act)]
    singles = sum(len(r) == 1 for r in plan.regions())  # their input is gathered again
    for phase in bwd:
        out += [Collective(phase, "reduce_scatter", "region", regions, act),
                Collective(phase, "all_gather", "sync", syncs, act),
                Collective(phase, "all_gather", "sequence", 1, act)]
        if singles:
            out.append(Collective(phase, "all_gather", "regather", singles, act))
    return out


def stream_collectives(phase: str, tag: str, count: int, numel: int, dtype_bytes: int, tp: int,
                       wire=None) -> list[Collective]:
    """`count` all-reduces of the residual stream (`numel` elements a rank), as the model's
    SyncWire sends them: one all-reduce as computed, or the compressed collectives."""
    if wire is None or not wire.compressed:
        return [Collective(phase, "all_reduce", tag, count, numel * dtype_bytes)]
    return [Collective(phase, op, tag, count, nbytes) for op, nbytes in wire.ops(numel, tp)]


def sent_bytes(op: str, nbytes: int, n: int) -> float:
    """Bytes one rank sends in one collective of a ring over n ranks whose full buffer is
    `nbytes`: 2 (n - 1) / n of it for an all-reduce, (n - 1) / n for the others."""
    return (2 if op.startswith("all_reduce") else 1) * (n - 1) / n * nbytes


def count_collectives(plan: SyncPlan, *, tp: int, config, batch_size: int,
                      seq_len: int, vocab_parallel: bool = False, dtype_bytes: int = 4,
                      backward: bool = True, grad_clip: bool = False,
                      param_bytes: int | None = None, wire=None,
                      sequence_parallel: bool = False) -> list[Collective]:
    """Every collective of one training step (forward with loss, backward, gradient sync) of a
    model of shape `config` (a GPTConfig); `wire`: the model's SyncWire (None: float32, as
    computed)."""
    if tp == 1:
        return []
    numel = batch_size * seq_len * config.n_embd
    act = numel * dtype_bytes
    loss_bytes = max(dtype_bytes, 4)  # the vocab-parallel loss is computed in fp32 or wider
    if sequence_parallel:
        out = sequence_collectives(plan, ("fwd", "bwd") if backward else ("fwd",), act)
    else:
        out = stream_collectives("fwd", "sync", plan.num_syncs, numel, dtype_bytes, tp, wire)
    if vocab_parallel:
        out += [Collective("fwd", "all_reduce", "embedding", 1, act),
                Collective("fwd", "all_reduce_max", "loss", 1, batch_size * seq_len * loss_bytes),
                Collective("fwd", "all_reduce", "loss", 1, 2 * batch_size * seq_len * loss_bytes)]
    if backward:
        if not sequence_parallel:
            out += stream_collectives("bwd", "region", len(plan.regions()), numel, dtype_bytes,
                                      tp, wire)
        if vocab_parallel:
            out.append(Collective("bwd", "all_reduce", "head", 1, act))
        for tag, n in (("replicated_grads",
                        replicated_per_rank_numel(plan, config, sequence_parallel)),
                       ("kv_replicas", kv_replica_numel(config, tp))):
            if n:
                out.append(Collective("grad", "all_reduce", tag, 1,
                                      n * (param_bytes or dtype_bytes)))
        if grad_clip:
            out.append(Collective("grad", "all_reduce", "grad_norm", 1, 8))
    return out


def count_inference(plan: SyncPlan, *, tp: int, n_embd: int, vocab_size: int, batch_size: int,
                    prompt_len: int, vocab_parallel: bool = False,
                    dtype_bytes: int = 4, wire=None,
                    sequence_parallel: bool = False) -> dict[str, list[Collective]]:
    """Every collective of generation: the prefill of `prompt_len` tokens and one decode step
    (one new position per sequence; every decode step sends the same). Logits are computed for
    the last position only, so with vocab_parallel the gather of the head's slices is [B, V].
    Sequence parallelism shards a pass whose length tp divides (the prefill, perhaps; a decode
    step of one position runs unsharded)."""
    if tp == 1:
        return {"prefill": [], "decode": []}
    out = {}
    for phase, T in (("prefill", prompt_len), ("decode", 1)):
        act = batch_size * T * n_embd * dtype_bytes
        if sequence_parallel and T % tp == 0:
            out[phase] = sequence_collectives(plan, (phase,), act)
        else:
            out[phase] = stream_collectives(phase, "sync", plan.num_syncs,
                                            batch_size * T * n_embd, dtype_bytes, tp, wire)
        if vocab_parallel:
            out[phase] += [Collective(phase, "all_reduce", "embedding", 1, act),
                           Collective(phase, "all_gather", "logits", 1,
                                      batch_size * vocab_size * dtype_bytes)]
    return out


def summarize(collectives) -> dict[tuple[str, str, str], tuple[int, int]]:
    """(phase, op, tag) -> (count, total bytes): the form in which plan and counter are compared."""
    out: dict[tuple[str, str, str], tuple[int, int]] = {}
    for c in collectives:
        key = (c.phase, c.op, c.tag)
        n, b = out.get(key, (0, 0))
        out[key] = (n + c.count, b + c.count * c.nbytes)
    return out
