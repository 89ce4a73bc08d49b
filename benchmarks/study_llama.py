"""The Llama study (issue 28): does grouped-query attention change which syncs a model can drop?

The 12-layer Llama-shaped preset (8 query heads sharing 2 KV heads, rotary positions, SwiGLU,
RMSNorm) trained on character-level Tiny Shakespeare under five sync plans from 24 forward
syncs to 1 at simulated tp=2, 4 and 8 (seed 1337; at tp 4 and 8 each KV head lives on 2 and 4
ranks), every run from the same initial weights and data order; and the other route: the dense
model (the `tp` run at tp=2) converted to each plan at each tp, zero-shot and after block-to-
block distillation. At the 6-sync plan three more attempts at closing the gap: 4x longer
distillation, a KL phase after the block-to-block one, and KV-group-aware head grouping (tp=4
only: at tp=2 each rank holds one whole KV group and at tp=8 one query head, so no grouping can
differ there). Every model also gets a downstream accuracy from lm-evaluation-harness (the
`tpgpt` model class) on a local multiple-choice task made from the validation split.

    bash benchmarks/study_llama.sh            # all of it; rerun to resume where it stopped

Layout as the GPT-2 12-layer study's (study_12layer.py, whose job layout this shares): OUT/
tp<T>_s1337/<plan>/ (a `tpgpt sweep` run each), OUT/converted/, OUT/task/ (the local task) and
a downstream.json beside each model. The report (DOC/results.md, results.json, frontier.png)
is rewritten from OUT at the end.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time


PRESET = "llama_char_cpu_12layer"
BUDGET = 600  # iterations: about half an epoch, 2-4 min a run here (tp 2-8, see the README)
PLANS = ("tp", "tp,spd", "spd", "spd,parallel,parallel,parallel", "parallel")
SIX = "spd,parallel,parallel,parallel"  # the 6-of-24-syncs plan the target is about
TPS = (2, 4, 8)
SEED = 1337
DENSE = (2, SEED)
DISTILL = dict(steps=150, lr=3e-4, batch_size=16)
# the other attempts at the 6-sync plan: {name: (tps, distill options, head grouping)}
VARIANTS = {"base": (TPS, DISTILL, False),
            "long": ((4, 8), dict(DISTILL, steps=600), False),
            "kl": ((4, 8), dict(DISTILL, kl_steps=150), False),
            "grouped": ((4,), DISTILL, True)}
TASK = "shakespeare_next"
TASK_DOCS, CONTEXT, CHOICE = 400, 40, 24  # 4 choices of 24 characters after 40 of context
NAME = "study_llama"


def run_dir(out: str, tp: int, plan: str) -> str:
    from tpgpt.analysis.sweep import plan_dir_name
    return os.path.join(out, f"tp{tp}_s{SEED}", plan_dir_name(plan))


def dense_dir(out: str) -> str:
    return os.path.join(run_dir(out, DENSE[0], "tp"), "last")


def converted_path(out: str, tp: int, plan: str, variant: str, kind: str) -> str:
    """OUT/converted/<variant>/: z_<name>, d_<name> (a distill run), <name>.json."""
    from tpgpt.analysis.sweep import plan_dir_name
    name = f"tp{tp}_{plan_dir_name(plan)}"
    return os.path.join(out, "converted", variant, {
        "zero_shot": "z_" + name, "distilled": "d_" + name, "result": name + ".json"}[kind])


def jobs(out: str) -> list[dict]:
    train = [{"kind": "train", "tp": tp, "plan": plan} for tp in TPS for plan in PLANS]
    convert = [{"kind": "convert", "tp": tp, "plan": plan, "variant": "base", "after": "dense"}
               for tp in TPS for plan in PLANS if plan != "tp"]
    convert += [{"kind": "convert", "tp": tp, "plan": SIX, "variant": v, "after": "dense"}
                for v, (tps, _, _) in VARIANTS.items() if v != "base" for tp in tps]
    assert (train[0]["tp"], train[0]["plan"]) == (DENSE[0], "tp")
    return train[:1] + convert + train[1:]


def job_name(j: dict) -> str:
    if j["kind"] == "train":
        return f"train tp{j['tp']} {j['plan']}"
    return f"convert tp{j['tp']} {j['plan']} {j['variant']}"


def job_done(out: str, j: dict) -> bool:
    if j["kind"] == "train":
        from tpgpt.analysis.sweep import finished_summary
        d = run_dir(out, j["tp"], j["plan"])
        s = finished_summary(d, BUDGET)
        return s is not None and "full_val_loss" in s and \
            os.path.exists(os.path.join(d, "downstream.json"))
    return os.path.exists(converted_path(out, j["tp"], j["plan"], j["variant"], "result"))


def progress_of(out: str, j: dict) -> tuple[int, int]:
    from study_runner import last_iter
    if j["kind"] == "train":
        path = os.path.join(run_dir(out, j["tp"], j["plan"]), "metrics.jsonl")
        return min(last_iter(path), BUDGET), BUDGET
    d = converted_path(out, j["tp"], j["plan"], j["variant"], "distilled")
    o = VARIANTS[j["variant"]][1]
    total = o["steps"] + o.get("kl_steps", 0)
    return min(last_iter(os.path.join(d, "metrics.jsonl")), total), total


# --- the downstream task ----------------------------------------------------------------------

def task_dir(out: str) -> str:
    """OUT/task/: a multiple-choice task from the validation split (made once, the same every
    time): 40 characters of context, the 24 that follow them against 24 from 3 other places
    of the split. Written here rather than committed: it is the corpus's text."""
    import numpy as np

    d = os.path.join(out, "task")
    if os.path.exists(os.path.join(d, TASK + ".yaml")):
        return d
    data = os.path.join("data", "shakespeare_char")
    with open(os.path.join(data, "meta.json")) as f:
        chars = json.load(f)["chars"]
    ids = np.fromfile(os.path.join(data, "val.bin"), dtype=np.uint16)
    text = "".join(chars[int(i)] for i in ids)
    rng = np.random.default_rng(SEED)
    span = CONTEXT + CHOICE
    rows = []
    for _ in range(TASK_DOCS):
        at, *others = (int(x) for x in rng.integers(0, len(text) - span, size=4))
        choices = [text[at + CONTEXT:at + span]] + [text[o:o + CHOICE] for o in others]
        answer = int(rng.integers(0, 4))
        choices[0], choices[answer] = choices[answer], choices[0]
        rows.append({"context": text[at:at + CONTEXT], "choices": choices, "answer": answer})
    os.makedirs(d + ".tmp", exist_ok=True)
    with open(os.path.join(d + ".tmp", TASK + ".jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    with open(os.path.join(d + ".tmp", TASK + ".yaml"), "w") as f:
        f.write(f"task: {TASK}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                f"    test: {os.path.abspath(os.path.join(d, TASK + '.jsonl'))}\n"
                f"test_split: test\noutput_type: multiple_choice\n"
                f"doc_to_text: '{{{{context}}}}'\ndoc_to_choice: '{{{{choices}}}}'\n"
                f"doc_to_target: '{{{{answer}}}}'\ntarget_delimiter: ''\n"
                f"metric_list:\n  - metric: acc\n    aggregation: mean\n"
                f"    higher_is_better: true\n")
    try:
        os.rename(d + ".tmp", d)
    except OSError:  # another lane made it first: the same content
        shutil.rmtree(d + ".tmp", ignore_errors=True)
    return d


def downstream(out: str, ckpt: str) -> dict:
    from tpgpt.analysis.harness import evaluate_tasks
    r = evaluate_tasks(ckpt, [TASK], include_path=task_dir(out), batch_size=64)["results"][TASK]
    return {"acc": r["acc,none"], "acc_stderr": r["acc_stderr,none"], "docs": TASK_DOCS}


# --- one job, in its own process -------------------------------------------------------------

def run_job(out: str, j: dict) -> None:
    from study_runner import write_json

    from tpgpt.analysis.sweep import train_plan
    from tpgpt.train.config import load_config, parse_overrides

    if j["kind"] == "train":
        d = run_dir(out, j["tp"], j["plan"])
        cfg = load_config(PRESET, parse_overrides(
            [f"--max_iters={BUDGET}", f"--lr_decay_iters={BUDGET}",
             f"--eval_interval={BUDGET // 6}", "--progress=false", f"--tp={j['tp']}",
             f"--seed={SEED}", f"--sync={j['plan']}"]))
        train_plan(cfg, j["plan"], d)
        write_json(os.path.join(d, "downstream.json"), downstream(out, os.path.join(d, "last")))
        return
    from tpgpt.analysis.convert import convert
    from tpgpt.analysis.distill import DistillOptions, distill
    from tpgpt.analysis.evaluate import evaluate_checkpoint

    t0 = time.perf_counter()
    _, options, grouping = VARIANTS[j["variant"]]
    z, d = (converted_path(out, j["tp"], j["plan"], j["variant"], k)
            for k in ("zero_shot", "distilled"))
    os.makedirs(os.path.dirname(z), exist_ok=True)
    if not os.path.exists(os.path.join(z, "state.json")):
        for p in (z, z + ".tmp", z + ".old", z + ".prev"):  # a conversion killed half-way
            shutil.rmtree(p, ignore_errors=True)
        convert(dense_dir(out), z, j["plan"], j["tp"], head_grouping=grouping)
    zero_shot = evaluate_checkpoint(z)
    again = os.path.isfile(os.path.join(d, "last", "state.json"))  # killed during distill
    r = distill(DistillOptions(ckpt=z, teacher=dense_dir(out), out=d, progress=False,
                               quiet=True, resume=again, overwrite=not again, **options))
    distilled = evaluate_checkpoint(d)
    write_json(converted_path(out, j["tp"], j["plan"], j["variant"], "result"), {
        "tp": j["tp"], "plan": j["plan"], "variant": j["variant"], "bits": zero_shot["bits"],
        "forward_syncs": zero_shot["forward_syncs"], "zero_shot_loss": zero_shot["loss"],
        "distilled_loss": distilled["loss"], "calibration_recovered": r["recovered"],
        "zero_shot_downstream": downstream(out, z), "distilled_downstream": downstream(out, d),
        "distill": options, "head_grouping": grouping, "wall_s": time.perf_counter() - t0})


# --- the study's command line (study_runner.py) ---------------------------------------------

def settings() -> dict:
    return {"iters": BUDGET, "preset": PRESET, "plans": list(PLANS), "tps": list(TPS),
            "seed": SEED, "dense": list(DENSE),
            "variants": {k: [list(t), o, g] for k, (t, o, g) in VARIANTS.items()},
            "task": [TASK, TASK_DOCS, CONTEXT, CHOICE]}


def write_report(out: str, doc: str, timings: dict) -> str:
    from study_llama_report import write_report as write
    write(out, doc, timings)
    return f"wrote {doc}/results.md, results.json, frontier.png"


if __name__ == "__main__":
    from study_runner import main
    sys.exit(main(sys.modules[__name__], __file__, "docs/study_llama", "out/study_llama"))
