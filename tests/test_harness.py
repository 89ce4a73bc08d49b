"""Downstream tasks through lm-evaluation-harness: tpgpt's model class against lm-eval's own
`--model hf` on the same Hugging Face directory (a Llama saved here by transformers, random
weights, GQA), on three tasks defined here from local files (no download): multiple choice
(log-likelihoods), rolling log-likelihood (perplexity) and greedy generation. Imported with
every sync on, the imported checkpoint scores what transformers scores (float64); under a plan
that drops syncs the log-likelihoods move."""
from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import assert_close
from dist_common import torchrun
from hf_dirs import make_hf_dir
from test_llama import rmsnorm_in_the_input_dtype  # noqa: F401 (an autouse fixture)
from tpgpt.cli import main

lm_eval = pytest.importorskip("lm_eval")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.numerics
TASKS = ["local_mc", "local_roll", "local_gen"]
WORDS = "the king shall be a man of the people and the queen shall be".split()


def write_tasks(root) -> str:
    """Three lm-eval tasks (YAML) over JSON-lines files in `root`; returns their folder."""
    with open(root / "mc.jsonl", "w") as f:
        for i in range(8):
            f.write(json.dumps({"question": " ".join(WORDS[i:i + 4]), "answer": i % 3,
                                "choices": [" king", " queen", " man of the people"]}) + "\n")
    with open(root / "text.jsonl", "w") as f:
        for i in range(4):  # the rolling texts run past block_size (32): several windows
            f.write(json.dumps({"text": " ".join(WORDS[i:] * 5), "answer": WORDS[i + 3],
                                "question": " ".join(WORDS[i:i + 3])}) + "\n")
    tasks = root / "tasks"
    tasks.mkdir()
    common = "dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {}\ntest_split: test\n"
    (tasks / "mc.yaml").write_text(
        "task: local_mc\n" + common.format(root / "mc.jsonl") +
        "output_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    (tasks / "roll.yaml").write_text(
        "task: local_roll\n" + common.format(root / "text.jsonl") +
        "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n    aggregation: weighted_perplexity\n"
        "    higher_is_better: false\n")
    (tasks / "gen.yaml").write_text(
        "task: local_gen\n" + common.format(root / "text.jsonl") +
        "output_type: generate_until\ndoc_to_text: '{{question}}'\ndoc_to_target: '{{answer}}'\n"
        "generation_kwargs:\n  until: ['\\n']\n  max_gen_toks: 6\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n"
        "    higher_is_better: true\n")
    return str(tasks)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(root, the tasks' folder, lm-eval's TaskManager of the local tasks only: the index of
    its own tasks takes ~12 s to build)."""
    from lm_eval.tasks import TaskManager
    root = tmp_path_factory.mktemp("harness")
    make_hf_dir(str(root / "hf"), "llama", seed=0)
    assert main(["import-hf", str(root / "hf"), "--out", str(root / "ck"), "--dtype",
                 "float64"]) == 0
    tasks = write_tasks(root)
    return root, tasks, TaskManager(include_path=tasks, include_defaults=False)


def evaluate(model: str, args: str, manager) -> dict:
    """lm-eval's Python API: task -> (its metrics, every request's responses)."""
    import tpgpt.analysis.harness  # noqa: F401 (registers "tpgpt")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    r = lm_eval.simple_evaluate(model=model, model_args=args, tasks=TASKS, batch_size=4,
                                device="cpu", log_samples=True, task_manager=manager)
    return {t: (r["results"][t], [s["resps"] for s in r["samples"][t]]) for t in TASKS}


def leaves(resps) -> list:
    """A task's responses, flattened: (log-likelihood, is_greedy) pairs, rolling sums or
    generated strings, in request order."""
    if isinstance(resps, (tuple, float, str)):
        return [resps]
    return [x for r in resps for x in leaves(r)]


def loglikelihoods(resps) -> torch.Tensor:
    return torch.tensor([x[0] if isinstance(x, tuple) else x for x in leaves(resps)],
                        dtype=torch.float64)


def test_lm_eval_scores_the_imported_model_as_transformers(setup):
    root, _, manager = setup
    hf = evaluate("hf", f"pretrained={root / 'hf'},dtype=float64", manager)
    ours = evaluate("tpgpt", f"ckpt={root / 'ck'}", manager)
    sharded = evaluate("tpgpt", f"ckpt={root / 'ck'},tp=4", manager)  # every sync on
    dropped = evaluate("tpgpt", f"ckpt={root / 'ck'},tp=2,sync=spd", manager)
    for run, name in ((ours, "dense"), (sharded, "tp=4")):
        for t in ("local_mc", "local_roll"):
            assert_close(loglikelihoods(run[t][1]), loglikelihoods(hf[t][1]), f"{name} {t}")
        assert run["local_mc"][0]["acc,none"] == hf["local_mc"][0]["acc,none"]
        assert [g for _, g in leaves(run["local_mc"][1])] == \
            [g for _, g in leaves(hf["local_mc"][1])], f"{name}: is_greedy"
        assert leaves(run["local_gen"][1]) == leaves(hf["local_gen"][1]), f"{name}: text"
        assert len(leaves(run["local_mc"][1])) == 24 and len(leaves(run["local_roll"][1])) == 4
    for t in ("local_mc", "local_roll"):  # a plan that drops syncs: another function
        diff = (loglikelihoods(dropped[t][1]) - loglikelihoods(hf[t][1])).abs().max()
        assert diff > 1e-3, t


def test_tpgpt_eval_tasks_prints_lm_evals_table_with_the_plan(setup, capsys):
    """`tpgpt eval --tasks`: the header names the plan, lm-eval's table follows; --json gives
    the results, the same under torchrun (tp=2 over two processes) as simulated."""
    root, tasks, _ = setup
    args = ["eval", "--ckpt", str(root / "ck"), "--tp", "2", "--sync", "spd", "--tasks",
            "local_mc,local_roll", "--include-path", tasks, "--limit", "4"]
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "plan: tp=2, sync='spd' (2 of 4 forward syncs), simulated TP in one process" in out
    assert "local_mc" in out and "acc" in out and "word_perplexity" in out
    assert main([*args, "--json"]) == 0
    sim = json.loads(capsys.readouterr().out)
    assert sim["tp"] == 2 and sim["forward_syncs"] == 2 and sim["mode"] == "simulated"
    proc = torchrun(2, "-m", ["tpgpt", *args, "--json"])
    dist = json.loads(proc.stdout)
    assert dist["mode"] == "distributed"
    for t, metric in (("local_mc", "acc,none"), ("local_roll", "word_perplexity,none")):
        assert dist["results"][t][metric] == pytest.approx(sim["results"][t][metric],
                                                           rel=1e-9), t


def test_a_character_level_checkpoint_is_scored_by_its_own_forward_pass(text_data, tmp_path):
    """A tpgpt-trained character-level model (no BOS or EOS: an empty context is conditioned on
    the newline its corpus starts documents with): each choice's log-likelihood is the sum of
    the model's own log-probabilities of its characters after the context's (float64: the
    batch's padding reorders no sum that tolerance does not cover)."""
    from tpgpt.analysis.harness import TpgptLM
    from tpgpt.checkpoint.load import load_trained
    from tpgpt.train.config import load_config
    from tpgpt.train.trainer import Trainer
    from conftest import tiny_train_overrides

    data, _ = text_data
    Trainer(load_config(None, tiny_train_overrides(data, str(tmp_path / "run"), max_iters=4,
                                                   tp=2, sync="spd", dtype="float64")),
            quiet=True).run()
    ckpt = str(tmp_path / "run" / "last")
    lm = TpgptLM(ckpt, batch_size=3)
    loaded = load_trained(ckpt)
    assert loaded.sync == "spd" and lm.prefix_token_id == lm.tok_encode("\n")[0]
    pairs = [("the king ", "shall"), ("", "love"), ("my good sir ", "y")]
    got = [ll for ll, _ in lm._loglikelihood_tokens(
        [((c, k), lm.tok_encode(c) if c else [lm.prefix_token_id], lm.tok_encode(k))
         for c, k in pairs])]
    for (c, k), ll in zip(pairs, got):
        ids = (lm.tok_encode(c) if c else [lm.prefix_token_id]) + lm.tok_encode(k)
        idx = torch.tensor([ids[:-1]])
        with torch.no_grad():
            logits, _ = loaded.model(idx, idx)
        logp = torch.log_softmax(logits[0].double(), -1)[-len(k):]
        want = logp.gather(1, torch.tensor(lm.tok_encode(k))[:, None]).sum()
        assert_close(torch.tensor([ll], dtype=torch.float64), want[None], f"{c!r} {k!r}")
