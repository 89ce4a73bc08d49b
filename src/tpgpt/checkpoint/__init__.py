"""Checkpoints: atomic, checksummed directories of layout-independent DCP shards; Hugging Face
GPT-2 interchange.

    store.py          save (atomic swap, manifest), verify, find and read a checkpoint
    sharded_state.py  the layout-independent coordinates every tensor is written in
    load.py           a checkpoint as the function it was trained to be (its tp and plan)
    hf.py             export to / import from a Hugging Face GPT-2 directory
"""
from .sharded_state import ShardedState
from .store import find_checkpoint, load_sharded, load_state, save_checkpoint

__all__ = ["ShardedState", "find_checkpoint", "load_sharded", "load_state", "save_checkpoint"]
