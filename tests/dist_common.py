"""Shared by the distributed worker and the test that checks it: model shape and batch."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import torch

from tpgpt import GPTConfig

CONFIG = GPTConfig(block_size=8, vocab_size=64, n_layer=6, n_head=4, n_embd=32, bias=True)
# the Llama family with everything switched on: GQA with 2 KV heads (replicated over 2 ranks at
# tp=4), Qwen2's q/k/v biases, Qwen3's q/k norms, an untied head, llama3 rope scaling
LLAMA = GPTConfig(block_size=8, vocab_size=64, n_layer=6, n_head=8, n_embd=32, bias=False,
                  family="llama", activation="silu", n_kv_head=2, intermediate_size=48,
                  norm_eps=1e-6, rope_theta=500000.0, rope_scaling="llama3",
                  rope_original_context=4, tie_embeddings=False, qkv_bias=True, qk_norm=True)
DTYPE = torch.float64  # distributed == simulated is an exactness check (analysis/numerics.py)
HERE = os.path.dirname(os.path.abspath(__file__))


def make_batch():
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, CONFIG.vocab_size, (2, 8), generator=g)
    targets = torch.randint(0, CONFIG.vocab_size, (2, 8), generator=g)
    targets[1, :2] = -1
    return idx, targets


def case_config(case: str) -> GPTConfig:
    """The model of a case: GPT-2's CONFIG, or LLAMA with @llama."""
    return LLAMA if "llama" in case.split("@")[1:] else CONFIG


def case_options(case: str) -> tuple[str, dict]:
    """'PLAN[@llama][@vp][@bfloat16|@int8][@ladder][@sp][@compile]' -> (plan, ParallelGPT
    options)."""
    sync, *opts = case.split("@")
    out = {"vocab_parallel": "vp" in opts, "ladder": "ladder" in opts,
           "sequence_parallel": "sp" in opts}
    for dtype in ("bfloat16", "int8"):
        if dtype in opts:
            out.update(sync_dtype=dtype, sync_block=8)
    return sync, out


def wire_inputs(tp: int) -> dict:
    """name -> (per-rank float32 partial sums [tp, ...], SyncWire): a compressed all-reduce of
    these must give the same bits simulated and distributed. 41 tokens x 24 channels in blocks
    of 8: 123 blocks, which 4 ranks do not divide (the two-shot chunks are padded)."""
    from tpgpt.comm.wire import SyncWire
    g = torch.Generator().manual_seed(3)
    x = torch.randn(tp, 1, 41, 24, generator=g) * torch.rand(tp, 1, 41, 1, generator=g) * 10
    return {d: (x, SyncWire(d, 8)) for d in ("bfloat16", "int8")}


def greedy_decode(model, compile: bool = False) -> dict:
    """Greedy decoding with the KV cache from a 3-token prompt past block_size (10 new tokens,
    one slide of the window): the tokens and the logits of every step (`compile`: the decode
    step compiled)."""
    from tpgpt.model.generation import decode
    steps = list(decode(model.eval(), make_batch()[0][:, :3], 10, temperature=0,
                        compile=compile))
    return {"tokens": torch.cat([t for _, t in steps], 1),
            "logits": torch.stack([lg for lg, _ in steps])}


def free_port() -> int:
    """A TCP port free on loopback now (for a process group's store)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, script: str, args: list[str], timeout: float = 300,
             extra: list[str] | None = None) -> subprocess.CompletedProcess:
    """torchrun on loopback with a free port; fails the test with torchrun's own output."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", *(extra or []), script, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise AssertionError(f"torchrun exited {proc.returncode}:\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[:3000]}")
    return proc
