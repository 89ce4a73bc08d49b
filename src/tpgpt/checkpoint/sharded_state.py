"""Layout-independent model and optimizer state for torch.distributed.checkpoint (DCP).

Each parameter, and each of its AdamW moments, is written in a *canonical* dense coordinate
system in which every tensor-parallel shard is one contiguous block along one dimension:

    qkv    attn.c_attn.weight  [C, 3, C]   (in, q|k|v, out)   shard dim 2: heads of q, k and v
           attn.c_attn.bias    [3, C]                         shard dim 1
    column weights (c_fc, q_proj, gate_proj, up_proj; k_proj, v_proj split by KV heads)
                               [in, out]                      shard dim 1
           their biases        [out]                          shard dim 0
    row    *.c_proj.weight     [in, C]     (in, out)          shard dim 0
    vocab  wte, lm_head        [V, C]      vocab-parallel     shard dim 0
    everything else            as the dense model             replicated

Which tensor is which is the family's layout table (model/family.py). A KV head held by several
ranks (tp > n_kv_head) is written whole, gathered from the ranks (its shards overlap, which a
DTensor shard cannot say).

(The fused c_attn is [q | k | v] with each part split by heads, so in nn.Linear's [3C, C] layout a
rank's shard is three separate blocks; the extra q|k|v axis makes it one.) A process's block is the
concatenation of its R local ranks' shards; with a TP group spread over processes the block is
a DTensor shard on that group's mesh, and DCP reshards on load: a checkpoint written at any
(tp, processes, dp) loads into any other, or into the dense GPT. Storage is DCP's Hugging Face
safetensors writer/reader: tensors and JSON headers only, nothing is unpickled.
"""
from __future__ import annotations

import torch

from ..model.family import kv_replicas, layouts, shard, unshard

RULES = {"qkv": ("qkv_w", "qkv_b"), "column": ("col_w", "col_b"), "kv": ("col_w", "col_b"),
         "row": ("row_w", None), "vocab": ("vocab", None), "replicated": ("rep", "rep")}


def _has_rank_dim(model) -> bool:
    """ParallelGPT and a pipeline's RankShard store [R, ...] shards; the dense GPT does not."""
    return getattr(model, "comm", None) is not None


def _rule(model, name: str) -> str:
    """The canonical coordinates of parameter `name` (the family's table says its layout)."""
    vp = getattr(model, "vocab_parallel", False)
    kind = layouts(model.config, vp).get(name, "replicated")
    if kind == "kv" and _has_rank_dim(model) and kv_replicas(model.config, model.tp) > 1:
        return "kv_whole"
    return RULES[kind][0 if name.endswith("weight") else 1]


def _to_canonical(model, rule: str, t: torch.Tensor) -> tuple[torch.Tensor, int | None]:
    """This process's block in canonical coordinates, and its shard dim (None: replicated)."""
    if _has_rank_dim(model):
        R = t.shape[0]
        if rule == "qkv_w":
            C, n = t.shape[1], t.shape[2] // 3
            return t.reshape(R, C, 3, n).permute(1, 2, 0, 3).reshape(C, 3, R * n), 2
        if rule == "qkv_b":
            n = t.shape[1] // 3
            return t.reshape(R, 3, n).permute(1, 0, 2).reshape(3, R * n), 1
        if rule == "col_w":
            return t.permute(1, 0, 2).reshape(t.shape[1], R * t.shape[2]), 1
        if rule in ("col_b", "row_w", "vocab"):
            return t.reshape(R * t.shape[1], *t.shape[2:]), 0
        return t, None
    # the dense GPT: nn.Linear [out, in] weights
    if rule == "qkv_w":
        C = t.shape[1]
        return t.reshape(3, C, C).permute(2, 0, 1), 2
    if rule == "qkv_b":
        return t.reshape(3, -1), 1
    if rule in ("col_w", "row_w"):
        return t.t(), {"col_w": 1, "row_w": 0}[rule]
    return t, (0 if rule in ("col_b", "vocab") else None)


def _from_canonical(model, rule: str, c: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Inverse of _to_canonical, shaped like the parameter `like`."""
    if _has_rank_dim(model):
        R = like.shape[0]
        if rule == "qkv_w":
            C, n = like.shape[1], like.shape[2] // 3
            return c.reshape(C, 3, R, n).permute(2, 0, 1, 3).reshape(like.shape)
        if rule == "qkv_b":
            return c.reshape(3, R, -1).permute(1, 0, 2).reshape(like.shape)
        if rule == "col_w":
            return c.reshape(like.shape[1], R, like.shape[2]).permute(1, 0, 2)
        return c.reshape(like.shape)
    if rule == "qkv_w":
        return c.permute(1, 2, 0).reshape(like.shape)
    if rule in ("col_w", "row_w"):
        return c.t()
    return c.reshape(like.shape)


def _global_shape(model, rule: str, local: torch.Tensor, dim: int | None) -> torch.Size:
    if dim is None or not _has_rank_dim(model):
        return local.shape
    shape = list(local.shape)
    shape[dim] = shape[dim] * model.tp // model.comm.local_ranks
    return torch.Size(shape)


class ShardedState:
    """Builds DCP state dicts for a model (and optionally its AdamW) and writes loaded values
    back. `mesh` is the 1-D device mesh of the TP group's processes, or None when one process
    holds every rank (dense, simulated)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                 mesh=None):
        self.model, self.optimizer, self.mesh = model, optimizer, mesh
        self.params = dict(model.named_parameters())
        # the parameters the optimizer updates (all of them in training; distillation trains a
        # few blocks): only those have AdamW moments to save
        self.optimized = set() if optimizer is None else \
            {id(p) for g in optimizer.param_groups for p in g["params"]}

    def _wrap(self, rule: str, local: torch.Tensor, dim: int | None):
        if self.mesh is None or dim is None:
            return local
        from torch.distributed.tensor import DTensor, Shard

        shape = _global_shape(self.model, rule, local, dim)
        return DTensor.from_local(local, self.mesh, [Shard(dim)], run_check=False, shape=shape,
                                  stride=torch.empty(shape, device="meta").stride())

    def _whole_kv(self, t: torch.Tensor) -> torch.Tensor:
        """A replicated-KV shard [R, C, hs] -> the dense [C, n_kv * hs] (gathered)."""
        m = self.model
        return unshard("kv", m.comm.gather_ranks(t), m.config, m.tp).t()

    def _entries(self):
        """(key, param name, tensor getter) for every tensor in the state."""
        for name, p in self.params.items():
            yield f"model.{name}", name, lambda p=p: p
            if id(p) in self.optimized:
                for field in ("exp_avg", "exp_avg_sq"):
                    yield f"optim.{name}.{field}", name, \
                        lambda p=p, f=field: self.optimizer.state[p][f]

    @torch.no_grad()
    def state_dict(self) -> dict:
        """Canonical copies for dcp.save (the optimizer must have stepped once)."""
        out = {}
        for key, name, get in self._entries():
            rule = _rule(self.model, name)
            if rule == "kv_whole":
                out[key] = self._whole_kv(get().detach()).contiguous()
                continue
            local, dim = _to_canonical(self.model, rule, get().detach())
            out[key] = self._wrap(rule, local.contiguous().clone(), dim)
        if self.optimizer is not None:
            steps = {float(s["step"]) for s in self.optimizer.state.values()}
            out["optim.step"] = torch.tensor(max(steps) if steps else 0.0)
        return out

    @torch.no_grad()
    def empty_state_dict(self) -> dict:
        """Tensors of the canonical shapes of *this* layout, for dcp.load to fill."""
        if self.optimizer is not None:
            for p in self.params.values():  # AdamW's lazily created state, made now
                if id(p) in self.optimized and not self.optimizer.state[p]:
                    self.optimizer.state[p] = {"step": torch.tensor(0.0),
                                               "exp_avg": torch.zeros_like(p),
                                               "exp_avg_sq": torch.zeros_like(p)}
        state = self.state_dict()
        return state

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Copy loaded canonical tensors back into the parameters and optimizer state."""
        for key, name, get in self._entries():
            value = state[key]
            local = value.to_local() if hasattr(value, "to_local") else value
            target, rule = get(), _rule(self.model, name)
            if rule == "kv_whole":
                m = self.model
                target.copy_(shard("kv", local.t(), m.config, m.tp, m.comm.ranks))
                continue
            target.copy_(_from_canonical(self.model, rule, local, target))
        if self.optimizer is not None:
            for p in self.params.values():
                if id(p) in self.optimized:
                    self.optimizer.state[p]["step"] = state["optim.step"].clone()
