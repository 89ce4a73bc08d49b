"""Timing shared by the benchmarks: interleaved rounds, summary statistics, result files."""
from __future__ import annotations

import json
import os
import statistics
import time


def time_interleaved(fns: dict, steps: int, warmup: int, barrier=None) -> dict[str, list[float]]:
    """Run every function once per round, `warmup` untimed rounds then `steps` timed ones, so
    a noisy machine's slow spells hit all of them alike; `barrier` lines processes up first.
    Each round starts one function later (`rotated`), so none is always timed right after the
    same one: what a step leaves behind (gloo's thread after an asynchronous all-reduce, say)
    falls on each in turn (BENCHMARKS.md, results/sp_decode_order/)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + steps):
        for k in rotated(list(fns), i):
            fn = fns[k]
            if barrier is not None:
                barrier()
            t0 = time.perf_counter()
            fn()
            if i >= warmup:
                times[k].append(time.perf_counter() - t0)
    return times


def rotated(keys: list, i: int) -> list:
    """`keys` starting at position i (modulo their count): the same order on every rank."""
    s = i % len(keys) if keys else 0
    return keys[s:] + keys[:s]


def stats(times: list[float]) -> dict:
    """Median (robust), mean (what a sum of steps or collectives costs: throughput), min, max."""
    return {"median_s": statistics.median(times), "mean_s": statistics.fmean(times),
            "min_s": min(times), "max_s": max(times), "n": len(times)}


def collective_device():
    """Where tensors for the default group's collectives must live: the rank's GPU under NCCL
    (which takes no CPU tensors), the CPU under gloo."""
    import torch
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def slowest_rank(values: list[float]) -> list[float]:
    """Elementwise maximum over the processes of the default group: a step or a collective is
    as slow as its slowest rank."""
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def _base(out: str) -> str:
    return out[:-5] if out.endswith(".json") else out[:-3] if out.endswith(".md") else out


def check_out(out: str | None, overwrite: bool,
              extensions: tuple[str, ...] = (".json", ".md")) -> str | None:
    """Before measuring: `--out NAME` must not replace earlier results (NAME plus each of
    `extensions`) unless asked to, and its directory must exist (a long benchmark must not fail
    at the end for want of either). Returns NAME without its extension."""
    if not out:
        return None
    from ..errors import ConfigError
    base = _base(out)
    parent = os.path.dirname(base) or "."
    if not os.path.isdir(parent):
        raise ConfigError(f"--out {out}: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"--out {out}: the directory {parent} is not writable")
    if not overwrite:
        for path in (base + ext for ext in extensions):
            if os.path.exists(path):
                raise ConfigError(f"{path} exists: choose another --out or pass --overwrite")
    return base


def write_results(out: str, result: dict, markdown: str, overwrite: bool = False) -> list[str]:
    """NAME.json and NAME.md for `--out NAME` (a trailing .json or .md is dropped), written
    whole through a temporary file so an interrupted run leaves no half-written result. Without
    `overwrite`, a file that appeared since `check_out` (another run) is kept, never replaced:
    the new one is linked into place only where no file stands."""
    from ..errors import ConfigError
    base = _base(out)
    meta = {"date": time.strftime("%Y-%m-%d"), **_machine()}
    paths = []
    for path, text in ((base + ".json", json.dumps({**meta, **result}, indent=1)),
                       (base + ".md", markdown + "\n")):
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            with open(tmp, "w") as f:
                f.write(text)
            if overwrite:
                os.replace(tmp, path)
            else:
                os.link(tmp, path)  # fails if the path exists
                os.remove(tmp)
        except FileExistsError:
            os.remove(tmp)
            raise ConfigError(f"{path} appeared while measuring: kept it; rerun with another "
                              f"--out or --overwrite") from None
        except OSError as e:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise ConfigError(f"cannot write {path}: {e.strerror}") from None
        paths.append(path)
    return paths


def _cpu_model() -> str:
    """The CPU's model name where the OS tells it (Linux), else the architecture: results from
    two hosts must be told apart (BENCHMARKS.md: the same training runs end up to 0.0033 apart
    in loss on AVX2 and AVX-512 hosts)."""
    import platform
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _machine() -> dict:
    import torch
    info = {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": _cpu_model(), "cores": os.cpu_count(),
            # the kernel set torch runs (ATEN_CPU_CAPABILITY): AVX2 and AVX-512 hosts differ
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def report_and_finish(result: dict, text: str, out: str | None, overwrite: bool,
                      hint: str = "") -> None:
    """Under torchrun: every rank leaves the process group, then rank 0 prints the tables and
    writes --out (a failed write is then rank 0's one-line error; no rank waits on it)."""
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()
    if result["rank"] == 0:
        print(text)
        if out:
            paths = write_results(out, result, text, overwrite)
            print(f"\nwrote {' and '.join(paths)}"
                  + (hint.format(path=paths[0]) if hint else ""))
