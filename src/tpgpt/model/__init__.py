"""The models: the dense GPT (the reference) and ParallelGPT, the same GPT over `tp` ranks.

    gpt.py              GPTConfig, LayerNorm, attention, MLP, Block, GPT (nanoGPT's names)
    tensor_parallel.py  column/row-parallel linears, vocab-parallel embedding and loss
    blocks.py           ParallelBlock (two sync points) and the residual stream between syncs
    parallel_gpt.py     ParallelGPT: embedding, blocks built from the sync plan, head
    dense_weights.py    dense state dict <-> this process's shards (from_dense / to_dense)

Nothing here imports torch.distributed: a `TPComm` (comm/) decides where the ranks live.
"""
from .gpt import GPT, Block, GPTConfig, LayerNorm, sample_next
from .parallel_gpt import ParallelGPT

__all__ = ["GPT", "GPTConfig", "Block", "LayerNorm", "ParallelGPT", "sample_next"]
