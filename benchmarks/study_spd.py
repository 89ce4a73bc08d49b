"""The SPD study (issue 12): a dense 12-layer model trained on Shakespeare, its sync
sensitivities at tp=2 and tp=4, and the frontier of exact validation loss against forward syncs
at tp=2 for sensitivity-selected, hand-made and random plans, zero-shot, with head grouping and
after block-to-block distillation.

    bash benchmarks/study_spd.sh          # all of it; rerun to resume where it stopped

Every measurement is appended to OUT/results.jsonl as it is made and skipped when rerun; the
report (DOC/results.md, results.json, frontier.png and the sensitivity maps) is rewritten from
it at the end. Selection uses the train split (--split train), so the validation split that
the frontier reports was never used to choose a plan.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import time

from tpgpt.analysis.convert import convert
from tpgpt.analysis.distill import DistillOptions, distill
from tpgpt.analysis.evaluate import checkpoint_split, evaluate_checkpoint, full_split_loss
from tpgpt.checkpoint.load import load_dense, read_checkpoint
from tpgpt.cli import main
from tpgpt.comm.plan import SyncPlan
from tpgpt.errors import ConfigError
from tpgpt.model import ParallelGPT

PRESET = "shakespeare_char_cpu_12layer"
TP = 2
HAND_MADE = ("tp", "tp,spd", "tp,spd,spd", "spd", "spd,parallel,parallel",
             "spd,parallel,parallel,parallel", "parallel")
RANDOM_PER_BUDGET = 3
SELECT = dict(split="train", tokens=16384)  # calibration for selection and head grouping
DISTILL = dict(steps=150, lr=3e-4, batch_size=16)


class Results:
    """OUT/results.jsonl: one measurement per line, keyed by (variant, bits)."""

    def __init__(self, path: str):
        self.path, self.rows = path, {}
        if os.path.exists(path):
            with open(path) as f:
                for line in f:
                    r = json.loads(line)
                    self.rows[(r["variant"], r["bits"])] = r

    def get(self, variant: str, bits: str, measure) -> dict:
        if (variant, bits) not in self.rows:
            t0 = time.perf_counter()
            r = {"variant": variant, "bits": bits, "forward_syncs": bits.count("1"),
                 **measure(), "wall_s": 0.0}
            r["wall_s"] = time.perf_counter() - t0
            with open(self.path, "a") as f:
                f.write(json.dumps(r) + "\n")
            self.rows[(variant, bits)] = r
            print(f"  {variant:18s} {bits} ({r['forward_syncs']:2d} syncs): val loss "
                  f"{r['loss']:.4f} ({r['wall_s']:.0f} s)", flush=True)
        return self.rows[(variant, bits)]


def bits_of(spec: str, n_layer: int) -> str:
    return SyncPlan.parse(spec, n_layer).bitstring


def random_plans(n_points: int, budget: int, count: int) -> list[str]:
    """`count` distinct plans with `budget` forward syncs, the last one always on (fewer where
    fewer exist: one plan has a single sync)."""
    rng = random.Random(1000 + budget)
    out: list[str] = []
    while len(out) < min(count, math.comb(n_points - 1, budget - 1)):
        on = set(rng.sample(range(n_points - 1), budget - 1)) | {n_points - 1}
        bits = "".join("1" if i in on else "0" for i in range(n_points))
        if bits not in out:
            out.append(bits)
    return out


def timed(timings: dict, path: str, phase: str, fn) -> None:
    """Run fn and add its wall time to OUT/timings.json under `phase`."""
    t0 = time.perf_counter()
    fn()
    timings[phase] = timings.get(phase, 0.0) + time.perf_counter() - t0
    with open(path, "w") as f:
        json.dump(timings, f, indent=1)


def sensitivity_maps(dense_dir: str, doc: str, timings: dict, tpath: str) -> dict:
    maps = {}
    for tp, budget in ((2, 1), (4, None)):
        name = os.path.join(doc, f"sensitivity_tp{tp}")
        if not os.path.exists(name + ".json"):
            argv = ["sensitivity", "--ckpt", dense_dir, "--tp", str(tp), "--tokens",
                    str(SELECT["tokens"]), "--split", SELECT["split"], "--out", name,
                    "--overwrite"] + (["--budget", str(budget)] if budget else [])
            timed(timings, tpath, f"sensitivity tp={tp}", lambda a=argv: main(a))
        with open(name + ".json") as f:
            maps[tp] = json.load(f)
    return maps


def run(out: str, doc: str) -> None:
    os.makedirs(out, exist_ok=True)
    os.makedirs(doc, exist_ok=True)
    dense_dir = os.path.join(out, "dense")
    tpath = os.path.join(out, "timings.json")
    timings = json.load(open(tpath)) if os.path.exists(tpath) else {}
    if not os.path.exists(os.path.join(dense_dir, "summary.json")):
        # --overwrite: a run killed before its summary starts again
        timed(timings, tpath, "train dense", lambda: main(
            ["train", PRESET, f"--out_dir={dense_dir}", "--progress=false", "--overwrite"]))
    res = Results(os.path.join(out, "results.jsonl"))
    maps = sensitivity_maps(dense_dir, doc, timings, tpath)
    state = read_checkpoint(dense_dir)
    dense = load_dense(dense_dir, state)[0]
    val = checkpoint_split(state, "val")
    n = 2 * dense.config.n_layer

    def zero_shot(bits):
        model = ParallelGPT.from_dense(dense, tp=TP, sync="bits:" + bits)
        return {"loss": full_split_loss(model.eval(), val)}

    def checkpoint_loss(path):
        return evaluate_checkpoint(path)["loss"]

    def converted(bits, grouping):
        path = os.path.join(out, "ckpt", ("g_" if grouping else "z_") + bits)
        if not os.path.exists(path):
            convert(dense_dir, path, "bits:" + bits, TP, grouping, **SELECT)
        return path

    def distilled(bits, grouping):
        path = os.path.join(out, "ckpt", ("dg_" if grouping else "d_") + bits)
        o = DistillOptions(ckpt=converted(bits, grouping), teacher=dense_dir, out=path,
                           progress=False, overwrite=True, **DISTILL)
        r = distill(o)
        return {"loss": checkpoint_loss(path), "calibration_recovered": r["recovered"]}

    selected = {p["forward_syncs"]: p["bits"] for p in maps[TP]["greedy_path"]}
    hand = {}
    for spec in HAND_MADE:  # (a depth other than 12 may not take every pattern)
        try:
            hand[spec] = bits_of(spec, dense.config.n_layer)
        except ConfigError:
            pass
    randoms = {k: random_plans(n, k, RANDOM_PER_BUDGET) for k in range(1, n)}
    print("zero-shot, every plan:", flush=True)
    for bits in [*selected.values(), *hand.values(), *(b for v in randoms.values() for b in v)]:
        res.get("zero-shot", bits, lambda b=bits: zero_shot(b))
    print("head grouping and distillation at the hand-made budgets:", flush=True)
    spd = hand["spd"].count("1")
    for k in sorted({b.count("1") for b in hand.values()} - {n}, reverse=True):
        plans = [selected[k]] + [b for b in hand.values() if b.count("1") == k]
        if k == spd:  # the random plans too, at the budget the acceptance is about
            plans += randoms[k]
        for bits in dict.fromkeys(plans):
            res.get("distilled", bits, lambda b=bits: distilled(b, False))
            res.get("grouped", bits, lambda b=bits: {"loss": checkpoint_loss(converted(b, True))})
    res.get("grouped+distilled", hand["spd"], lambda: distilled(hand["spd"], True))
    from study_spd_report import write_report
    with open(os.path.join(dense_dir, "summary.json")) as f:
        summary = json.load(f)
    timings["measurements (sum)"] = sum(r["wall_s"] for r in res.rows.values())
    write_report(doc, list(res.rows.values()), maps, selected, hand, randoms, summary, timings,
                 {"preset": PRESET, "tp": TP, "select": SELECT, "distill": DISTILL,
                  "data": state["config"]["data_dir"], "val_tokens": val.n})


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/study_spd")
    ap.add_argument("--doc", default="docs/study_spd")
    ap.add_argument("--distill-steps", type=int, default=DISTILL["steps"])
    args = ap.parse_args()
    DISTILL["steps"] = args.distill_steps
    t0 = time.perf_counter()
    run(args.out, args.doc)
    print(f"study done in {time.perf_counter() - t0:.0f} s (this invocation)")
