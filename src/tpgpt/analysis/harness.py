"""A tpgpt checkpoint as an lm-evaluation-harness model: downstream tasks under any sync plan.

Importing this module registers the model class as "tpgpt" in lm-eval's registry, so its
Python API runs a checkpoint by name:

    import tpgpt.analysis.harness  # noqa: F401 (registers "tpgpt")
    lm_eval.simple_evaluate(model="tpgpt", model_args="ckpt=DIR,tp=4,sync=spd", tasks=[...])

The model is the checkpoint's trained function (its tp and plan), or another tp / plan / sync
precision given on purpose (a zero-shot conversion), simulated in one process or, under
torchrun, distributed (every process runs every request: the ranks of one model, not data
parallel). Requests are tokenized as lm-eval's `--model hf` tokenizes them (TemplateLM's
context/continuation split; the tokenizer's special tokens, e.g. Llama's BOS, as transformers'
`encode` adds them), so an imported model scores what transformers scores.
"""
from __future__ import annotations

import lm_eval.models  # noqa: F401 (lm-eval's own models, registered before tpgpt joins them)
import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from ..checkpoint.load import load_trained
from ..data import tokenizer_from_meta
from ..errors import ConfigError
from ..model.generation import until_stop


@register_model("tpgpt")
class TpgptLM(TemplateLM):
    def __init__(self, ckpt: str, tp: int | None = None, sync: str | None = None,
                 sync_dtype: str | None = None, sync_block: int | None = None,
                 device: str = "cpu", batch_size: int | str = 8, max_gen_toks: int = 256,
                 max_batch_size: int | None = None, **unused):
        super().__init__()
        if unused:
            raise ConfigError(f"model_args {', '.join(sorted(unused))}: not tpgpt's (it takes "
                              f"ckpt, tp, sync, sync_dtype, sync_block, device, batch_size, "
                              f"max_gen_toks)")
        self.loaded = load_trained(str(ckpt), tp=tp, sync=None if sync is None else str(sync),
                                   device=device, sync_dtype=sync_dtype, sync_block=sync_block)
        self.model = self.loaded.model.eval()
        self.tok = tokenizer_from_meta(self.loaded.meta)
        self.max_length = self.model.config.block_size
        # "auto" (lm-eval's search for the largest batch that fits): 8, or max_batch_size
        self.batch = (max_batch_size or 8) if str(batch_size).startswith("auto") else \
            int(batch_size)
        self.max_gen_toks = int(max_gen_toks)
        self.device_ = self.model.transformer.wte.weight.device
        self._prefix = self._prefix_token()

    # --- tokenization: as lm-eval's hf model ------------------------------------------------
    def _prefix_token(self) -> int:
        """What lm-eval's hf model conditions an empty context on: the BOS token, else the
        end-of-sequence one; a character or byte tokenizer has neither, and uses a newline
        (where a document of its corpus starts)."""
        if self.tok.bos_id is not None:
            return self.tok.bos_id
        if self.tok.eos_ids:
            return self.tok.eos_ids[0]
        newline = self.tok.encode_stream("\n")
        if len(newline) != 1:
            raise ConfigError("the checkpoint's tokenizer has no BOS, end-of-sequence or "
                              "newline token to condition an empty context on")
        return newline[0]

    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_ids[0] if self.tok.eos_ids else self._prefix

    @property
    def prefix_token_id(self) -> int:
        return self._prefix

    def tok_encode(self, string: str, add_special_tokens: bool | None = None,
                   **kwargs) -> list[int]:
        # a string that already starts with the prefix token's text gets no special tokens
        # (as lm-eval's hf model does, so a BOS written in a prompt is not doubled)
        if add_special_tokens is False or (
                add_special_tokens is None and string.startswith(self.tok.decode([self._prefix]))):
            return self.tok.encode_stream(string)
        return self.tok.encode(string)

    def tok_decode(self, ids) -> str:
        return self.tok.decode(ids)

    # --- scoring -----------------------------------------------------------------------------
    @torch.no_grad()
    def _logprobs(self, rows: list[list[int]]) -> list[torch.Tensor]:
        """Next-token log-probabilities [len(row), V] of each row (at most block_size tokens),
        right-padded into one batch: a causal model's positions never see the padding."""
        T = max(len(r) for r in rows)
        idx = torch.zeros(len(rows), T, dtype=torch.long)
        for i, r in enumerate(rows):
            idx[i, :len(r)] = torch.tensor(r)
        # with targets, the dense and the parallel model both return every position's logits
        logits, _ = self.model(idx.to(self.device_), idx.to(self.device_))
        logp = F.log_softmax(logits.double() if logits.dtype == torch.float64 else
                             logits.float(), dim=-1)
        return [logp[i, :len(r)] for i, r in enumerate(rows)]

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False,
                              override_bs: int | None = None, **kwargs):
        out = []
        step = override_bs or self.batch
        for start in range(0, len(requests), step):
            chunk = requests[start:start + step]
            rows, conts = [], []
            for _, context_enc, continuation_enc in chunk:
                if not continuation_enc or len(continuation_enc) > self.max_length:
                    raise ConfigError(f"a continuation of {len(continuation_enc)} tokens: "
                                      f"between 1 and block_size={self.max_length} can be "
                                      f"scored")
                # the last block_size tokens before each continuation token, as hf does
                rows.append((context_enc + continuation_enc)[-(self.max_length + 1):][:-1])
                conts.append(continuation_enc)
            for logp, cont, row in zip(self._logprobs(rows), conts, rows):
                part = logp[len(row) - len(cont):]
                target = torch.tensor(cont, device=part.device)
                greedy = bool((part.argmax(dim=-1) == target).all())
                out.append((float(part.gather(1, target[:, None]).sum()), greedy))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for (string,) in (r.args for r in requests):
            windows = [(None,) + make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=self.tok_encode(string), prefix_token=self._prefix,
                max_seq_len=self.max_length, context_len=1)]
            out.append(sum(ll for ll, _ in self._loglikelihood_tokens(windows)))
        return out

    # --- generation --------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for context, gen_kwargs in (r.args for r in requests):
            kw = dict(gen_kwargs)
            until = kw.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            new = int(kw.pop("max_gen_toks", self.max_gen_toks))
            if kw.pop("do_sample", False) or float(kw.pop("temperature", 0.0)) > 0:
                raise ConfigError("tpgpt's lm-eval model generates greedily: give the task "
                                  "do_sample: false (or temperature 0)")
            ids = self.tok_encode(context)[-max(self.max_length - new, 1):]
            idx = torch.tensor([ids], device=self.device_)
            stop = tuple(self.tok.eos_ids)
            with torch.no_grad():
                row = self.model.generate(idx, new, temperature=0.0, stop=stop)[0].tolist()
            text = self.tok_decode(until_stop(row, len(ids), stop)[len(ids):])
            for s in until:
                if s and s in text:
                    text = text[:text.index(s)]
            out.append(text)
        return out


def evaluate_tasks(ckpt: str, tasks: list[str], *, tp: int | None = None,
                   sync: str | None = None, sync_dtype: str | None = None,
                   sync_block: int | None = None, include_path: str | None = None,
                   limit: float | None = None, num_fewshot: int | None = None,
                   batch_size: int = 8, device: str = "cpu") -> dict:
    """lm-eval's simple_evaluate of the checkpoint on `tasks` (`tpgpt eval --tasks`): its
    results, the table lm-eval prints, and the model's plan."""
    import os

    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import make_table

    if include_path is not None and not os.path.isdir(include_path):
        raise ConfigError(f"--include-path {include_path} is not a directory")
    manager = None
    if include_path is not None:  # lm-eval's own task index takes ~12 s to build: skip it
        manager = TaskManager(include_path=include_path, include_defaults=False)
        if any(t not in manager.all_tasks for t in tasks):  # when every task is local
            manager = None
    manager = manager or TaskManager(include_path=include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ConfigError(f"--tasks {','.join(unknown)}: not a task lm-eval knows (its own, "
                          f"or one defined under --include-path)")
    lm = TpgptLM(ckpt, tp=tp, sync=sync, sync_dtype=sync_dtype, sync_block=sync_block,
                 device=device, batch_size=batch_size)
    r = simple_evaluate(model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit,
                        task_manager=manager, log_samples=False, device=device)
    loaded = lm.loaded
    if r is None:  # lm-eval reports on the first process of a torchrun job only
        return {"results": None, "table": ""}
    return {"checkpoint": loaded.path, "history": loaded.history,
            "description": loaded.describe(), "tp": loaded.tp, "sync": loaded.sync,
            "forward_syncs": loaded.forward_syncs, "mode": loaded.mode,
            "results": r["results"], "table": make_table(r)}
