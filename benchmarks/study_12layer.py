"""The 12-layer study (issue 13): train with the plan, or convert a trained model?

Seven sync plans from 24 forward syncs down to 1, each trained from scratch on the 12-layer
Shakespeare preset at simulated tp=2 (seeds 1337 and 1338) and tp=4 (seed 1337), every run of a
seed from the same initial weights and data order; and the other route, the dense model (the
`tp` run of seed 1337 at tp=2: every sync on is the dense function) converted to each plan at
tp=2 and tp=4, zero-shot and after block-to-block distillation.

    bash benchmarks/study_12layer.sh          # all of it; rerun to resume where it stopped

Runs go in OUT/tp<T>_s<SEED>/<plan>/ (a `tpgpt sweep` layout: a finished run is skipped, an
interrupted one resumes from its last checkpoint) and OUT/converted/; the jobs run in `--lanes`
processes of `--threads` threads each (two single-thread processes train these small models
about 1.4 times faster than one two-thread process on the 2-core VM). The report (DOC/results.md,
results.json, frontier.png, loss_curves.png) is rewritten from what OUT holds at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

PRESET = "shakespeare_char_cpu_12layer"
BUDGET = 1200  # iterations: about 1 epoch of the corpus, 3-5 min a run here (see the README)


def overrides() -> list[str]:
    return [f"--max_iters={BUDGET}", f"--lr_decay_iters={BUDGET}",
            f"--eval_interval={max(BUDGET // 6, 1)}", "--progress=false"]
PLANS = ("tp", "tp,spd", "tp,spd,spd", "spd", "spd,parallel,parallel",
         "spd,parallel,parallel,parallel", "parallel")
GROUPS = ((2, 1337), (2, 1338), (4, 1337))  # (tp, seed) of the trained route
DENSE = (2, 1337)  # the group whose `tp` run is the dense model the converted route starts from
DISTILL = dict(steps=150, lr=3e-4, batch_size=16)


def run_dir(out: str, tp: int, seed: int, plan: str) -> str:
    from tpgpt.analysis.sweep import plan_dir_name
    return os.path.join(out, f"tp{tp}_s{seed}", plan_dir_name(plan))


def dense_dir(out: str) -> str:
    return os.path.join(run_dir(out, *DENSE, "tp"), "last")


def converted_path(out: str, tp: int, plan: str, kind: str) -> str:
    """OUT/converted/: z_<name> (zero-shot checkpoint), d_<name> (distill run), <name>.json."""
    from tpgpt.analysis.sweep import plan_dir_name
    name = f"tp{tp}_{plan_dir_name(plan)}"
    return os.path.join(out, "converted", {"zero_shot": "z_" + name, "distilled": "d_" + name,
                                           "result": name + ".json"}[kind])


def jobs(out: str) -> list[dict]:
    """Every job: the dense model's first, the conversions (which need it) as soon as it is
    there, the other training runs in between and after."""
    train = [{"kind": "train", "tp": tp, "seed": seed, "plan": plan}
             for tp, seed in GROUPS for plan in PLANS]
    convert = [{"kind": "convert", "tp": tp, "plan": plan, "after": "dense"}
               for tp in sorted({tp for tp, _ in GROUPS}) for plan in PLANS if plan != "tp"]
    assert train[0]["plan"] == "tp" and (train[0]["tp"], train[0]["seed"]) == DENSE
    return train[:1] + convert + train[1:]


def job_name(j: dict) -> str:
    if j["kind"] == "train":
        return f"train tp{j['tp']} s{j['seed']} {j['plan']}"
    return f"convert tp{j['tp']} {j['plan']}"


def job_done(out: str, j: dict) -> bool:
    if j["kind"] == "train":
        from tpgpt.analysis.sweep import finished_summary
        s = finished_summary(run_dir(out, j["tp"], j["seed"], j["plan"]), BUDGET)
        return s is not None and "full_val_loss" in s
    return os.path.exists(converted_path(out, j["tp"], j["plan"], "result"))


def progress_of(out: str, j: dict) -> tuple[int, int]:
    """(done, total) of a running job, read from the metrics.jsonl it writes."""
    if j["kind"] == "train":
        path, total = os.path.join(run_dir(out, j["tp"], j["seed"], j["plan"]),
                                   "metrics.jsonl"), BUDGET
    else:
        path = os.path.join(converted_path(out, j["tp"], j["plan"], "distilled"),
                            "metrics.jsonl")
        total = DISTILL["steps"]
    last = 0
    try:
        with open(path) as f:
            for line in f:
                try:
                    last = max(last, int(json.loads(line).get("iter", 0)))
                except (json.JSONDecodeError, ValueError, TypeError):
                    pass
    except OSError:
        pass
    return min(last, total), total


# --- one job, in its own process -------------------------------------------------------------

def run_job(out: str, j: dict) -> None:
    from tpgpt.analysis.sweep import train_plan
    from tpgpt.train.config import load_config, parse_overrides

    if j["kind"] == "train":
        cfg = load_config(PRESET, parse_overrides(
            overrides() + [f"--tp={j['tp']}", f"--seed={j['seed']}", f"--sync={j['plan']}"]))
        train_plan(cfg, j["plan"], run_dir(out, j["tp"], j["seed"], j["plan"]))
        return
    from tpgpt.analysis.convert import convert
    from tpgpt.analysis.distill import DistillOptions, distill
    from tpgpt.analysis.evaluate import evaluate_checkpoint

    t0 = time.perf_counter()
    os.makedirs(os.path.join(out, "converted"), exist_ok=True)
    z, d = (converted_path(out, j["tp"], j["plan"], k) for k in ("zero_shot", "distilled"))
    if not os.path.exists(os.path.join(z, "state.json")):
        for p in (z, z + ".tmp", z + ".old", z + ".prev"):  # a conversion killed half-way
            shutil.rmtree(p, ignore_errors=True)
        convert(dense_dir(out), z, j["plan"], j["tp"])
    zero_shot = evaluate_checkpoint(z)
    again = os.path.isfile(os.path.join(d, "last", "state.json"))  # killed during distill
    r = distill(DistillOptions(ckpt=z, teacher=dense_dir(out), out=d, progress=False,
                               quiet=True, resume=again, overwrite=not again, **DISTILL))
    distilled = evaluate_checkpoint(d)
    row = {"tp": j["tp"], "plan": j["plan"], "bits": zero_shot["bits"],
           "forward_syncs": zero_shot["forward_syncs"], "zero_shot_loss": zero_shot["loss"],
           "distilled_loss": distilled["loss"], "calibration_recovered": r["recovered"],
           "distill": DISTILL, "wall_s": time.perf_counter() - t0}
    path = converted_path(out, j["tp"], j["plan"], "result")
    with open(path + ".tmp", "w") as f:
        json.dump(row, f, indent=1)
    os.replace(path + ".tmp", path)


# --- the study's command line (study_runner.py) ---------------------------------------------

NAME = "study_12layer"


def settings() -> dict:
    """What a study's results depend on: a rerun in the same OUT must use the same."""
    return {"iters": BUDGET, "preset": PRESET, "plans": list(PLANS),
            "groups": [list(g) for g in GROUPS], "dense": list(DENSE), "distill": DISTILL}


def write_report(out: str, doc: str, timings: dict) -> str:
    from study_12layer_report import write_report as write
    write(out, doc, timings, BUDGET)
    return f"wrote {doc}/results.md, results.json, frontier.png, loss_curves.png"


def _iters(ap: argparse.ArgumentParser):
    ap.add_argument("--iters", type=int, default=BUDGET,
                    help=f"training iterations per run (default {BUDGET}, the study's; fewer for "
                         f"a quick trial in another --out)")

    def job_args(args):
        global BUDGET
        if args.iters < 1:
            print(f"{NAME}: --iters must be >= 1", file=sys.stderr)
            return None
        BUDGET = args.iters
        return ["--iters", str(BUDGET)]
    return job_args


if __name__ == "__main__":
    from study_runner import main
    sys.exit(main(sys.modules[__name__], __file__, "docs/study_12layer", "out/study_12layer",
                  extra=_iters))
