"""Failures and multi-node launches under torchrun (gloo on loopback)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from conftest import tiny_train_overrides, train_losses
from tpgpt.analysis.numerics import TRAIN_LOSS_TOL64
from dist_common import HERE, free_port, torchrun

CONFIG = os.path.join(HERE, "..", "configs", "shakespeare_char_cpu.toml")
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def _args(data, out, **kw):
    return ["-m", "tpgpt", "train", CONFIG,
            *[f"--{k}={v}" for k, v in tiny_train_overrides(data, out, **kw).items()]]


def _worker_pid(out_dir, local_rank: int) -> int | None:
    """The pid of the torchrun worker with LOCAL_RANK=local_rank training into out_dir."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if f"--out_dir={out_dir}".encode() in cmd and f"LOCAL_RANK={local_rank}".encode() in env:
            return int(pid)
    return None


KW = dict(tp=2, sync="spd", n_layer=4, n_head=4, n_embd=64, max_iters=200, lr_decay_iters=200,
          eval_interval=50, log_interval=10)


def test_killed_rank_stops_the_others_and_restart_resumes(text_data, tmp_path):
    data, _ = text_data
    torchrun(2, "-m", _args(data, tmp_path / "full", **KW)[1:])
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "--max-restarts=1", *_args(data, run, **KW)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=ENV)
    deadline = time.time() + 120
    while not (run / "last" / "state.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    victim = _worker_pid(run, 1)
    assert victim is not None and proc.poll() is None, "no worker to kill"
    os.kill(victim, signal.SIGKILL)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out[-3000:]
    assert f"failed (exitcode: -9) local_rank: 1 (pid: {victim})" in out  # the lost rank, named
    assert "restart 1 by torchrun: resuming from" in out
    assert train_losses(run) == train_losses(tmp_path / "full")  # bit for bit at this layout


def test_without_restarts_the_survivor_exits_promptly(text_data, tmp_path):
    data, _ = text_data
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *_args(data, run, **{**KW, "max_iters": 100000, "lr_decay_iters": 100000})]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=ENV)
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    victim = _worker_pid(run, 1)
    assert victim is not None
    t0 = time.time()
    os.kill(victim, signal.SIGKILL)
    out, _ = proc.communicate(timeout=90)
    assert time.time() - t0 < 60
    assert proc.returncode != 0
    assert "local_rank: 1" in out and "exitcode: -9" in out


def test_two_nodes_on_loopback_equal_one_node(text_data, tmp_path):
    """Two torchrun 'nodes' of 2 processes, meeting at a c10d rendezvous endpoint, train the
    same model to the same losses as one torchrun of 4 processes (tp=2 x dp=2)."""
    data, _ = text_data
    kw = dict(tp=2, sync="tp,spd", gradient_accumulation_steps=2, n_head=4, max_iters=30,
              dtype="float64")
    torchrun(4, "-m", _args(data, tmp_path / "one", **kw)[1:])
    port = free_port()
    procs = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}",
               "--nproc_per_node=2", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
               "--rdzv-id=tpgpt-test", *_args(data, tmp_path / "two", **kw)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, env=ENV))
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][-2000:] + outs[1][-2000:]
    one, two = train_losses(tmp_path / "one"), train_losses(tmp_path / "two")
    assert one.keys() == two.keys()
    assert max(abs(one[k] - two[k]) for k in one) <= TRAIN_LOSS_TOL64


def _divergent_run(tmp_path, data_dir, env_extra) -> subprocess.CompletedProcess:
    env = dict(ENV, **env_extra)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", os.path.join(HERE, "rank_divergent.py"),
                           *_args(data_dir, tmp_path / "run", **KW)[2:]],
                          capture_output=True, text=True, env=env, timeout=120,
                          cwd=tmp_path / "a")


def test_a_rank_with_another_config_or_data_is_caught_at_start(text_data, tmp_path):
    import shutil
    data, _ = text_data
    for node in ("a", "b"):  # two "nodes", each with its own copy at the same relative path
        shutil.copytree(data, tmp_path / node / "d")
    with open(tmp_path / "b" / "d" / "val.bin", "r+b") as f:  # one token differs on node b
        f.seek(100)
        token = f.read(1)[0]
        f.seek(100)
        f.write(bytes([(token + 1) % 20]))
    proc = _divergent_run(tmp_path, "d", {"TPGPT_TEST_RANK1_ARGS": "--seed=7"})
    assert proc.returncode != 0
    assert "rank 1 has another config than rank 0: seed=7 (rank 0: 1337)" in proc.stderr
    proc = _divergent_run(tmp_path, "d", {"TPGPT_TEST_RANK1_CWD": str(tmp_path / "b")})
    assert proc.returncode != 0
    assert "rank 1 sees other data than rank 0 in d" in proc.stderr, proc.stderr[-2000:]
