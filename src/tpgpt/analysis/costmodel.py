"""A communication cost model: what a sync plan's collectives cost on a given interconnect.

Collectives follow the alpha-beta model of a ring over n ranks (Thakur, Rabenseifner & Gropp,
"Optimization of Collective Communication Operations in MPICH", IJHPCA 2005):

    all-reduce of N bytes   T = 2 (n - 1) alpha + 2 (n - 1) / n * N / B
    all-gather to N bytes   T =   (n - 1) alpha +   (n - 1) / n * N / B

with alpha the per-step latency and B the per-direction link bandwidth (an all-to-all, which
compressed syncs use, moves (n - 1) / n of its buffer in n - 1 steps, as an all-gather). A
step's predicted time is its compute time (FLOPs / achieved FLOP/s, split over tp) plus the time
of every collective of the plan, with no overlap between the two (Megatron's activation
all-reduces sit on the critical path), except where the model overlaps on purpose: a ladder
sync's forward all-reduce runs under the next region's forward compute and costs
max(compute, communication) there (`ladder_hidden_s`).

A backend need not run every collective as a ring: gloo's reduce-scatter on this machine costs
more than its all-reduce of the same buffer from 512 KiB up. A measured profile (`tpgpt bench
comm`) therefore fits the all-gather and reduce-scatter on their own (`op_fits`: the alpha and B
that reproduce each op's measured times in its ring formula); the built-in profiles are nominal
rings. Measured on 2026-11-24 (commit 62062b7): with the fits, sequence parallelism's training
steps were predicted within 10 %, without them 18-22 % low; the fit cost accuracy on the tiny
all-gathers of compressed decode syncs (up to 28 % off against 17 %), whose small-message latency
on an idle link is noisier than the all-reduce's. On 2026-12-02 (BENCHMARKS.md) `tp@sp` was
+11 % on a quiet machine and +27 % on a slowed one: the in-step overhead below, calibrated on
all-reduces, is what moves.

Inside a training step a collective costs more than on an idle link: it waits for the slowest
rank to arrive (compute jitter) and, on a CPU backend, for its threads to be scheduled beside
the compute. `sync_overhead_s` adds that cost once per collective; it is 0 for the built-in
profiles (unknown there) and calibrated by `tpgpt bench plans`, which measures it in real steps.
Profiles are fitted to *mean* times: a step is a sum of collectives, and the expected sum is the
sum of the means, which is what throughput over a run sees (a median understates a link whose
latency has a long tail).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass

from ..comm.plan import sent_bytes
from ..model.accounting import matmul_elements
from ..errors import ConfigError


@dataclass(frozen=True)
class Interconnect:
    name: str
    alpha_s: float  # latency per ring step, seconds
    bandwidth_Bps: float  # per-direction bandwidth per link, bytes/s
    source: str = ""
    sync_overhead_s: float = 0.0  # per collective inside a training step, see the module doc
    # op -> (alpha_s, bandwidth_Bps) of an op measured on its own (all_gather, reduce_scatter);
    # the others use alpha_s and bandwidth_Bps, fitted to the all-reduce
    op_fits: tuple[tuple[str, float, float], ...] = ()
    # > 0: the link also runs one-shot and two-shot all-reduces (every rank reads its peers'
    # buffers directly, as NVLink peer-to-peer lets it), each step costing this latency; an
    # all-reduce then takes the fastest of the three algorithms (see `allreduce_time`)
    oneshot_alpha_s: float = 0.0

    def collective_time(self, op: str, nbytes: int, n: int, in_step: bool = True) -> float:
        """Expected time of one collective over n ranks; `in_step=False`: on an idle link."""
        if n < 2:
            return 0.0
        alpha, bandwidth = next(((a, b) for o, a, b in self.op_fits if o == op),
                                (self.alpha_s, self.bandwidth_Bps))
        link = ring_steps(op, n) * alpha + sent_bytes(op, nbytes, n) / bandwidth
        if self.oneshot_alpha_s > 0 and op.startswith("all_reduce"):
            link = min(link, *allreduce_shots(nbytes, n, self.oneshot_alpha_s, bandwidth))
        return link + (self.sync_overhead_s if in_step else 0.0)

    def to_json(self) -> dict:
        d = asdict(self)
        d["op_fits"] = {o: {"alpha_s": a, "bandwidth_Bps": b} for o, a, b in self.op_fits}
        return d

    @classmethod
    def from_json(cls, d: dict, source: str = "") -> "Interconnect":
        """The inverse of to_json (a profile written by `tpgpt bench comm|plans`)."""
        fits = tuple((str(o), float(f["alpha_s"]), float(f["bandwidth_Bps"]))
                     for o, f in (d.get("op_fits") or {}).items())
        return cls(str(d["name"]), float(d["alpha_s"]), float(d["bandwidth_Bps"]),
                   str(d.get("source", source)), float(d.get("sync_overhead_s", 0.0)), fits,
                   float(d.get("oneshot_alpha_s", 0.0)))


def ring_steps(op: str, n: int) -> int:
    """Latency steps of a ring collective over n ranks: 2 (n - 1) for an all-reduce, n - 1
    for the others."""
    return 2 * (n - 1) if op.startswith("all_reduce") else n - 1


def allreduce_shots(nbytes: int, n: int, alpha: float, bandwidth: float) -> tuple[float, float]:
    """(one-shot, two-shot) all-reduce of N bytes over n ranks that read each other's memory
    (the algorithms of PyTorch's intra-node all-reduce and of TensorRT-LLM's and vLLM's custom
    all-reduce kernels, which NCCL's low-latency protocols approach): one-shot, every rank reads
    its n - 1 peers' whole buffers and sums them, one step, (n - 1) N bytes in; two-shot, a
    reduce-scatter then an all-gather of 1/n each, two steps, 2 (n - 1) / n N bytes in."""
    return (alpha + (n - 1) * nbytes / bandwidth,
            2 * alpha + 2 * (n - 1) / n * nbytes / bandwidth)


# Nominal link rates from the hardware specifications; ring latencies are typical NCCL
# small-message figures (order of magnitude). The NVLink profiles also run the one-shot and
# two-shot all-reduces of peer-to-peer memory access at ONESHOT_ALPHA_S a step: no published
# figure was found for that latency; 5 us is this project's order-of-magnitude choice, and
# benchmarks/decode_validation.py shows how far the predictions move with it (2-20 us) against
# gpt-fast's published decode measurements. Measure your own with `tpgpt bench comm`.
ONESHOT_ALPHA_S = 5e-6
BUILTIN = {
    "nvlink-h100": Interconnect(
        "nvlink-h100", 3e-6, 450e9,
        "NVLink 4: 900 GB/s total (450 GB/s per direction) per H100 SXM, NVIDIA H100 datasheet; "
        "one-shot/two-shot all-reduce steps of 5 us (unsourced, see costmodel.py)",
        oneshot_alpha_s=ONESHOT_ALPHA_S),
    "nvlink-a100": Interconnect(
        "nvlink-a100", 3e-6, 300e9,
        "NVLink 3: 600 GB/s total (300 GB/s per direction) per A100 SXM, NVIDIA A100 datasheet; "
        "one-shot/two-shot all-reduce steps of 5 us (unsourced, see costmodel.py)",
        oneshot_alpha_s=ONESHOT_ALPHA_S),
    "pcie4": Interconnect(
        "pcie4", 10e-6, 32e9,
        "PCIe 4.0 x16: 16 GT/s x 16 lanes = 32 GB/s per direction, PCI-SIG PCIe 4.0 spec"),
    "ib-ndr": Interconnect(
        "ib-ndr", 5e-6, 50e9,
        "InfiniBand NDR: 400 Gb/s = 50 GB/s per port, NVIDIA Quantum-2 / ConnectX-7 datasheets"),
    "100gbe": Interconnect(
        "100gbe", 25e-6, 12.5e9, "100 Gigabit Ethernet: 12.5 GB/s, IEEE 802.3ba/802.3bj"),
    "25gbe": Interconnect(
        "25gbe", 30e-6, 3.125e9, "25 Gigabit Ethernet: 3.125 GB/s, IEEE 802.3by"),
}


def read_profile(name_or_file: str, builtin: dict, what: str, noun: str, key: str,
                 fields: str, build):
    """A built-in profile by name, or `build(dict)` of a JSON file: the profile itself or a
    whole benchmark result holding it under `key`. Unreadable files are one-line errors."""
    if name_or_file in builtin:
        return builtin[name_or_file]
    if not os.path.exists(name_or_file):
        raise ConfigError(f"{what} {name_or_file!r} is neither a built-in {noun} "
                          f"({', '.join(builtin)}) nor a file")
    try:
        with open(name_or_file) as f:
            d = json.load(f)
        if isinstance(d, dict) and isinstance(d.get(key), dict):
            d = d[key]
        return build(d)
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError,
            AttributeError) as e:
        article = "an" if what[0] in "aeiou" else "a"
        raise ConfigError(f"{name_or_file} is not {article} {what} profile ({fields}): "
                          f"{e}") from None


def load_interconnect(name_or_file: str) -> Interconnect:
    """A built-in profile by name, or a JSON profile (or a result holding one under "profile")
    written by `tpgpt bench comm`, `plans` or `decode`."""
    ic = read_profile(name_or_file, BUILTIN, "interconnect", "profile", "profile",
                      "name, alpha_s, bandwidth_Bps",
                      lambda d: Interconnect.from_json(d, source=name_or_file))
    if name_or_file in BUILTIN:
        return ic
    fits = [(ic.alpha_s, ic.bandwidth_Bps)] + [(a, b) for _, a, b in ic.op_fits]
    if not (all(a >= 0 and b > 0 and not math.isinf(a) for a, b in fits)
            and ic.sync_overhead_s >= 0) or math.isinf(ic.sync_overhead_s):
        raise ConfigError(f"{name_or_file}: alpha_s and sync_overhead_s must be finite and >= 0, "
                          f"bandwidth_Bps > 0")
    return ic


def measured_compute(name_or_file: str) -> tuple[float, dict] | None:
    """(TFLOP/s, model shape) that a `tpgpt bench plans` result measured its compute at, if the
    interconnect given is such a file; None for built-in profiles and plain profiles."""
    if name_or_file in BUILTIN:
        return None
    try:
        with open(name_or_file) as f:
            d = json.load(f)
        v, shape = float(d["achieved_tflops"]), dict(d["config"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    return (v, shape) if v > 0 and math.isfinite(v) else None


def fit_alpha_beta(sizes: list[int], times: list[float], n: int,
                   op: str = "all_reduce") -> Interconnect:
    """Fit measured times of `op` to T = a + b N, minimising the *relative* error (weights
    1/T^2, so 8-byte latencies count as much as 64 MB transfers), then turn (a, b) into the
    per-step alpha and per-direction bandwidth B of op's ring formula."""
    w = [1.0 / t ** 2 for t in times]
    sw = sum(w)
    swx = sum(wi * x for wi, x in zip(w, sizes))
    swy = sum(wi * y for wi, y in zip(w, times))
    swxx = sum(wi * x * x for wi, x in zip(w, sizes))
    swxy = sum(wi * x * y for wi, x, y in zip(w, sizes, times))
    b = (sw * swxy - swx * swy) / (sw * swxx - swx ** 2)
    a = max((swy - b * swx) / sw, 0.0)
    steps = ring_steps(op, n)
    return Interconnect("measured", a / steps, steps / n / b if b > 0 else float("inf"))


def train_flops_per_token(config, seq_len: int) -> float:
    """Forward + backward FLOPs per token: 6 N plus attention (PaLM appendix B; nanoGPT's MFU),
    N the matmul weights (the head included; GPT-2: 12 L C^2 + V C)."""
    n_params = config.n_layer * sum(matmul_elements(config).values()) \
        + config.vocab_size * config.n_embd
    return 6 * n_params + 12 * config.n_layer * config.n_head * config.head_size * seq_len


def sublayer_flops(config, keys: float) -> list[float]:
    """Forward FLOPs per token of each sublayer in order (attention, MLP, attention, ...):
    attention 2 x its weights (GPT-2: 8 C^2) + 4 keys x the query width (QK^T, AV), MLP 2 x
    its weights (GPT-2: 16 C^2); with keys = seq_len their sum is the block part of
    train_flops_per_token / 3."""
    w = matmul_elements(config)
    attn = 2 * w["attention"] + 4 * keys * config.n_head * config.head_size
    return [attn, 2 * w["mlp"]] * config.n_layer


def ladder_hidden_s(regions: list[list[int]], sublayer_s: list[float], sync_s: float) -> float:
    """Communication a ladder hides: the all-reduce ending region k runs under region k + 1's
    forward compute (`sublayer_s`: each sublayer's), so it costs max(compute, communication)
    there instead of their sum; the last one, read by the final LayerNorm, is waited for.
    Callers pass the idle-link time as `sync_s`: the in-step overhead (waiting for the slowest
    rank, threads scheduled beside the compute) is not hidden by starting early."""
    return sum(min(sync_s, sum(sublayer_s[i] for i in nxt)) for nxt in regions[1:])


def predict_step(report: dict, config, ic: Interconnect, achieved_tflops: float) -> dict:
    """Predicted time of one training step (one micro-batch) for a `plan_report` dict."""
    tp = report["tp"]
    tokens = report["batch_size"] * report["seq_len"]
    rate = achieved_tflops * 1e12
    compute = train_flops_per_token(config, report["seq_len"]) * tokens / tp / rate
    comm = sum(c["count"] * ic.collective_time(c["op"], c["bytes_each"], tp)
               for c in report["collectives"])
    hidden = 0.0
    if report.get("ladder") and report.get("sync_dtype", "float32") == "float32" and tp > 1:
        sync = next(c for c in report["collectives"] if c["phase"] == "fwd" and
                    c["tag"] == "sync")
        per_sublayer = [f * tokens / tp / rate
                        for f in sublayer_flops(config, report["seq_len"])]
        hidden = ladder_hidden_s(report["regions"], per_sublayer, ic.collective_time(
            sync["op"], sync["bytes_each"], tp, in_step=False))
    comm -= hidden
    total = compute + comm
    return {"interconnect": ic.name, "compute_s": compute, "comm_s": comm, "step_s": total,
            "comm_share": comm / total if total else 0.0, "hidden_s": hidden}
