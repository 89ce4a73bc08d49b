"""What a training run is built from: the process layout, the data, the model in the parallel
form the layout asks for (dense, simulated TP, distributed TP, pipeline stages, DDP) and AdamW.

Every process builds the same dense GPT from the seed and keeps its shards, so a seed gives the
same model at any layout.
"""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from ..comm.layout import Layout, setup_layout
from ..comm.tp_comm import TPComm
from ..data import TokenFile, check_tokens_in_vocab, load_meta, token_dtype
from ..errors import ConfigError
from ..model import GPT, GPTConfig
from ..model.parallel_gpt import ParallelGPT
from .config import TrainConfig
from .optim import make_optimizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}


@dataclass
class Setup:
    cfg: TrainConfig
    layout: Layout
    mesh: object | None  # the (pp, dp, tp) DeviceMesh under torchrun, else None
    meta: dict  # the dataset's meta.json (the tokenizer)
    model_config: GPTConfig
    files: dict[str, TokenFile]  # "train", "val"
    accum: int  # micro-batches per optimizer step on this data-parallel rank
    inner: torch.nn.Module  # GPT, ParallelGPT, or with pp > 1 this process's RankShard
    model: torch.nn.Module  # what a step calls: `inner`, or DDP around it
    comm: TPComm | None  # the TP communication (None for the dense model)
    pipeline: object | None  # train.pipeline.Pipeline when pp > 1
    optimizer: torch.optim.Optimizer
    autocast: object  # a context manager: nullcontext() in float32
    scaler: torch.amp.GradScaler  # enabled for float16 only
    # what autograd saved for backward in the run's first micro-batch, MiB (train/metrics.py)
    saved_activations_mib: float | None = None
    # compile: the forward and backward collectives of one micro-batch, recorded in the run's
    # first one, run eagerly (a compiled graph sends them without recording them: tp_comm.py)
    compiled_events: list | None = None

    @property
    def device(self) -> torch.device:
        return self.layout.device

    @property
    def master(self) -> bool:
        return self.layout.rank == 0

    def group(self, dim: str):
        return self.mesh.get_group(dim) if self.mesh is not None else None

    @property
    def tp_mesh(self):
        """The TP processes' 1-D mesh, on which checkpoints hold DTensor shards (or None)."""
        return self.mesh["tp"] if self.mesh is not None and self.layout.tp_procs > 1 else None

    @property
    def parallel(self) -> bool:
        """Whether the model has a rank dimension (ParallelGPT or a pipeline's RankShard)."""
        return self.comm is not None

    def loss(self, model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with self.autocast:
            if isinstance(self.inner, ParallelGPT):
                return model(x, y, return_logits=False)[1]
            return model(x, y)[1]

    def dp_mean(self, value: float) -> float:
        """The mean of a per-process number over data-parallel ranks."""
        if self.layout.dp == 1:
            return value
        import torch.distributed as dist
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, group=self.group("dp"))
        return t.item() / self.layout.dp


def build_setup(cfg: TrainConfig) -> Setup:
    layout, mesh = setup_layout(cfg)
    meta = load_meta(cfg.data_dir)
    vocab = cfg.vocab_size or meta["vocab_size"]
    if not cfg.vocab_size and cfg.vocab_parallel:  # from the data: pad to a multiple of tp
        vocab = -(-vocab // cfg.tp) * cfg.tp
    if vocab < meta["vocab_size"]:
        raise ConfigError(f"vocab_size={vocab} is smaller than the data's vocabulary "
                          f"({meta['vocab_size']} in {cfg.data_dir}/meta.json)")
    files = {s: TokenFile(os.path.join(cfg.data_dir, f"{s}.bin"), cfg.block_size, vocab,
                          token_dtype(meta)) for s in ("train", "val")}
    for f in files.values():
        check_tokens_in_vocab(f.path, meta["vocab_size"], dtype=f.dtype)
    if cfg.gradient_accumulation_steps % layout.dp:
        raise ConfigError(f"gradient_accumulation_steps={cfg.gradient_accumulation_steps} is "
                          f"not divisible by dp={layout.dp}")
    accum = cfg.gradient_accumulation_steps // layout.dp
    if layout.distributed:
        check_ranks_agree(cfg, meta, files, layout.world)
    model_config = cfg.model_config(vocab)
    inner, model, comm, pipeline = build_model(cfg, layout, mesh, model_config, accum)
    ptdtype = DTYPES[cfg.dtype]
    autocast = nullcontext() if ptdtype in (torch.float32, torch.float64) else \
        torch.autocast(layout.device.type, dtype=ptdtype)
    return Setup(cfg=cfg, layout=layout, mesh=mesh, meta=meta, model_config=model_config,
                 files=files, accum=accum, inner=inner, model=model, comm=comm,
                 pipeline=pipeline,
                 optimizer=make_optimizer(inner, cfg.weight_decay, cfg.learning_rate,
                                          (cfg.beta1, cfg.beta2)),
                 autocast=autocast,
                 scaler=torch.amp.GradScaler(layout.device.type,
                                             enabled=ptdtype == torch.float16))


def build_model(cfg: TrainConfig, layout: Layout, mesh, model_config: GPTConfig, accum: int):
    """(inner, model, comm, pipeline): the dense GPT from the seed, in this layout's form."""
    torch.manual_seed(cfg.seed)  # the same dense weights on every process, at any tp
    dense = GPT(model_config)  # initialised in float32, so float64 runs start from the same
    if cfg.dtype == "float64":
        dense.double()
    pipeline = comm = None
    if cfg.tp == 1 and layout.pp == 1:
        inner = dense
    else:
        comm = _tp_comm(cfg, layout, mesh)
        inner = ParallelGPT.from_dense(dense, tp=cfg.tp, sync=cfg.sync, comm=comm,
                                       vocab_parallel=cfg.vocab_parallel,
                                       sync_dtype=cfg.sync_dtype, sync_block=cfg.sync_block,
                                       ladder=cfg.ladder,
                                       sequence_parallel=cfg.sequence_parallel)
    inner.to(layout.device)
    if cfg.compile and layout.pp == 1:
        # In place, so parameter names and checkpoints are unchanged; static shapes (the
        # shapes of a run never change); one graph, collectives included (comm/tp_comm.py:
        # train_step records the first micro-batch's eagerly and adds them for the others).
        inner.compile(dynamic=False, fullgraph=True)
    model = inner
    if layout.pp > 1:
        from .pipeline import Pipeline
        pipeline = Pipeline(inner, pp=layout.pp, pp_rank=layout.pp_rank,
                            pp_group=mesh.get_group("pp"), schedule=cfg.pp_schedule,
                            virtual=cfg.pp_virtual_stages, n_micro=accum, device=layout.device,
                            dp=layout.dp, dp_group=mesh.get_group("dp"))
        inner = model = pipeline.shard  # DDP, if any, wraps each stage
    elif layout.dp > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        device = layout.device
        model = DDP(inner, process_group=mesh.get_group("dp"),
                    device_ids=[device.index] if device.type == "cuda" else None)
    return inner, model, comm, pipeline


def _tp_comm(cfg: TrainConfig, layout: Layout, mesh) -> TPComm:
    """Simulated when one process holds every TP rank, else over the mesh's TP group."""
    if not (layout.distributed and layout.tp_procs > 1):
        return TPComm(cfg.tp)
    import torch.distributed as dist

    from ..comm.distributed import DistributedComm
    # the replicated-grad bucket sums over this pipeline stage's TP x DP processes
    grad_group = None
    if layout.dp > 1:
        grid = mesh.mesh
        stage_groups = [dist.new_group(grid[i].flatten().tolist())
                        for i in range(layout.pp)] if layout.pp > 1 else [None]
        grad_group = stage_groups[layout.pp_rank] or dist.group.WORLD
    return DistributedComm(cfg.tp, group=mesh.get_group("tp"), grad_scale=1.0 / layout.dp,
                           grad_group=grad_group)


def data_fingerprint(meta: dict, files: dict[str, TokenFile]) -> str:
    """sha256 of meta.json and of each token file's size, first and last MiB."""
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for f in files.values():
        size = os.path.getsize(f.path)
        h.update(str(size).encode())
        with open(f.path, "rb") as fh:
            h.update(fh.read(1 << 20))
            fh.seek(max(size - (1 << 20), 0))
            h.update(fh.read())
    return h.hexdigest()


def check_ranks_agree(cfg: TrainConfig, meta: dict, files: dict[str, TokenFile],
                      world: int) -> None:
    """Every rank must train on rank 0's config and data; caught here, not as silently
    different shards later."""
    import torch.distributed as dist
    mine = {"config": cfg.to_dict(), "data": data_fingerprint(meta, files)}
    everyone: list = [None] * world
    dist.all_gather_object(everyone, mine)
    ref = everyone[0]
    for rank, other in enumerate(everyone):
        keys = [k for k in ref["config"] if other["config"].get(k) != ref["config"][k]]
        if keys:
            raise ConfigError(f"rank {rank} has another config than rank 0: " + ", ".join(
                f"{k}={other['config'][k]!r} (rank 0: {ref['config'][k]!r})" for k in keys))
        if other["data"] != ref["data"]:
            raise ConfigError(f"rank {rank} sees other data than rank 0 in "
                              f"{cfg.data_dir} (train.bin/val.bin/meta.json differ)")
