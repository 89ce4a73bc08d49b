"""What generation costs under a sync plan: time to first token (the prefill) and per-token
decode latency, on a device and an interconnect.

One forward pass on one rank costs the larger of its FLOPs / the device's matmul rate and the
bytes it reads (this rank's weights, then the KV cache of its heads) / the memory bandwidth
(the roofline; Williams, Waterman & Patterson, CACM 2009), plus every collective of the pass
(`count_inference`) under the interconnect's alpha-beta model (tpgpt.analysis.costmodel), with
no overlap: Megatron's all-reduces sit on the critical path. A decode step reads every weight
to compute one position per sequence, so at small batches it is memory-bound, and its
all-reduces carry batch x n_embd elements, a few KiB: they cost the link's latency, not its
bandwidth. That is why dropped syncs are worth more in decoding than in training or prefill.

The datasheet devices are peaks with no fixed cost per kernel (as if the decode step were
captured in a CUDA graph), so their compute time is a lower bound (real kernels reach a
fraction of both peaks) and the communication share an upper bound. A device may carry a fixed
time per layer and forward pass (`layer_overhead_s`: kernel launches, and kernels too small to
reach the memory bandwidth); `a100-sxm-330w` is gpt-fast's published A100, its bandwidth the
one gpt-fast measured and its layer overhead fitted to gpt-fast's single-GPU Llama-2-7B decode
(benchmarks/decode_validation.py holds it against the other published rows, tp 2-8 and 70B).
`tpgpt bench decode` writes a measured device, fitted on compute-only timings (every collective
skipped) of one shape and batch: see `measured_device`. On a CPU running eager PyTorch a small
model's step is mostly dispatch overhead, which the fitted rate and bandwidth absorb: exact for
the measured shape and batch, a rough guide for others. (A fixed per-pass term fitted across
batches was tried: on the 4-layer model, whose batch-1 and batch-8 steps take the same time
within noise, the fit is ill-conditioned.)
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..comm.plan import SyncPlan, count_inference
from ..errors import ConfigError
from ..model.accounting import matmul_elements
from ..model.family import kv_per_rank
from .costmodel import Interconnect, ladder_hidden_s, read_profile, sublayer_flops


# gpt-fast's one-GPU Llama-2-7B decode (batch 1, 5-token prompt, 200 new tokens): 1 / 104.9 s
# per token, of which its weights and cache at 1,700 GB/s take 7.81 ms; the other 1.73 ms over
# 32 layers (benchmarks/decode_validation.py computes it)
A100_330W_LAYER_S = 54.0e-6


@dataclass(frozen=True)
class Device:
    name: str
    tflops: float  # dense matmul rate in the model's dtype, TFLOP/s
    mem_bandwidth_Bps: float  # memory bandwidth, bytes/s
    source: str = ""
    layer_overhead_s: float = 0.0  # fixed time per layer in every forward pass

    def to_json(self) -> dict:
        return asdict(self)


DEVICES = {
    "h100-sxm": Device(
        "h100-sxm", 989.0, 3.35e12,
        "NVIDIA H100 Tensor Core GPU datasheet, H100 SXM: 989 TFLOP/s dense BF16 (1,979 with "
        "sparsity), 3.35 TB/s HBM3"),
    "a100-sxm": Device(
        "a100-sxm", 312.0, 2.039e12,
        "NVIDIA A100 Tensor Core GPU datasheet, A100 80GB SXM: 312 TFLOP/s dense BF16, "
        "2,039 GB/s HBM2e"),
    "a100-pcie": Device(
        "a100-pcie", 312.0, 1.935e12,
        "NVIDIA A100 Tensor Core GPU datasheet, A100 80GB PCIe: 312 TFLOP/s dense BF16, "
        "1,935 GB/s HBM2e"),
    "a100-sxm-330w": Device(
        "a100-sxm-330w", 312.0, 1.7e12,
        "gpt-fast's 8xA100-80GB at 330 W (its README): 1,700 GB/s, the peak bandwidth it "
        "measured; 54 us per layer fitted to its Llama-2-7B at 104.9 tokens/s on one GPU",
        layer_overhead_s=A100_330W_LAYER_S),
}
# the GPU each built-in interconnect profile describes: NVLink 4 and NDR InfiniBand are H100
# (DGX H100) systems; PCIe 4.0 is the A100 PCIe's host link
IMPLIED_DEVICE = {"nvlink-h100": "h100-sxm", "ib-ndr": "h100-sxm", "pcie4": "a100-pcie",
                  "100gbe": "h100-sxm", "25gbe": "h100-sxm", "nvlink-a100": "a100-sxm"}


def load_device(name_or_file: str) -> Device:
    """A built-in device by name, or the measured one in a `tpgpt bench decode` result."""
    dev = read_profile(name_or_file, DEVICES, "device", "device", "device",
                       "name, tflops, mem_bandwidth_Bps",
                       lambda d: Device(str(d["name"]), float(d["tflops"]),
                                        float(d["mem_bandwidth_Bps"]),
                                        str(d.get("source", name_or_file)),
                                        float(d.get("layer_overhead_s", 0.0))))
    if not (dev.tflops > 0 and dev.mem_bandwidth_Bps > 0) or \
            math.isinf(dev.tflops) or math.isinf(dev.mem_bandwidth_Bps):
        raise ConfigError(f"{name_or_file}: tflops and mem_bandwidth_Bps must be finite and > 0")
    return dev


def pass_work(config, tp: int, *, batch: int, new: int, keys: float, vocab_parallel: bool,
              dtype_bytes: int) -> tuple[float, float]:
    """(FLOPs, bytes read) of one forward pass on one rank: `new` positions per sequence that
    attend to `keys` cached-or-new keys on average, logits for the last position only."""
    C, L, V, hs = config.n_embd, config.n_layer, config.vocab_size, config.head_size
    head = V * C // (tp if vocab_parallel else 1)
    matmul = L * sum(matmul_elements(config, tp).values())  # this rank's share of the weights
    q_width = config.n_head * hs // tp  # this rank's query heads
    flops = 2 * batch * (new * matmul + head) + 4 * L * batch * new * keys * q_width  # QK^T, AV
    kv_read = 2 * L * batch * keys * kv_per_rank(config, tp) * hs  # its KV heads' keys, values
    return flops, (matmul + head + kv_read) * dtype_bytes


def _pass(work: tuple[float, float], colls, device: Device, ic: Interconnect, tp: int,
          ladder: tuple | None = None, fixed_s: float = 0.0) -> dict:
    """`ladder`: (regions, each sublayer's FLOPs in this pass) of a ladder model whose syncs
    are float32: the sync all-reduces overlap the next region (costmodel.ladder_hidden_s), its
    compute taken as its share of the pass's FLOPs."""
    flops, nbytes = work
    t_flops, t_bytes = flops / (device.tflops * 1e12), nbytes / device.mem_bandwidth_Bps
    comm = sum(c.count * ic.collective_time(c.op, c.nbytes, tp) for c in colls)
    compute = max(t_flops, t_bytes) + fixed_s  # fixed_s: the device's per-layer overhead
    if ladder and tp > 1:
        regions, sub_flops = ladder
        sync = next(c for c in colls if c.tag == "sync")
        comm -= ladder_hidden_s(regions, [compute * f / flops for f in sub_flops],
                                ic.collective_time(sync.op, sync.nbytes, tp, in_step=False))
    return {"compute_s": compute, "comm_s": comm, "total_s": compute + comm,
            "bound": "memory" if t_bytes >= t_flops else "compute",
            "collectives": sum(c.count for c in colls)}


def predict_generation(config, plan: SyncPlan, *, tp: int, batch: int, prompt_len: int,
                       new_tokens: int, vocab_parallel: bool, dtype_bytes: int, device: Device,
                       ic: Interconnect, wire=None, ladder: bool = False,
                       sequence_parallel: bool = False) -> dict:
    """Predicted prefill (time to first token) and mean per-token decode latency. The first
    new token comes from the prefill; the other new_tokens - 1 from decode steps whose keys
    grow from prompt_len + 1 to prompt_len + new_tokens - 1 (mean prompt_len + new_tokens/2)."""
    colls = count_inference(plan, tp=tp, n_embd=config.n_embd, vocab_size=config.vocab_size,
                            batch_size=batch, prompt_len=prompt_len,
                            vocab_parallel=vocab_parallel, dtype_bytes=dtype_bytes, wire=wire,
                            sequence_parallel=sequence_parallel)
    kw = dict(batch=batch, vocab_parallel=vocab_parallel, dtype_bytes=dtype_bytes)
    overlap = ladder and (wire is None or not wire.compressed)

    def lad(new: int, keys: float):  # each sublayer's FLOPs on this rank in this pass
        return (plan.regions(), [f * batch * new / tp for f in sublayer_flops(config, keys)]) \
            if overlap else None
    fixed = config.n_layer * device.layer_overhead_s
    prefill = _pass(pass_work(config, tp, new=prompt_len, keys=(prompt_len + 1) / 2, **kw),
                    colls["prefill"], device, ic, tp, lad(prompt_len, (prompt_len + 1) / 2),
                    fixed)
    decode = _pass(pass_work(config, tp, new=1, keys=prompt_len + new_tokens / 2, **kw),
                   colls["decode"], device, ic, tp, lad(1, prompt_len + new_tokens / 2), fixed)
    total = prefill["total_s"] + (new_tokens - 1) * decode["total_s"]
    return {"device": device.name, "interconnect": ic.name, "prefill": prefill,
            "decode": decode, "generation_s": total}


def measured_device(config, tp: int, *, batch: int, prompt_len: int, keys: float,
                    t_decode: float, t_prefill: float, dtype_bytes: int,
                    name: str = "measured") -> Device:
    """The device that reproduces compute-only timings (every collective skipped) of one shape
    and batch: the decode step, memory-bound, fixes the bandwidth (its bytes over its time),
    the prefill, compute-bound, the rate (its FLOPs over its time)."""
    kw = dict(batch=batch, vocab_parallel=False, dtype_bytes=dtype_bytes)
    b_d = pass_work(config, tp, new=1, keys=keys, **kw)[1]
    f_p = pass_work(config, tp, new=prompt_len, keys=(prompt_len + 1) / 2, **kw)[0]
    return Device(name, f_p / t_prefill / 1e12, b_d / t_decode)
