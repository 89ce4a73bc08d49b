#!/usr/bin/env bash
# The generation cost model's prediction for the SPD paper's setting (arXiv:2502.20727: about 20%
# lower end-to-end latency for LLaMA2-70B on 8 GPUs) at tp=8 in bf16, batch 1, a 512-token prompt
# and 128 new tokens, all syncs on against `spd`, on NVLink (H100 SXM), PCIe 4.0 (A100 PCIe) and
# 2-node NDR InfiniBand (H100), for three shapes:
#   gpt-70b      the GPT-shaped 70B-class model this script printed before (MHA, 4x GELU MLP)
#   llama2-70b   Llama-2-70B's real shape: 8 KV heads (GQA), SwiGLU 28672, untied head
#   llama3-8b    Llama-3-8B's: 32 layers, 4096 wide, 8 KV heads, SwiGLU 14336, vocab 128256
#   bash benchmarks/decode_70b.sh
set -euo pipefail
LLAMA="--family llama --bias false --activation silu --tie_embeddings false --norm_eps 1e-5"
declare -A SHAPE=(
    [gpt-70b]="--n_layer 80 --n_embd 8192 --n_head 64 --vocab_size 32000 --block_size 4096"
    [llama2-70b]="--n_layer 80 --n_embd 8192 --n_head 64 --n_kv_head 8 --intermediate_size 28672
                  --vocab_size 32000 --block_size 4096 $LLAMA"
    [llama3-8b]="--n_layer 32 --n_embd 4096 --n_head 32 --n_kv_head 8 --intermediate_size 14336
                 --vocab_size 128256 --block_size 8192 --rope_theta 500000 $LLAMA"
)
for shape in gpt-70b llama2-70b llama3-8b; do
    for ic in nvlink-h100 pcie4 ib-ndr; do
        echo "== $shape on $ic"
        # shellcheck disable=SC2086
        tpgpt plan --inference ${SHAPE[$shape]} --tp 8 --dtype_bytes 2 --prompt_len 512 \
            --new_tokens 128 --sync tp spd --interconnect "$ic" \
            | sed -n '1,2p;/^predicted generation/,$p'
        echo
    done
done
