"""A checkpoint as the function it was trained to compute.

A model trained under a plan that drops syncs is another function than the dense GPT with the
same weights, so a checkpoint carries its tp and sync plan (state.json's config) and everything
that loads it for use (sample, eval, sweep, export) builds that function: the dense GPT when
every sync was on (or tp=1), else ParallelGPT with the trained tp and plan, simulated in this
process or, under torchrun, distributed over the job's processes. Another tp or plan is a
zero-shot conversion the caller asks for by name; `load_dense` gives the weights as the dense GPT
for the few uses that want exactly that (HF export with --as-dense, tests).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..comm.plan import SyncPlan, validate_tp
from ..comm.wire import DEFAULT_BLOCK, SyncWire
from ..errors import ConfigError
from ..text import counted
from ..model import GPT, GPTConfig, ParallelGPT
from ..model.parallel_gpt import function_key
from .sharded_state import ShardedState
from .store import find_checkpoint, load_meta, load_sharded, load_state


def resolve_checkpoint(path: str) -> str:
    """A checkpoint directory, or a run's out_dir (its best, else its last checkpoint)."""
    if not os.path.isdir(path) and find_checkpoint(path) is None:
        raise ConfigError(f"checkpoint directory {path} does not exist")
    for candidate in (path, os.path.join(path, "best"), os.path.join(path, "last")):
        found = find_checkpoint(candidate)
        if found:
            return found
    raise ConfigError(f"no checkpoint in {path}: expected state.json there or in best/ or last/")


def model_config(state: dict) -> GPTConfig:
    """The model's shape from state.json, dropout off (loading is for use, not training)."""
    try:
        return GPTConfig(**{**state["model"], "dropout": 0.0})
    except (KeyError, TypeError) as e:
        raise ConfigError(f"{state['path']}/state.json has no valid model config: {e}") from None


def trained_plan(state: dict) -> tuple[int, str]:
    """(tp, sync) the checkpoint was trained with; an imported model is the dense GPT."""
    config = state.get("config") or {}
    tp = config.get("tp", state.get("layout", {}).get("tp", 1))
    sync = config.get("sync", "tp")
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1 or not isinstance(sync, str):
        raise ConfigError(f"{state['path']}/state.json has no valid tp and sync ({tp!r}, "
                          f"{sync!r})")
    return tp, sync


def trained_wire(state: dict) -> SyncWire:
    """What the checkpoint's syncs sent in training (float32 for checkpoints from before
    sync_dtype existed, for imported models, and at tp=1, where nothing is sent)."""
    config = state.get("config") or {}
    if trained_plan(state)[0] == 1:
        return SyncWire()
    try:
        return SyncWire(config.get("sync_dtype", "float32"), config.get("sync_block",
                                                                        DEFAULT_BLOCK))
    except ConfigError as e:
        raise ConfigError(f"{state['path']}/state.json: {e}") from None


def trained_ladder(state: dict) -> bool:
    """Whether the checkpoint was trained with ladder syncs (model/blocks.py)."""
    ladder = (state.get("config") or {}).get("ladder", False)
    if not isinstance(ladder, bool):
        raise ConfigError(f"{state['path']}/state.json: ladder={ladder!r} is not true or false")
    return ladder


def require_plain_syncs(state: dict, command: str) -> None:
    """`command` (convert, sensitivity, distill) measures plans with plain syncs (float32, no
    ladder): a checkpoint trained otherwise is refused rather than measured as another
    function."""
    wire = trained_wire(state)
    if wire.compressed:
        raise ConfigError(f"{state['path']} was trained with syncs sent in {wire.describe()}: "
                          f"{command} works on checkpoints whose syncs are float32")
    if trained_ladder(state):
        raise ConfigError(f"{state['path']} was trained with ladder syncs: {command} works on "
                          f"checkpoints without them")


def is_dense_function(state: dict) -> bool:
    """Whether the checkpoint computes the dense GPT (tp=1, or every sync on, sent as
    computed)."""
    tp, sync = trained_plan(state)
    plan = SyncPlan.parse(sync, model_config(state).n_layer)
    return function_key(tp, plan, trained_wire(state), trained_ladder(state)) == ("dense",)


def trained_function(state: dict) -> tuple[int, str]:
    """(tp, sync) of the function the checkpoint computes: at tp=1 whatever the plan says is
    the dense GPT, every sync on ('tp')."""
    tp, sync = trained_plan(state)
    return tp, "tp" if tp == 1 else sync


# what a checkpoint made from another (convert, distill) keeps of it: where the weights came
# from (an import's path, its HF architecture) and the dtype they are held in
INHERITED = ("source", "hf", "weights_dtype")


def inherited(state: dict) -> dict:
    return {k: state[k] for k in INHERITED if k in state}


def _dtype(state: dict) -> torch.dtype:
    """The dtype the weights are held in: an import's own choice (weights_dtype), float64 for a
    model trained in float64, else float32 (autocast runs keep fp32 weights)."""
    if state.get("weights_dtype") in ("float32", "float64", "bfloat16", "float16"):
        return getattr(torch, state["weights_dtype"])
    return torch.float64 if (state.get("config") or {}).get("dtype") == "float64" \
        else torch.float32


@dataclass
class Loaded:
    """A checkpoint built as a function: the model and what it is."""

    model: torch.nn.Module  # GPT, or ParallelGPT when some sync is dropped
    meta: dict  # the tokenizer
    path: str  # the checkpoint directory read
    iteration: int | None
    tp: int
    plan: SyncPlan
    trained_tp: int
    trained_sync: str
    mode: str  # "dense", "simulated" or "distributed"
    mesh: object | None = None  # distributed over several processes: the TP mesh of its shards
    wire: SyncWire = SyncWire()  # what the syncs send
    trained_wire: SyncWire = SyncWire()
    ladder: bool = False  # trained (and run) with ladder syncs
    history: str = ""  # how the weights came to be: provenance(state)

    @property
    def sync(self) -> str:
        return self.plan.spec

    @property
    def converted(self) -> bool:
        """Whether this is another function than the trained one (a zero-shot conversion)."""
        trained = SyncPlan.parse(self.trained_sync, self.plan.n_layer)
        return function_key(self.tp, self.plan, self.wire, self.ladder) != \
            function_key(self.trained_tp, trained, self.trained_wire, self.ladder)

    @property
    def forward_syncs(self) -> int:
        return self.plan.forward_syncs(self.tp)

    def describe(self) -> str:
        """'tp=2, sync='tp,spd' (6 of 8 forward syncs), simulated TP in one process'."""
        n = 2 * self.plan.n_layer
        how = {"dense": "the dense GPT (every sync on)" if self.tp > 1 else "the dense GPT",
               "simulated": "simulated TP in one process",
               "distributed": "distributed TP over this torchrun job"}[self.mode]
        if self.tp == 1 and self.ladder:  # one rank sends nothing; the ladder still applies
            text = f"tp=1 (no communication), sync={self.sync!r} with ladder, {how}"
        elif self.tp == 1:  # one rank has no syncs: the trained plan does not apply
            text = f"tp=1 (no syncs), {how}"
        else:
            sent = ("" if not self.wire.compressed else f" sent in {self.wire.describe()}") + \
                (", ladder" if self.ladder else "")
            text = (f"tp={self.tp}, sync={self.sync!r} ({self.forward_syncs} of {n} forward "
                    f"syncs{sent}), {how}")
        if self.converted:
            sent = "" if not self.trained_wire.compressed else \
                f" ({self.trained_wire.describe()} syncs)"
            text += (f"; converted zero-shot from the trained tp={self.trained_tp}, "
                     f"sync={self.trained_sync!r}{sent}")
        return text


def provenance(state: dict) -> str:
    """How a checkpoint's weights came to be, from its state.json: 'trained 600 iterations',
    'imported from gpt2', '..., converted from out/dense4 (tp=1, sync='tp'), distilled 200
    steps'."""
    parts = [f"imported from {state['source']}" if state.get("source") else
             f"trained {counted(state.get('iter') or 0, 'iteration')}"]
    if state.get("converted_from"):
        c = state["converted_from"]
        parts.append(f"converted from {c.get('path')} (tp={c.get('tp')}, sync={c.get('sync')!r})")
    if state.get("distill"):
        parts.append(f"distilled {counted(state['distill'].get('step', 0), 'step')}")
    return ", ".join(parts)


def read_checkpoint(path: str) -> dict:
    """state.json of a checkpoint or out_dir (verified against its manifest), with "path"."""
    return load_state(resolve_checkpoint(path))


def check_device(device: str | torch.device) -> torch.device:
    """cpu or cuda (with CUDA there); under torchrun a bare "cuda" is this rank's GPU."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device={device!r} is invalid: choose cpu or cuda") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device={device!r} is invalid: choose cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but CUDA is not available: use --device cpu")
    if dev.type == "cuda" and dev.index is None and "LOCAL_RANK" in os.environ:
        dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return dev


def load_trained(path: str, tp: int | None = None, sync: str | None = None,
                 device: str | torch.device = "cpu", distributed: bool | None = None,
                 state: dict | None = None, sync_dtype: str | None = None,
                 sync_block: int | None = None, sharded: bool = False) -> Loaded:
    """The model a checkpoint (or a run's out_dir) was trained to be, or, with `tp`, `sync`,
    `sync_dtype` or `sync_block`, the conversion to another plan or sync precision.
    `distributed` (default: under torchrun, RANK set): a model that drops syncs runs with its tp
    ranks spread over the job's processes (collective: every process calls this); otherwise it
    is simulated in this process. `state`: the checkpoint's state.json as `read_checkpoint`
    returned it (read and verified once). `sharded`: a plan that computes the dense GPT (every
    sync on) is still loaded as its tp ranks (as distill holds a teacher like its student),
    not as the dense model whole."""
    device = check_device(device)
    state = state if state is not None else read_checkpoint(path)
    ckpt = state["path"]
    config = model_config(state)
    trained_tp, trained_sync = trained_plan(state)
    if tp is None:
        tp = trained_tp
    validate_tp(tp, config)
    plan = SyncPlan.parse(trained_sync if sync is None else sync, config.n_layer)
    if sync is not None and tp == 1 and not all(plan.bits) and not trained_ladder(state):
        raise ConfigError(f"--sync {sync!r} at tp=1 is the dense GPT (one rank has nothing to "
                          f"sync): give --tp 2 or more to run the plan")
    t_wire, ladder = trained_wire(state), trained_ladder(state)
    wire = t_wire if sync_dtype is None and sync_block is None else SyncWire(
        t_wire.dtype if sync_dtype is None else sync_dtype,
        t_wire.block if sync_block is None else sync_block)
    wire.check(config.n_embd)
    if sync_dtype is not None and tp == 1 and wire.compressed:
        raise ConfigError(f"--sync-dtype {sync_dtype} at tp=1 sends nothing (one rank has "
                          f"nothing to sync): give --tp 2 or more")
    dtype = _dtype(state)
    common = dict(meta=load_meta(ckpt), path=ckpt, iteration=state.get("iter"), tp=tp,
                  plan=plan, trained_tp=trained_tp, trained_sync=trained_sync, wire=wire,
                  trained_wire=t_wire, ladder=ladder, history=provenance(state))
    if function_key(tp, plan, wire, ladder) == ("dense",) and not (sharded and tp > 1):
        model = GPT(config).to(dtype)
        load_sharded(ckpt, ShardedState(model))
        return Loaded(model=model.to(device).eval(), mode="dense", **common)
    if distributed if distributed is not None else "RANK" in os.environ:
        model, mesh = _distributed_model(config, tp, plan, device, wire, ladder)
        model.to(dtype)
        load_sharded(ckpt, ShardedState(model, None, mesh), distributed=True)
        return Loaded(model=model.to(device).eval(), mode="distributed", mesh=mesh, **common)
    model = _unfilled_parallel(config, tp, plan, wire=wire, ladder=ladder)
    model.to(dtype)
    load_sharded(ckpt, ShardedState(model))
    return Loaded(model=model.to(device).eval(), mode="simulated", **common)


def _distributed_model(config: GPTConfig, tp: int, plan: SyncPlan, device, wire: SyncWire,
                       ladder: bool):
    """ParallelGPT with its tp ranks over every process of the torchrun job; the TP mesh on
    which its checkpoint shards are DTensors (None when one process holds every rank)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from ..comm.distributed import DistributedComm, init_distributed
    _, world, dev = init_distributed(backend="gloo" if device.type == "cpu" else None)
    if tp % world:
        raise ConfigError(f"tp={tp} cannot be spread over {world} processes: launch a number "
                          f"of processes that divides tp (torchrun --nproc_per_node)")
    mesh = init_device_mesh(dev.type, (world,)) if world > 1 else None
    return _unfilled_parallel(config, tp, plan, DistributedComm(tp, group=dist.group.WORLD),
                              wire, ladder), mesh


def _unfilled_parallel(config: GPTConfig, tp: int, plan: SyncPlan, comm=None,
                       wire: SyncWire = SyncWire(), ladder: bool = False) -> ParallelGPT:
    """ParallelGPT with uninitialised weights (no throw-away random init: the checkpoint fills
    them)."""
    with torch.device("meta"):
        dense = GPT(config)
    return ParallelGPT(config, tp=tp, sync=plan, comm=comm, dense=dense.to_empty(device="cpu"),
                       sync_dtype=wire.dtype, sync_block=wire.block, ladder=ladder)


def load_dense(path: str, state: dict | None = None) -> tuple[GPT, dict, str]:
    """(the weights as the dense GPT, tokenizer meta, checkpoint dir). This is the trained
    function only when the checkpoint's plan has every sync on (or tp=1): `load_trained` is
    what sampling and evaluation use."""
    state = state if state is not None else read_checkpoint(path)
    model = GPT(model_config(state)).to(_dtype(state))
    load_sharded(state["path"], ShardedState(model))
    return model.eval(), load_meta(state["path"]), state["path"]
