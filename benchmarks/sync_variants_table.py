"""The side-by-side table of sync variants (benchmarks/sync_variants.sh): for each plan and what
its syncs send, on the CPU preset at tp=2, the bytes one rank sends per training step, the
measured step time (and the same step with its collectives skipped: the compute a codec or the
sequence splits add, which the cost model does not count) and decode latency (bench plans,
bench decode, over gloo here) with the cost model's calibrated prediction, the step time
predicted on the built-in interconnects, and the validation loss of the variant trained (tpgpt
sweep); then the same variants predicted for GPT-2 small at tp=8 with float32 activations (as
`tpgpt plan --n_head 16 --tp 8 --batch_size 12 --grad-clip --sync V --interconnect NAME` prints
them: the prediction does not depend on the head count; under bfloat16 autocast, as the
gpt2_owt presets train, the uncompressed syncs already travel in bfloat16).

usage: python benchmarks/sync_variants_table.py PLANS.json DECODE.json SWEEP/results.csv
"""
from __future__ import annotations

import csv
import json
import sys

from tpgpt.analysis.costmodel import BUILTIN, predict_step
from tpgpt.analysis.plan_report import plan_report
from tpgpt.comm.plan import SyncPlan
from tpgpt.comm.wire import parse_variant
from tpgpt.model import GPTConfig

INTERCONNECTS = ["nvlink-h100", "ib-ndr", "25gbe"]
RATE_TFLOPS = 300.0  # `tpgpt plan`'s default compute rate (about 30% of an H100's bf16 peak)


def predicted(config: GPTConfig, variant: str, tp: int, batch: int, seq: int) -> dict:
    v = parse_variant(variant)
    r = plan_report(config, SyncPlan.parse(v.sync, config.n_layer), tp=tp, batch_size=batch,
                    seq_len=seq, vocab_parallel=False, grad_clip=True, wire=v.wire,
                    ladder=v.ladder, sequence_parallel=v.sequence_parallel)
    return {ic: predict_step(r, config, BUILTIN[ic], RATE_TFLOPS)["step_s"]
            for ic in INTERCONNECTS}


def main(plans_json: str, decode_json: str, sweep_csv: str) -> None:
    with open(plans_json) as f:
        plans = json.load(f)
    with open(decode_json) as f:
        decode = json.load(f)
    with open(sweep_csv) as f:
        loss = {r["plan"]: float(r["full_val_loss"]) for r in csv.DictReader(f)}
    c = plans["config"]
    config = GPTConfig(block_size=c["block_size"], vocab_size=c["vocab_size"],
                       n_layer=c["n_layer"], n_head=c["n_head"], n_embd=c["n_embd"], bias=False)
    steps = {r["plan"]: r for r in plans["rows"]}
    runs = decode["shapes"]["cpu-preset"]["runs"]
    dec = {run["batch"]: {r["plan"]: r for r in run["rows"]} for run in runs}
    b1 = dec[min(dec)]
    base = steps["tp"]
    print(f"CPU preset ({c['n_layer']} layers, n_embd {c['n_embd']}, batch "
          f"{plans['batch_size']} x {c['block_size']}) at tp=2 over gloo on this machine; "
          f"decode at batch {min(dec)}; predictions at {RATE_TFLOPS:g} TFLOP/s per device\n")
    print("| variant | fwd syncs | sent / training step (one rank) | activations saved / rank "
          "| step ms here (vs `tp`) | of it compute, collectives skipped (vs `tp`) "
          "| cost model (error) | decode ms/token here (vs `tp`) | "
          "cost model (error) | "
          + " | ".join(f"predicted step on {ic}" for ic in INTERCONNECTS)
          + " | val loss (vs `tp`) |")
    print("|---" * (10 + len(INTERCONNECTS)) + "|")
    for v, r in steps.items():
        d = b1[v]
        pred = predicted(config, v, 2, plans["batch_size"], c["block_size"])
        val = loss.get(v)
        print(f"| `{v}` | {r['forward_syncs']} | {r['bytes_sent_per_step'] / 2**20:.2f} MiB | "
              f"{r['saved_activations_mib']:.2f} MiB "
              f"({r['saved_activations_mib'] / base['saved_activations_mib']:.2f}x) | "
              f"{1e3 * r['mean_slowest_s']:.1f} "
              f"({r['mean_slowest_s'] / base['mean_slowest_s']:.2f}x) | "
              f"{1e3 * r['compute_only_s']:.1f} "
              f"({r['compute_only_s'] / base['compute_only_s']:.2f}x) | "
              f"{1e3 * r['predicted_s']:.1f} ({100 * r['error']:+.0f}%) | "
              f"{1e3 * d['decode']['mean_s']:.2f} "
              f"({d['decode']['mean_s'] / b1['tp']['decode']['mean_s']:.2f}x) | "
              f"{1e3 * d['predicted_decode_s']:.2f} ({100 * d['error']:+.0f}%) | "
              + " | ".join(f"{1e6 * pred[ic]:.0f} us" for ic in INTERCONNECTS) + " | "
              + ("-" if val is None else f"{val:.4f} ({val - loss['tp']:+.4f})") + " |")
    worst = max(abs(r["error"]) for r in plans["rows"] if r["role"] == "validation")
    worst_dec = max(abs(r["error"]) for r in b1.values() if r["role"] == "validation")
    print(f"\nstep-time model calibrated on `{plans['calibrated_on']}` only; held-out variants: "
          f"worst error {100 * worst:.1f}%. Decode: calibrated on "
          f"`{runs[0]['calibrated_on']}`, worst held-out error at batch {min(dec)} "
          f"{100 * worst_dec:.1f}%.")

    gpt2 = GPTConfig(n_head=16)  # GPT-2 small's shape; 16 heads so that tp=8 divides them
    print(f"\nGPT-2 small (124M) at tp=8, batch 12 x 1024, float32 activations, compute at "
          f"{RATE_TFLOPS:g} TFLOP/s per device, predicted step:\n")
    print("| variant | " + " | ".join(INTERCONNECTS) + " |")
    print("|---" * (1 + len(INTERCONNECTS)) + "|")
    for v in steps:
        pred = predicted(gpt2, v, 8, 12, 1024)
        print(f"| `{v}` | " + " | ".join(f"{1e3 * pred[ic]:.1f} ms" for ic in INTERCONNECTS)
              + " |")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__.strip().splitlines()[-1])
    main(*sys.argv[1:])
