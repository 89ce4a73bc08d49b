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
import fcntl
import json
import os
import shutil
import subprocess
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


# --- the scheduler -----------------------------------------------------------------------------

def settings() -> dict:
    """What a study's results depend on: a rerun in the same OUT must use the same."""
    return {"iters": BUDGET, "preset": PRESET, "plans": list(PLANS),
            "groups": [list(g) for g in GROUPS], "dense": list(DENSE), "distill": DISTILL}


def write_json(path: str, obj) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)


def schedule(out: str, lanes: int, threads: int, on_job_end, echo) -> list[str]:
    """Run every job not done yet in `lanes` processes; return the names of those that failed."""
    from tqdm import tqdm

    dense = jobs(out)[0]
    assert dense == {"kind": "train", "tp": DENSE[0], "seed": DENSE[1], "plan": "tp"}
    todo = [j for j in jobs(out) if not job_done(out, j)]
    total = len(jobs(out))
    echo(f"{total - len(todo)} of {total} jobs done before; {len(todo)} to run in {lanes} "
         f"processes of {threads} thread(s)")
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    os.makedirs(os.path.join(out, "converted"), exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    running: dict[int, tuple[dict, subprocess.Popen, float, object]] = {}
    failed: list[str] = []
    finished = total - len(todo)
    try:
        while todo or running:
            if job_name(dense) in failed:  # the conversions can never start: fail them too
                for j in [j for j in todo if j.get("after") == "dense"]:
                    todo.remove(j)
                    failed.append(job_name(j) + " (needs the dense model)")
            for lane in range(lanes):
                ready = [j for j in todo if j.get("after") != "dense" or job_done(out, dense)]
                if lane in running or not ready:
                    continue
                j = ready[0]
                todo.remove(j)
                log = os.path.join(out, "logs", job_name(j).replace(" ", "_") + ".log")
                with open(log, "a") as f:
                    argv = [sys.executable, __file__, "--out", out, "--iters", str(BUDGET),
                            "--job", json.dumps(j)]
                    proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=env)
                bar = tqdm(total=progress_of(out, j)[1], desc=job_name(j), position=lane,
                           leave=False, dynamic_ncols=True, disable=None)
                running[lane] = (j, proc, time.perf_counter(), bar)
                echo(f"[{finished + len(running)}/{total}] lane {lane}: {job_name(j)} started")
            if not running and todo:  # nothing can start and nothing runs: cannot happen
                raise RuntimeError(f"jobs that can never start: {[job_name(j) for j in todo]}")
            time.sleep(2)
            for lane, (j, proc, t0, bar) in list(running.items()):
                bar.n = progress_of(out, j)[0]
                bar.refresh()
                if proc.poll() is None:
                    continue
                bar.close()
                del running[lane]
                finished += 1
                ok = proc.returncode == 0 and job_done(out, j)
                if not ok:
                    failed.append(job_name(j))
                echo(f"lane {lane}: {job_name(j)} {'done' if ok else 'FAILED'} in "
                     f"{time.perf_counter() - t0:.0f} s" + ("" if ok else " (see its log in "
                                                              f"{out}/logs)"))
                on_job_end(1)
    finally:  # interrupted: stop the jobs too (each resumes from its last checkpoint)
        for _, proc, _, _ in running.values():
            proc.terminate()
        for _, proc, _, _ in running.values():
            proc.wait()
    return failed


def main() -> int:
    global BUDGET
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/study_12layer")
    ap.add_argument("--doc", default="docs/study_12layer")
    ap.add_argument("--lanes", type=int, default=2, help="jobs at once (default 2)")
    ap.add_argument("--threads", type=int, default=1, help="threads per job (default 1)")
    ap.add_argument("--iters", type=int, default=BUDGET,
                    help=f"training iterations per run (default {BUDGET}, the study's; fewer for "
                         f"a quick trial in another --out)")
    ap.add_argument("--job", help=argparse.SUPPRESS)  # internal: one job, in a lane's process
    args = ap.parse_args()
    BUDGET = args.iters
    if args.job:
        run_job(args.out, json.loads(args.job))
        return 0
    for name in ("lanes", "threads", "iters"):
        if getattr(args, name) < 1:
            print(f"study_12layer: --{name} must be >= 1", file=sys.stderr)
            return 2
    os.makedirs(args.out, exist_ok=True)
    lock = open(os.path.join(args.out, ".lock"), "w")
    try:  # two invocations on one OUT would train the same runs at once
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        print(f"study_12layer: another invocation is running in {args.out}", file=sys.stderr)
        return 2
    spath = os.path.join(args.out, "study.json")
    if os.path.exists(spath):
        with open(spath) as f:
            before = json.load(f)
        if before != settings():
            diff = sorted(k for k in settings() if before.get(k) != settings()[k])
            print(f"study_12layer: {args.out} holds a study with other settings ({', '.join(diff)}"
                  f"): choose another --out", file=sys.stderr)
            return 2
    else:
        write_json(spath, settings())
    tpath = os.path.join(args.out, "timings.json")
    timings = json.load(open(tpath)) if os.path.exists(tpath) else {"invocations": []}
    mine = {"lanes": args.lanes, "threads": args.threads, "wall_s": 0.0, "jobs": 0}
    timings["invocations"].append(mine)
    t0 = time.perf_counter()

    def on_job_end(ran: int = 0):  # a killed invocation keeps its time up to its last job
        mine["jobs"] += ran
        mine["wall_s"] = time.perf_counter() - t0
        write_json(tpath, timings)

    from tqdm import tqdm
    failed = schedule(args.out, args.lanes, args.threads, on_job_end, echo=tqdm.write)
    on_job_end()
    if failed:
        print(f"study_12layer: {len(failed)} job(s) failed: {', '.join(failed)}; rerun to retry",
              file=sys.stderr)
        return 1
    from study_12layer_report import write_report
    write_report(args.out, args.doc, timings, BUDGET)
    print(f"wrote {args.doc}/results.md, results.json, frontier.png, loss_curves.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
