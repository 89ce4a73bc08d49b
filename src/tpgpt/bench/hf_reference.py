"""The Hugging Face reference of the benchmarks: transformers' GPT2LMHeadModel (or its Llama,
Qwen2, Qwen3 model) on a dense model's weights (the mappings of tpgpt.checkpoint.hf_gpt2
and hf_llama), trained beside tpgpt by `bench throughput`, and for `bench decode` its greedy
`generate` with its KV cache, timed per token by a streamer (transformers calls `put` with every
new token as it is chosen)."""
from __future__ import annotations

import time

import torch

def hf_name(config) -> str:
    """The transformers architecture a benchmark runs beside tpgpt: GPT-2, Llama, Qwen2, Qwen3."""
    if config.family == "gpt2":
        return "GPT-2"
    from ..checkpoint.hf_llama import architecture
    return architecture(config)


def hf_reference(dense):
    """The same weights in Hugging Face transformers (GPT2LMHeadModel, or LlamaForCausalLM /
    Qwen2ForCausalLM / Qwen3ForCausalLM for the Llama family; SDPA attention): an independent
    implementation of the dense model, to time beside tpgpt's (in training mode: set eval() to
    generate); None without transformers. Its loss shifts labels itself (T - 1 positions; the
    same matmuls)."""
    try:
        import transformers
    except ImportError:
        return None
    transformers.logging.set_verbosity_error()
    if dense.config.family != "gpt2":
        from ..checkpoint.hf_llama import hf_llama_config, to_hf_llama_state
        arch = hf_name(dense.config)
        fields = {k: v for k, v in hf_llama_config(dense.config).items()
                  if k not in ("architectures", "model_type", "torch_dtype")}
        model = getattr(transformers, f"{arch}ForCausalLM")(getattr(
            transformers, f"{arch}Config")(**fields, attn_implementation="sdpa"))
        state = to_hf_llama_state(dense.state_dict(), dense.config)
    else:
        from ..checkpoint.hf_gpt2 import hf_gpt2_config, to_hf_state
        cfg = {k: v for k, v in hf_gpt2_config(dense.config).items() if k != "tpgpt_bias"}
        model = transformers.GPT2LMHeadModel(
            transformers.GPT2Config(**cfg, attn_implementation="sdpa"))
        state = to_hf_state(dense.state_dict(), dense.config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k == "lm_head.weight" for k in missing), (missing, unexpected)
    if dense.config.tie_embeddings:
        model.tie_weights()
    wte = dense.transformer.wte.weight
    return model.to(device=wte.device, dtype=wte.dtype).train()


_built: dict = {}  # {"dense": the dense GPT, "hf": its GPT2LMHeadModel}: the last one built


def hf_model(dense):
    """`hf_reference(dense)` in eval mode, built once per dense model; None without transformers."""
    if _built.get("dense") is not dense:  # holding `dense` keeps its id from being reused
        hf = hf_reference(dense)
        if hf is None:
            return None
        _built.update(dense=dense, hf=hf.eval())
    return _built["hf"]


def hf_generate_timed(dense, prompt: torch.Tensor, new_tokens: int, compile: bool = False):
    """(time stamps: before the call, then one per new token; the new tokens [B, N]), or None
    without transformers. `compile`: its static cache and its own compiled forward (on a CPU
    transformers compiles only when told to: `_compile_all_devices`)."""
    model = hf_model(dense)
    if model is None:
        return None
    from transformers import CompileConfig
    from transformers.generation.streamers import BaseStreamer

    stamps: list[float] = []

    class Stamps(BaseStreamer):
        def put(self, value):  # the prompt first ([B, T]), then each new token ([B])
            if value.dim() == 1:
                if value.is_cuda:
                    torch.cuda.synchronize()
                stamps.append(time.perf_counter())

        def end(self):
            pass

    extra = {}
    if compile:
        cfg = CompileConfig(fullgraph=True, dynamic=False, mode="default")
        cfg._compile_all_devices = True
        extra = dict(cache_implementation="static", compile_config=cfg)
    with torch.no_grad():
        stamps.append(time.perf_counter())
        out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                             max_new_tokens=new_tokens, do_sample=False, use_cache=True,
                             pad_token_id=0, streamer=Stamps(), **extra)
    return stamps, out[:, prompt.shape[1]:]
