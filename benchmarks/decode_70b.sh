#!/usr/bin/env bash
# The generation cost model's prediction for the SPD paper's setting (arXiv:2502.20727: about 20%
# lower end-to-end latency for LLaMA2-70B on 8 GPUs): a 70B-class GPT (80 layers, 8192 wide,
# 64 heads) at tp=8 in bf16, batch 1, a 512-token prompt and 128 new tokens, all syncs on
# against `spd`, on NVLink (H100 SXM), PCIe 4.0 (A100 PCIe) and 2-node NDR InfiniBand (H100).
#   bash benchmarks/decode_70b.sh
set -euo pipefail
for ic in nvlink-h100 pcie4 ib-ndr; do
    tpgpt plan --inference --n_layer 80 --n_embd 8192 --n_head 64 --vocab_size 32000 \
        --block_size 4096 --tp 8 --dtype_bytes 2 --prompt_len 512 --new_tokens 128 \
        --sync tp spd --interconnect "$ic" | sed -n '/^predicted generation/,$p'
    echo
done
