"""Ten SIGKILLs at random points of one training run, some while a checkpoint is being written;
after each, `--resume` finds a valid checkpoint, and the run ends with the uninterrupted run's
losses, bit for bit."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

from conftest import eval_losses, tiny_train_overrides, train_losses
from dist_common import HERE
from tpgpt.checkpoint import load_state

CONFIG = os.path.join(HERE, "..", "configs", "shakespeare_char_cpu.toml")
KW = dict(tp=2, sync="tp,spd", n_head=4, n_embd=64, max_iters=600, lr_decay_iters=600,
          eval_interval=25, eval_iters=2, log_interval=1, dropout=0.1)


def test_ten_random_kills_then_resume(text_data, tmp_path):
    data, _ = text_data
    from tpgpt.train.config import load_config
    from tpgpt.train import Trainer
    full = tmp_path / "full"
    t = Trainer(load_config(None, tiny_train_overrides(data, full, **KW)), quiet=True)
    t.run()
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "tpgpt", "train", CONFIG,
           *[f"--{k}={v}" for k, v in tiny_train_overrides(data, run, **KW).items()]]
    rng = random.Random(0)
    during_save = resumed = 0
    for kill in range(10):
        resume = _has_checkpoint(run)
        resumed += resume
        proc = subprocess.Popen(cmd + (["--resume"] if resume else []),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # Where to kill is chosen in iterations, not seconds, so a slow or busy machine kills
        # at the same kinds of points as a fast one: in a save, or 1-30 iterations past the
        # point the run had reached (log_interval=1 logs every iteration)
        if kill % 3 == 0:  # wait for a save in progress, then kill it there
            _wait(proc, lambda: (run / "last.tmp").exists())
            during_save += (run / "last.tmp").exists()
        else:
            target = _last_iter(run) + rng.randint(1, 30)
            _wait(proc, lambda target=target: _last_iter(run) >= target)
        if proc.poll() is not None:
            raise AssertionError(f"kill {kill}: the run ended first: {proc.stderr.read()[-500:]}")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert (run / "summary.json").exists() is False
    assert during_save >= 2, "the kills meant to land during a save did not"
    assert resumed >= 5, "too few kills landed after a checkpoint to test resuming"
    done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert load_state(str(run / "last"))["iter"] == KW["max_iters"]
    assert train_losses(run) == train_losses(full)
    assert eval_losses(run) == eval_losses(full)


def _has_checkpoint(run) -> bool:
    return (run / "last" / "state.json").exists() or (run / "last.old").exists()


def _last_iter(run) -> int:
    """The last iteration in metrics.jsonl (0 before the first; a line cut by a kill is skipped)."""
    last = 0
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    for line in lines:
        try:
            last = json.loads(line).get("iter", last)
        except json.JSONDecodeError:
            pass
    return last


def _wait(proc, condition, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not condition() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.0005)
