"""The models: the dense GPT (the reference) and ParallelGPT, the same GPT over `tp` ranks.

    config.py           GPTConfig: the shape of a GPT-2 or Llama-family model, validated
    layers.py           norms, rotary positions, attention over heads, the sampler
    gpt.py              GPT-2's attention, MLP, Block; GPT, the dense model of either family
    llama.py            the Llama family's dense block (GQA, rotary, gated MLP, Qwen switches)
    tensor_parallel.py  column/row-parallel linears, vocab-parallel embedding and loss
    blocks.py           ParallelBlock (two sync points) and the residual stream between syncs
    parallel_gpt.py     ParallelGPT: embedding, blocks built from the sync plan, head
    dense_weights.py    dense state dict <-> this process's shards (from_dense / to_dense)

Nothing here imports torch.distributed: a `TPComm` (comm/) decides where the ranks live.
"""
from .config import GPTConfig
from .gpt import GPT, Block
from .layers import LayerNorm, sample_next
from .parallel_gpt import ParallelGPT

__all__ = ["GPT", "GPTConfig", "Block", "LayerNorm", "ParallelGPT", "sample_next"]
