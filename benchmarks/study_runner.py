"""What the 12-layer studies share (study_12layer.py, study_llama.py): a resumable set of jobs
run in `--lanes` processes, one OUT directory per study guarded by a lock and by the settings
its results depend on, and the wall time of each invocation.

A study is a module with
    NAME                      its name in messages
    settings() -> dict        what its results depend on (a rerun in the same OUT must match)
    jobs(out) -> [job]        every job, the first the dense model's; a job {"after": "dense"}
                              starts once that one is done
    job_name(job), job_done(out, job), progress_of(out, job) -> (done, total)
    run_job(out, job)         one job, in its own process (`python STUDY.py --job JSON`)
    write_report(out, doc, timings) -> str   the report, from what OUT holds; what it wrote
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import subprocess
import sys
import time


def last_iter(path: str) -> int:
    """The last iteration a run's metrics.jsonl records (0 before its first line)."""
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
    return last


def write_json(path: str, obj) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)


def schedule(study, out: str, lanes: int, threads: int, argv: list[str], on_job_end,
             echo) -> list[str]:
    """Run every job not done yet in `lanes` processes (each `argv + ["--job", JSON]`); return
    the names of those that failed."""
    from tqdm import tqdm

    dense = study.jobs(out)[0]
    todo = [j for j in study.jobs(out) if not study.job_done(out, j)]
    total = len(study.jobs(out))
    echo(f"{total - len(todo)} of {total} jobs done before; {len(todo)} to run in {lanes} "
         f"processes of {threads} thread(s)")
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    running: dict[int, tuple[dict, subprocess.Popen, float, object]] = {}
    failed: list[str] = []
    finished = total - len(todo)
    try:
        while todo or running:
            if study.job_name(dense) in failed:  # the conversions can never start: fail them
                for j in [j for j in todo if j.get("after") == "dense"]:
                    todo.remove(j)
                    failed.append(study.job_name(j) + " (needs the dense model)")
            for lane in range(lanes):
                ready = [j for j in todo
                         if j.get("after") != "dense" or study.job_done(out, dense)]
                if lane in running or not ready:
                    continue
                j = ready[0]
                todo.remove(j)
                log = os.path.join(out, "logs", study.job_name(j).replace(" ", "_") + ".log")
                with open(log, "a") as f:
                    proc = subprocess.Popen(argv + ["--job", json.dumps(j)], stdout=f,
                                            stderr=subprocess.STDOUT, env=env)
                bar = tqdm(total=study.progress_of(out, j)[1], desc=study.job_name(j),
                           position=lane, leave=False, dynamic_ncols=True, disable=None)
                running[lane] = (j, proc, time.perf_counter(), bar)
                echo(f"[{finished + len(running)}/{total}] lane {lane}: {study.job_name(j)} "
                     f"started")
            if not running and todo:  # nothing can start and nothing runs: cannot happen
                raise RuntimeError(f"jobs that can never start: "
                                   f"{[study.job_name(j) for j in todo]}")
            time.sleep(2)
            for lane, (j, proc, t0, bar) in list(running.items()):
                bar.n = study.progress_of(out, j)[0]
                bar.refresh()
                if proc.poll() is None:
                    continue
                bar.close()
                del running[lane]
                finished += 1
                ok = proc.returncode == 0 and study.job_done(out, j)
                if not ok:
                    failed.append(study.job_name(j))
                echo(f"lane {lane}: {study.job_name(j)} {'done' if ok else 'FAILED'} in "
                     f"{time.perf_counter() - t0:.0f} s" + ("" if ok else " (see its log in "
                                                              f"{out}/logs)"))
                on_job_end(1)
    finally:  # interrupted: stop the jobs too (each resumes from its last checkpoint)
        for _, proc, _, _ in running.values():
            proc.terminate()
        for _, proc, _, _ in running.values():
            proc.wait()
    return failed


def main(study, script: str, doc: str, out: str, extra=None, argv=None) -> int:
    """The command line of a study: `extra(ap)` adds its own options, and returns (after
    parsing) the arguments a job process needs beyond --out."""
    ap = argparse.ArgumentParser(description=study.__doc__.splitlines()[0])
    ap.add_argument("--out", default=out)
    ap.add_argument("--doc", default=doc)
    ap.add_argument("--lanes", type=int, default=2, help="jobs at once (default 2)")
    ap.add_argument("--threads", type=int, default=1, help="threads per job (default 1)")
    ap.add_argument("--job", help=argparse.SUPPRESS)  # internal: one job, in a lane's process
    job_args = extra(ap) if extra else (lambda args: [])
    args = ap.parse_args(argv)
    own = job_args(args)
    if own is None:  # the study refused one of its options (and said why)
        return 2
    if args.job:
        study.run_job(args.out, json.loads(args.job))
        return 0
    for name in ("lanes", "threads"):
        if getattr(args, name) < 1:
            print(f"{study.NAME}: --{name} must be >= 1", file=sys.stderr)
            return 2
    spath = os.path.join(args.out, "study.json")
    if os.path.exists(spath):
        with open(spath) as f:
            before = json.load(f)
        if before != study.settings():
            diff = sorted(k for k in study.settings() if before.get(k) != study.settings()[k])
            print(f"{study.NAME}: {args.out} holds a study with other settings "
                  f"({', '.join(diff)}): choose another --out", file=sys.stderr)
            return 2
    os.makedirs(args.out, exist_ok=True)
    lock = open(os.path.join(args.out, ".lock"), "w")
    try:  # two invocations on one OUT would train the same runs at once
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        print(f"{study.NAME}: another invocation is running in {args.out}", file=sys.stderr)
        return 2
    if not os.path.exists(spath):
        write_json(spath, study.settings())
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
    failed = schedule(study, args.out, args.lanes, args.threads,
                      [sys.executable, script, "--out", args.out, *own], on_job_end,
                      echo=tqdm.write)
    on_job_end()
    if failed:
        print(f"{study.NAME}: {len(failed)} job(s) failed: {', '.join(failed)}; rerun to retry",
              file=sys.stderr)
        return 1
    print(study.write_report(args.out, args.doc, timings))
    return 0
