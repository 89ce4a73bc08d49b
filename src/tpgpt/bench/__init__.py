"""`tpgpt bench`: measurements side by side in one run, with medians, means and min/max.

    tpgpt bench throughput           dense vs simulated tp=2, tp=4 training steps (one process)
    torchrun --nproc_per_node=2 -m tpgpt bench comm --out profile
                                     all-reduce latency and bandwidth, fitted to alpha-beta
    torchrun --nproc_per_node=2 -m tpgpt bench plans --out plans
                                     step time of every sync plan against the cost model
    torchrun --nproc_per_node=2 -m tpgpt bench dist --out dist
                                     tpgpt's distributed TP against PyTorch's DTensor TP
    torchrun --nproc_per_node=2 -m tpgpt bench decode --out decode
                                     TTFT and per-token decode latency of every plan, beside
                                     the dense GPT and transformers' generate; NAME.png too

With `--out NAME` each writes NAME.json (every number) and NAME.md (the tables printed).
"""
from .timing import time_interleaved

__all__ = ["time_interleaved"]
