"""The Hugging Face reference of `tpgpt bench decode`: transformers' GPT2LMHeadModel on a dense
GPT's weights (tpgpt.checkpoint.hf's mapping), greedy `generate` with its KV cache, timed per
token by a streamer (transformers calls `put` with every new token as it is chosen)."""
from __future__ import annotations

import time

import torch

_built: dict = {}  # {"dense": the dense GPT, "hf": its GPT2LMHeadModel}: the last one built


def hf_model(dense):
    """GPT2LMHeadModel holding `dense`'s weights, or None without transformers installed."""
    try:
        import transformers
    except ImportError:
        return None
    from ..checkpoint.hf import hf_config, to_hf_state
    if _built.get("dense") is not dense:  # holding `dense` keeps its id from being reused
        transformers.logging.set_verbosity_error()
        cfg = {k: v for k, v in hf_config(dense.config).items() if k != "architectures"}
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**cfg))
        missing, unexpected = hf.load_state_dict(to_hf_state(dense.state_dict(), dense.config),
                                                 strict=False)
        if set(missing) - {"lm_head.weight"} or unexpected:
            raise RuntimeError(f"GPT-2 weights do not map: missing {missing}, "
                               f"unexpected {unexpected}")
        hf.tie_weights()
        _built.update(dense=dense, hf=hf.eval())
    return _built["hf"]


def hf_generate_timed(dense, prompt: torch.Tensor, new_tokens: int):
    """(time stamps: before the call, then one per new token; the new tokens [B, N]), or None
    without transformers."""
    model = hf_model(dense)
    if model is None:
        return None
    from transformers.generation.streamers import BaseStreamer

    stamps: list[float] = []

    class Stamps(BaseStreamer):
        def put(self, value):  # the prompt first ([B, T]), then each new token ([B])
            if value.dim() == 1:
                stamps.append(time.perf_counter())

        def end(self):
            pass

    with torch.no_grad():
        stamps.append(time.perf_counter())
        out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                             max_new_tokens=new_tokens, do_sample=False, use_cache=True,
                             pad_token_id=0, streamer=Stamps())
    return stamps, out[:, prompt.shape[1]:]
