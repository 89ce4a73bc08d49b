"""How much room the tolerances of src/tpgpt/analysis/numerics.py leave on this CPU: the largest
measured difference against each tolerance, for the dense GPT against ParallelGPT with every sync
on (tp 2 and 4, replicated and vocab-parallel head), over several seeds.

    python benchmarks/numerics_margins.py            # this CPU's default kernels
    ATEN_CPU_CAPABILITY=default python benchmarks/numerics_margins.py

A ratio (measured / tolerance) far below 1 is the margin; the tests fail at 1.
"""
import argparse

import torch

from tpgpt import GPT, GPTConfig, ParallelGPT
from tpgpt.analysis.numerics import adam_weight_bound, float32_bound, rel_err, FLOAT64_RTOL
from tpgpt.analysis.verify import parallel_dense_grads

LR, STEPS = 1e-3, 3


def run(model, idx, targets):
    model.zero_grad(set_to_none=True)
    logits, loss = model(idx, targets)
    loss.backward()
    if isinstance(model, ParallelGPT):
        model.sync_replicated_grads()
        grads = parallel_dense_grads(model)
    else:
        grads = {n: p.grad for n, p in model.named_parameters()}
    return {"logits": logits.detach(), "loss": loss.detach(), **grads}


def margins(seed: int) -> dict[str, float]:
    cfg = GPTConfig(block_size=16, vocab_size=96, n_layer=4, n_head=4, n_embd=32, bias=True)
    torch.manual_seed(seed)
    g32 = GPT(cfg)
    g64 = GPT(cfg)
    g64.load_state_dict(g32.state_dict())
    g64.double()
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 96, (3, 16), generator=gen)
    targets = torch.randint(0, 96, (3, 16), generator=gen)
    exact, dense32 = run(g64, idx, targets), run(g32, idx, targets)
    worst = {"float64 equality": 0.0, "float32 vs exact": 0.0, "AdamW weights (float64)": 0.0}
    for tp in (2, 4):
        for vp in (False, True):
            par64 = ParallelGPT.from_dense(g64, tp=tp, vocab_parallel=vp)
            r64 = run(par64, idx, targets)
            worst["float64 equality"] = max(worst["float64 equality"], max(
                rel_err(r64[k], exact[k]) / FLOAT64_RTOL for k in exact))
            r32 = run(ParallelGPT.from_dense(g32, tp=tp, vocab_parallel=vp), idx, targets)
            worst["float32 vs exact"] = max(worst["float32 vs exact"], max(
                rel_err(r32[k], exact[k]) / float32_bound(dense32[k], exact[k]) for k in exact))
            # three AdamW steps from equal weights, dense and parallel side by side
            dense = GPT(cfg)
            dense.load_state_dict(g64.state_dict())
            dense.double()
            par = ParallelGPT.from_dense(dense, tp=tp, vocab_parallel=vp)
            opts = [torch.optim.AdamW(m.parameters(), lr=LR) for m in (dense, par)]
            for _ in range(STEPS):
                for m, opt in zip((dense, par), opts):
                    run(m, idx, targets)
                    opt.step()
            back = par.to_dense().state_dict()
            worst["AdamW weights (float64)"] = max(worst["AdamW weights (float64)"], max(
                (back[k] - v).abs().max().item() for k, v in dense.state_dict().items())
                / adam_weight_bound([LR] * STEPS))
    return worst


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; largest measured / tolerance over "
          f"{args.seeds} seeds, tp 2 and 4, replicated and vocab-parallel head:")
    total: dict[str, float] = {}
    for seed in range(args.seeds):
        for k, v in margins(seed).items():
            total[k] = max(total.get(k, 0.0), v)
    for k, v in total.items():
        print(f"  {k:<26} {v:.1e}")
