"""`tpgpt train`: nanoGPT's training loop for the dense, simulated and distributed GPT.

One process: dense GPT when tp=1, simulated TP otherwise. Under torchrun: TP groups of
`tp_procs` processes (tp / tp_procs ranks each) times data parallelism over the rest (DDP).
Every optimizer step sees the same global batch, whatever the layout: the step's
`gradient_accumulation_steps x batch_size` sequences are drawn from one seeded generator and
data-parallel rank d takes its share of micro-batches, so tp=1 x dp=2 reproduces single-process
gradient accumulation.
"""
from __future__ import annotations

import base64
import json
import statistics
from array import array
import math
import os
import time
from contextlib import nullcontext

import torch

from .checkpoint import (find_checkpoint, load_rank_state, load_sharded, load_state,
                         save_checkpoint)
from .comm import TPComm
from .config import TrainConfig
from .data import TokenFile, check_tokens_in_vocab, load_meta
from .errors import ConfigError
from .layout import barrier_fn, setup_layout
from .metrics import MetricsLog, peak_resident_mib, resident_mib
from .model import GPT
from .optim import clip_grad_norm, lr_at, make_optimizer
from .parallel_model import ParallelGPT
from .plan import count_collectives
from .sharded_state import ShardedState

# keys that must match the checkpoint for --resume to continue the same run; the layout (tp,
# tp_procs, processes, vocab_parallel) may change where the model stays the same function
RESUME_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "bias", "dropout",
               "sync", "batch_size", "gradient_accumulation_steps", "seed", "data_dir", "dtype")


def _spread_ms(seconds) -> dict | None:
    """Median, mean, 5th and 95th percentile and extremes of iteration times, in ms."""
    if not seconds:
        return None
    ms = [1e3 * s for s in seconds]
    q = statistics.quantiles(ms, n=20, method="inclusive") if len(ms) > 1 else [ms[0]] * 19
    return {"n": len(ms), "median": statistics.median(ms), "mean": statistics.fmean(ms),
            "p5": q[0], "p95": q[-1], "min": min(ms), "max": max(ms)}


class Diverged(ConfigError):
    """The loss became NaN or infinite: the run stops, keeping its last good checkpoint."""


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False, quiet: bool = False,
                 overwrite: bool = False):
        self.cfg = cfg
        self.rss_before_mib = resident_mib()  # torch and the data reader, before any model
        if not resume and not overwrite and find_checkpoint(os.path.join(cfg.out_dir, "last")):
            raise ConfigError(f"{cfg.out_dir} holds a checkpoint: pass --resume to continue it, "
                              f"--overwrite to start over, or choose another out_dir")
        self.layout, self.mesh = setup_layout(cfg)
        self.tp_group = self.mesh.get_group("tp") if self.mesh is not None else None
        self.dp_group = self.mesh.get_group("dp") if self.mesh is not None else None
        # DTensor shards of checkpoints live on the TP processes' mesh
        self.tp_mesh = self.mesh["tp"] if self.mesh is not None and self.layout.tp_procs > 1 \
            else None
        self.master = self.layout.rank == 0
        self.quiet = quiet or not self.master
        self.meta = load_meta(cfg.data_dir)
        vocab = cfg.vocab_size or self.meta["vocab_size"]
        if not cfg.vocab_size and cfg.vocab_parallel:  # from the data: pad to a multiple of tp
            vocab = -(-vocab // cfg.tp) * cfg.tp
        if vocab < self.meta["vocab_size"]:
            raise ConfigError(f"vocab_size={vocab} is smaller than the data's vocabulary "
                              f"({self.meta['vocab_size']} in {cfg.data_dir}/meta.json)")
        self.model_config = cfg.model_config(vocab)
        self.files = {s: TokenFile(os.path.join(cfg.data_dir, f"{s}.bin"), cfg.block_size, vocab)
                      for s in ("train", "val")}
        for f in self.files.values():
            check_tokens_in_vocab(f.path, self.meta["vocab_size"])
        if cfg.gradient_accumulation_steps % self.layout.dp:
            raise ConfigError(f"gradient_accumulation_steps={cfg.gradient_accumulation_steps} is "
                              f"not divisible by dp={self.layout.dp}")
        self.accum = cfg.gradient_accumulation_steps // self.layout.dp
        self.device = self.layout.device
        if self.layout.distributed:
            self._check_ranks_agree()
        self._build_model()
        self.ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                        "float16": torch.float16}[cfg.dtype]
        self.autocast = nullcontext() if self.ptdtype == torch.float32 else \
            torch.autocast(self.device.type, dtype=self.ptdtype)
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=self.ptdtype == torch.float16)
        self.optimizer = make_optimizer(self.inner, cfg.weight_decay, cfg.learning_rate,
                                        (cfg.beta1, cfg.beta2))
        self.batch_gen = torch.Generator().manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed + 1 + self.layout.dp_rank)  # dropout: same across a TP group
        self.iter = 0
        self.best_val = float("inf")
        self.last_eval: dict = {}
        self.resumed_at = None
        if resume:
            self._resume()

    # --- set-up ----------------------------------------------------------------------------
    def _data_fingerprint(self) -> str:
        """sha256 of meta.json and of each token file's size, first and last MiB."""
        import hashlib
        h = hashlib.sha256(json.dumps(self.meta, sort_keys=True).encode())
        for f in self.files.values():
            size = os.path.getsize(f.path)
            h.update(str(size).encode())
            with open(f.path, "rb") as fh:
                h.update(fh.read(1 << 20))
                fh.seek(max(size - (1 << 20), 0))
                h.update(fh.read())
        return h.hexdigest()

    def _check_ranks_agree(self) -> None:
        """Every rank must train on rank 0's config and data; caught here, not as silently
        different shards later."""
        import torch.distributed as dist
        mine = {"config": self.cfg.to_dict(), "data": self._data_fingerprint()}
        everyone: list = [None] * self.layout.world
        dist.all_gather_object(everyone, mine)
        ref = everyone[0]
        for rank, other in enumerate(everyone):
            keys = [k for k in ref["config"] if other["config"].get(k) != ref["config"][k]]
            if keys:
                raise ConfigError(f"rank {rank} has another config than rank 0: " + ", ".join(
                    f"{k}={other['config'][k]!r} (rank 0: {ref['config'][k]!r})" for k in keys))
            if other["data"] != ref["data"]:
                raise ConfigError(f"rank {rank} sees other data than rank 0 in "
                                  f"{self.cfg.data_dir} (train.bin/val.bin/meta.json differ)")


    def _build_model(self) -> None:
        cfg, layout = self.cfg, self.layout
        torch.manual_seed(cfg.seed)  # the same dense weights on every process, at any tp
        dense = GPT(self.model_config)
        self.pipeline = None
        if cfg.tp == 1 and layout.pp == 1:
            self.inner, self.comm = dense, None
        else:
            if layout.distributed and layout.tp_procs > 1:
                from .distributed import DistributedComm
                import torch.distributed as dist
                # the replicated-grad bucket sums over this pipeline stage's TP x DP processes
                grid = self.mesh.mesh
                stage_groups = [dist.new_group(grid[i].flatten().tolist())
                                for i in range(layout.pp)] if layout.pp > 1 else [None]
                comm = DistributedComm(
                    cfg.tp, group=self.tp_group, grad_scale=1.0 / layout.dp,
                    grad_group=(stage_groups[layout.pp_rank] or dist.group.WORLD)
                    if layout.dp > 1 else None)
            else:
                comm = TPComm(cfg.tp)
            self.inner = ParallelGPT.from_dense(dense, tp=cfg.tp, sync=cfg.sync, comm=comm,
                                                vocab_parallel=cfg.vocab_parallel)
            self.comm = comm
        self.inner.to(self.device)
        if cfg.compile and layout.pp == 1:
            # In place, so parameter names and checkpoints are unchanged; static shapes (the
            # shapes of a run never change). Each collective stays a graph break: the comm
            # counter records it in Python, which keeps the counts exact.
            self.inner.compile(dynamic=False)
        self.model = self.inner
        if layout.pp > 1:
            from .pipeline import Pipeline
            self.pipeline = Pipeline(self.inner, pp=layout.pp, pp_rank=layout.pp_rank,
                                     pp_group=self.mesh.get_group("pp"),
                                     schedule=cfg.pp_schedule, virtual=cfg.pp_virtual_stages,
                                     n_micro=self.accum, device=self.device, dp=layout.dp,
                                     dp_group=self.dp_group)
            self.inner = self.model = self.pipeline.shard  # DDP, if any, wraps each stage
        elif layout.dp > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP
            self.model = DDP(self.inner, process_group=self.dp_group,
                             device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _resume(self) -> None:
        ckpt = os.path.join(self.cfg.out_dir, "last")
        if find_checkpoint(ckpt) is None:
            raise ConfigError(f"--resume: no checkpoint in {ckpt}")
        state = load_state(ckpt)
        saved = state.get("config", {})
        diff = [k for k in RESUME_KEYS if k in saved and saved[k] != getattr(self.cfg, k)]
        if diff:
            raise ConfigError("--resume: the config differs from the checkpoint's in "
                              + ", ".join(f"{k} ({saved[k]!r} -> {getattr(self.cfg, k)!r})"
                                          for k in diff))
        all_sync = all(self.inner.plan.bits) if isinstance(self.inner, ParallelGPT) else True
        if saved.get("tp", self.cfg.tp) != self.cfg.tp and not all_sync:
            raise ConfigError(f"--resume: tp {saved['tp']} -> {self.cfg.tp} with sync="
                              f"{self.cfg.sync!r}: a plan that drops syncs is another model at "
                              f"another tp (only the all-sync plan 'tp' can change tp)")
        load_sharded(state["path"], ShardedState(self.inner, self.optimizer, self.tp_mesh),
                     distributed=self.layout.distributed)
        self.batch_gen.set_state(torch.frombuffer(
            bytearray(base64.b64decode(state["batch_rng"])), dtype=torch.uint8))
        same_layout = state.get("layout", {}).get("world") == self.layout.world
        rs = load_rank_state(state["path"], self.layout.rank) if same_layout else {}
        if "torch_rng" in rs:
            torch.set_rng_state(rs["torch_rng"])
        else:  # another layout: dropout masks are drawn afresh (they differ per layout anyway)
            torch.manual_seed(self.cfg.seed + 1 + self.layout.dp_rank + 7 * state["iter"])
        self.iter = state["iter"]
        self.best_val = state["best_val_loss"]
        self.last_eval = {"train": state["train_loss"], "val": state["val_loss"]}
        self.resumed_at = self.iter

    # --- steps -----------------------------------------------------------------------------
    def _loss(self, model, x, y):
        with self.autocast:
            if isinstance(self.inner, ParallelGPT):
                return model(x, y, return_logits=False)[1]
            return model(x, y)[1]

    def _dp_mean(self, value: float) -> float:
        if self.layout.dp == 1:
            return value
        import torch.distributed as dist
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, group=self.dp_group)
        return t.item() / self.layout.dp

    def train_step(self) -> dict:
        cfg = self.cfg
        lr = lr_at(self.iter, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.comm is not None:
            self.comm.counter.reset()
        offsets = self.files["train"].random_offsets(
            (cfg.gradient_accumulation_steps, cfg.batch_size), self.batch_gen)
        mine = offsets[self.layout.dp_rank * self.accum:(self.layout.dp_rank + 1) * self.accum]
        if self.pipeline is not None:
            return self._pipeline_step(mine, lr)
        total = 0.0
        for micro in range(self.accum):
            x, y = (t.to(self.device) for t in self.files["train"].batch(mine[micro]))
            last = micro == self.accum - 1
            ctx = self.model.no_sync() if self.layout.dp > 1 and not last else nullcontext()
            with ctx:
                loss = self._loss(self.model, x, y) / self.accum
                self.scaler.scale(loss).backward()
            total += loss.item()
        if isinstance(self.inner, ParallelGPT):
            self.inner.sync_replicated_grads()
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            clip_grad_norm(self.model, cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        events = self.comm.counter.events if self.comm is not None else []
        return {"loss": self._dp_mean(total), "lr": lr, "collectives": len(events),
                "comm_bytes": sum(e.nbytes for e in events)}

    def _pipeline_step(self, mine: torch.Tensor, lr: float) -> dict:
        x, y = self._stack(self.files["train"], mine)
        with self.autocast:
            losses = self.pipeline.train_step(x, y)
        self.pipeline.sync_grads()
        if self.cfg.grad_clip > 0:
            self.pipeline.clip_grad_norm(self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        events = self.comm.counter.events if self.comm is not None else []
        return {"loss": self._dp_mean(sum(losses) / len(losses)), "lr": lr,
                "collectives": len(events), "comm_bytes": sum(e.nbytes for e in events)}

    def _stack(self, file: TokenFile, offsets: torch.Tensor):
        """Micro-batches [n, B] of offsets -> one batch [n * B, T] (the pipeline splits it)."""
        xs, ys = zip(*(file.batch(o) for o in offsets))
        return torch.cat(xs).to(self.device), torch.cat(ys).to(self.device)

    @torch.no_grad()
    def _pipeline_eval(self, file: TokenFile, offsets: torch.Tensor) -> float:
        """Sum of the losses of this dp rank's eval batches, n_micro at a time (padded)."""
        mine = list(range(self.layout.dp_rank, self.cfg.eval_iters, self.layout.dp))
        n = self.accum
        total = 0.0
        for i in range(0, len(mine), n):
            chunk = mine[i:i + n]
            padded = chunk + [chunk[-1]] * (n - len(chunk))
            with self.autocast:
                losses = self.pipeline.eval_step(*self._stack(file, offsets[padded]))
            total += sum(losses[:len(chunk)])
        return total

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss over eval_iters batches per split, drawn from a generator seeded by the
        iteration (so evaluation never disturbs, nor depends on, the training batches)."""
        cfg = self.cfg
        self.inner.eval()
        out = {}
        for i, split in enumerate(("train", "val")):
            g = torch.Generator().manual_seed(cfg.seed * 7919 + 2 * self.iter + i)
            offsets = self.files[split].random_offsets((cfg.eval_iters, cfg.batch_size), g)
            if self.pipeline is not None:
                out[split] = self._dp_mean(self._pipeline_eval(self.files[split], offsets)) \
                    * self.layout.dp / cfg.eval_iters
                continue
            s = 0.0
            for k in range(self.layout.dp_rank, cfg.eval_iters, self.layout.dp):
                x, y = (t.to(self.device) for t in self.files[split].batch(offsets[k]))
                s += self._loss(self.inner, x, y).item()
            out[split] = self._dp_mean(s) * self.layout.dp / cfg.eval_iters
        self.inner.train()
        return out

    def save(self, name: str, with_optimizer: bool) -> None:
        state = {"iter": self.iter, "best_val_loss": self.best_val,
                 "train_loss": self.last_eval["train"], "val_loss": self.last_eval["val"],
                 "config": self.cfg.to_dict(),
                 "layout": {"world": self.layout.world, "tp": self.cfg.tp,
                            "tp_procs": self.layout.tp_procs, "dp": self.layout.dp,
                            "pp": self.layout.pp},
                 "model": {k: getattr(self.model_config, k) for k in
                           ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "dropout",
                            "bias")},
                 "batch_rng": base64.b64encode(self.batch_gen.get_state().numpy().tobytes())
                 .decode()}
        sharded = ShardedState(self.inner, self.optimizer if with_optimizer else None,
                               self.tp_mesh)
        save_checkpoint(os.path.join(self.cfg.out_dir, name), rank=self.layout.rank,
                        barrier=barrier_fn(self.layout), sharded=sharded, state=state,
                        meta=self.meta, distributed=self.layout.distributed,
                        rank_state={"torch_rng": torch.get_rng_state()} if with_optimizer
                        else None)

    # --- the loop --------------------------------------------------------------------------
    def planned_collectives(self) -> int:
        if self.cfg.tp == 1:
            return 0
        c = count_collectives(self.inner.plan, tp=self.cfg.tp, n_embd=self.cfg.n_embd,
                              bias=self.cfg.bias, batch_size=self.cfg.batch_size,
                              seq_len=self.cfg.block_size, vocab_parallel=self.cfg.vocab_parallel,
                              grad_clip=self.cfg.grad_clip > 0)
        fwd_bwd = sum(x.count for x in c if x.phase in ("fwd", "bwd"))
        return fwd_bwd * self.accum + sum(x.count for x in c if x.phase == "grad")

    def run(self) -> dict:
        cfg = self.cfg
        if self.master:
            os.makedirs(cfg.out_dir, exist_ok=True)
        log = MetricsLog(cfg.out_dir, enabled=self.master, tensorboard=cfg.tensorboard,
                         truncate_after=self.resumed_at)
        tokens_per_iter = cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size
        if not self.quiet:
            print(f"tpgpt train: {self.layout.describe(cfg)}; sync={cfg.sync!r}; "
                  f"{self.inner.get_num_params() / 1e6:.2f}M parameters"
                  f"{' on this rank' if self.layout.pp > 1 else ''}; {tokens_per_iter} tokens/iter "
                  f"(micro-batch {cfg.batch_size} x {self.accum} per rank x dp {self.layout.dp} "
                  f"x block {cfg.block_size})"
                  + (f"; resuming at iter {self.iter}" if self.resumed_at is not None else ""))
        bar = log.progress(total=cfg.max_iters, initial=self.iter,
                           enabled=cfg.progress and not self.quiet)
        t_start = time.perf_counter()
        t_last, iters_since = time.perf_counter(), 0
        train_time = 0.0
        step_s = array("d")  # every iteration's time, for the run's median and spread
        while True:
            if (self.iter % cfg.eval_interval == 0 or self.iter == cfg.max_iters) \
                    and self.iter != self.resumed_at:
                losses = self.evaluate()
                self._check_finite(losses["train"], losses["val"], what="evaluation")
                self.last_eval = losses
                log.write({"kind": "eval", "iter": self.iter, "train_loss": losses["train"],
                           "val_loss": losses["val"]})
                bar.write(f"iter {self.iter}: train loss {losses['train']:.4f}, "
                          f"val loss {losses['val']:.4f}")
                if self.iter > 0:
                    if losses["val"] < self.best_val:
                        self.best_val = losses["val"]
                        self.save("best", with_optimizer=False)
                    self.save("last", with_optimizer=True)
            if self.iter >= cfg.max_iters:
                break
            t0 = time.perf_counter()
            step = self.train_step()
            self._check_finite(step["loss"], what="training loss", it=self.iter)
            dt = time.perf_counter() - t0
            train_time += dt
            step_s.append(dt)
            self.iter += 1
            iters_since += 1
            bar.update(1)
            if self.iter % cfg.log_interval == 0 or self.iter == cfg.max_iters:
                now = time.perf_counter()
                tok_s = tokens_per_iter * iters_since / (now - t_last)
                t_last, iters_since = now, 0
                log.write({"kind": "train", "iter": self.iter, "loss": step["loss"],
                           "lr": step["lr"], "tokens_per_s": tok_s, "ms_per_iter": 1e3 * dt,
                           "collectives": step["collectives"], "comm_bytes": step["comm_bytes"]})
                bar.set_postfix(loss=f"{step['loss']:.4f}", tok_s=f"{tok_s:.0f}")
        bar.close()
        summary = {"final_train_loss": self.last_eval.get("train"),
                   "final_val_loss": self.last_eval.get("val"), "best_val_loss": self.best_val,
                   "iters": self.iter, "wall_s": time.perf_counter() - t_start,
                   "train_s": train_time, "tp": cfg.tp, "sync": cfg.sync,
                   "forward_syncs": self.inner.plan.num_syncs if cfg.tp > 1 else 0,
                   "collectives_per_step": self.planned_collectives(),
                   "step_ms": _spread_ms(step_s), "memory": self.memory_report(),
                   "resumed_at": self.resumed_at}
        log.close()
        if self.master:
            with open(os.path.join(cfg.out_dir, "summary.json"), "w") as f:
                json.dump(summary, f, indent=1)
        if not self.quiet:
            print(f"done: final val loss {summary['final_val_loss']:.4f} (best "
                  f"{summary['best_val_loss']:.4f}) after {summary['iters']} iters in "
                  f"{summary['wall_s']:.1f} s"
                  + (f" (median {summary['step_ms']['median']:.1f} ms per iteration)"
                     if summary["step_ms"] else "")
                  + f"; {summary['forward_syncs']} forward syncs per pass, "
                  f"{summary['collectives_per_step']} TP collectives per step")
        return summary

    def memory_report(self) -> dict:
        """Per rank: peak resident memory, resident memory before the model was built, the peak
        of CUDA allocations, and the plan's accounting of parameters + grads + AdamW state."""
        from .plan_report import memory_per_rank
        mine = {"rank": self.layout.rank, "peak_rss_mib": peak_resident_mib(),
                "rss_before_model_mib": self.rss_before_mib,
                "cuda_peak_allocated_mib": torch.cuda.max_memory_allocated(self.device) / 2 ** 20
                if self.device.type == "cuda" else None}
        ranks = [mine]
        if self.layout.distributed:
            import torch.distributed as dist
            ranks = [None] * self.layout.world
            dist.all_gather_object(ranks, mine)
        planned = None
        if self.layout.pp == 1:  # this process holds tp / tp_procs ranks, replicated parts once
            m = memory_per_rank(self.inner.config, self.cfg.tp, self.cfg.vocab_parallel)
            local_ranks = self.cfg.tp // self.layout.tp_procs
            # fp32 parameter, gradient and AdamW's two moments: 16 bytes per element
            planned = 16 * (local_ranks * m["sharded_elements"] + m["replicated_elements"])
        return {"per_rank": ranks, "planned_state_mib_per_process":
                planned / 2 ** 20 if planned is not None else None}

    def _check_finite(self, *values: float, what: str, it: int | None = None) -> None:
        """Stop before anything poisoned is saved; every rank sees the same (reduced) loss."""
        if all(math.isfinite(v) for v in values):
            return
        last = os.path.join(self.cfg.out_dir, "last")
        good = load_state(last)["iter"] if find_checkpoint(last) else None
        raise Diverged(f"{what} is {values[0] if not math.isfinite(values[0]) else values[-1]} "
                       f"at iteration {self.iter if it is None else it}: stopped; "
                       + (f"the last good checkpoint is {last} (iteration {good}), resume from it "
                          f"with a lower learning_rate" if good is not None else
                          "no checkpoint was written"))

    def close(self) -> None:
        """Wait for every process (the process group itself stays up for the next run)."""
        if self.layout.distributed:
            import torch.distributed as dist
            dist.barrier()
