"""Run metrics: JSONL (one object a line), TensorBoard event files, and the progress bar."""
from __future__ import annotations

import json
import os
import sys

import torch


class _NoBar:
    def update(self, n=1):
        pass

    def set_postfix(self, **kw):
        pass

    def write(self, text):
        pass

    def close(self):
        pass


class _PrintBar(_NoBar):
    def write(self, text):
        print(text, flush=True)


class _LogLines(_PrintBar):
    """For output that is not a terminal (a log file, CI): no carriage-return frames, but a
    plain line at every tenth of the run besides the evaluation lines."""

    def __init__(self, total: int, initial: int):
        self.total, self.n, self.postfix = total, initial, {}
        self.every = max(total // 10, 1)

    def update(self, n=1):
        self.n += n
        if self.n % self.every == 0 or self.n == self.total:
            extra = ", ".join(f"{k} {v}" for k, v in self.postfix.items())
            print(f"iter {self.n}/{self.total}" + (f": {extra}" if extra else ""), flush=True)

    def set_postfix(self, **kw):
        self.postfix = kw


class MetricsLog:
    """`metrics.jsonl` and `tb/` in out_dir (rank 0 only). On resume, lines past the resumed
    iteration (progress the killed run made after its last checkpoint) are dropped."""

    def __init__(self, out_dir: str, enabled: bool, tensorboard: bool,
                 truncate_after: int | None = None):
        self.enabled = enabled
        self.file = self.tb = None
        if not enabled:
            return
        path = os.path.join(out_dir, "metrics.jsonl")
        if truncate_after is not None and os.path.exists(path):
            keep = []
            with open(path) as f:
                for line in f:
                    try:
                        if json.loads(line)["iter"] <= truncate_after:
                            keep.append(line)
                    except (json.JSONDecodeError, KeyError, TypeError):
                        pass  # a line cut short by the crash
            with open(path + ".tmp", "w") as f:
                f.writelines(keep)
            os.replace(path + ".tmp", path)
        elif truncate_after is None and os.path.exists(path):
            os.replace(path, path + ".prev")  # a fresh run: keep the old log, never overwrite it
        self.file = open(path, "a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(os.path.join(out_dir, "tb"), purge_step=truncate_after)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            it = record["iter"]
            for k, v in record.items():
                if k not in ("kind", "iter") and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{record['kind']}/{k}", v, it)

    def progress(self, total: int, initial: int, enabled: bool):
        if not self.enabled:
            return _NoBar()
        if not enabled:
            return _PrintBar()
        from tqdm import tqdm
        # disable=None is tqdm's own rule: no bar when the output is not a terminal
        bar = tqdm(total=total, initial=initial, unit="it", dynamic_ncols=True, file=sys.stderr,
                   disable=None)
        return _LogLines(total, initial) if bar.disable else bar

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


def resident_mib() -> float | None:
    """This process's resident memory now (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, ValueError, IndexError):
        return None


def peak_resident_mib() -> float:
    """The most resident memory this process has held (getrusage: KiB on Linux, bytes on macOS)."""
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 2 ** 10


class SavedActivations:
    """Activation memory: the bytes autograd saves for the backward pass while a forward runs,
    each storage once, parameters left out. `saved_tensors_hooks` sees every saved tensor; what
    is saved at the end of the forward is what the process holds until backward frees it (the
    activation memory of Megatron-LM's arXiv:2205.05198), measured the same way on any device."""

    def __init__(self, params) -> None:
        self._params = {p.untyped_storage().data_ptr() for p in params}
        self._storages: dict[int, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in self._params:
            self._storages[storage.data_ptr()] = storage.nbytes()
        return t

    def __enter__(self) -> "SavedActivations":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    @property
    def mib(self) -> float:
        return sum(self._storages.values()) / 2 ** 20
