"""`tpgpt distill`: the regions it compares are the student's own function, only their
parameters train, the loss it reports is `tpgpt eval`'s, and resuming or running under torchrun
gives the run it would have been."""
from __future__ import annotations

import json
import re
import os

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_gpt, synthetic_text, tiny_train_overrides
from dist_common import torchrun
from tpgpt.analysis.distill_regions import (Region, dropping_regions, student_region,
                                            teacher_streams)
from tpgpt.analysis.numerics import FLOAT64_RTOL, TRAIN_LOSS_TOL64, adam_weight_bound, rel_err
from tpgpt.cli import main
from tpgpt.model import ParallelGPT

PLAN = "bits:110111"  # layer 1 drops its attention sync: one region, block 1


def test_dropping_regions():
    assert dropping_regions((1, 1, 1, 1)) == []
    assert dropping_regions((0, 1, 0, 1)) == [Region(0, 1), Region(2, 3)]
    # tp, then a parallel run of two layers: one region from layer 1's MLP to layer 2's
    assert dropping_regions((1, 1, 1, 0, 0, 1)) == [Region(3, 5)]
    assert dropping_regions((0, 0, 0, 1)) == [Region(0, 3)]
    assert Region(3, 5).name() == "1m-2m"


@pytest.mark.numerics
@pytest.mark.parametrize("bits", ["010101", "111001", "000001", "100111"])
def test_regions_compose_to_the_student(bits, batch):
    """The dense sublayers where the plan syncs, each dropping region run by `student_region`
    from the stream before it: together they are the student's logits. So a region's output
    is what the student computes there, and the teacher's stream the input it would see if
    everything before were exact."""
    dense = make_gpt(dtype=torch.float64, n_layer=3)
    model = ParallelGPT.from_dense(dense, tp=2, sync=f"bits:{bits}")
    idx, _ = batch
    regions = {r.first: r for r in dropping_regions(tuple(map(int, bits)))}
    x = teacher_streams(dense, idx, {0})[0]
    s = 0
    while s < 6:
        if s in regions:
            x, s = student_region(model, regions[s], x), regions[s].last + 1
            continue
        block = dense.transformer.h[s // 2]
        ln, sub = (block.ln_1, block.attn) if s % 2 == 0 else (block.ln_2, block.mlp)
        x, s = x + sub(ln(x)), s + 1
    logits = dense.lm_head(dense.transformer.ln_f(x))
    assert rel_err(logits, model(idx, idx)[0]) < FLOAT64_RTOL
    # the teacher's last stream is the dense model's
    last = teacher_streams(dense, idx, {6})[6]
    assert rel_err(dense.lm_head(dense.transformer.ln_f(last)), dense(idx, idx)[0]) \
        < FLOAT64_RTOL


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(teacher, student): a 3-layer 4-head model trained dense in float64, and its zero-shot
    conversion to PLAN at tp=2."""
    from tpgpt.data import prepare_text
    root = tmp_path_factory.mktemp("distill")
    (root / "input.txt").write_text(synthetic_text(6000))
    data = str(root / "data")
    prepare_text(data, str(root / "input.txt"), "char")
    kw = tiny_train_overrides(data, root / "teacher", n_layer=3, n_head=4, max_iters=60,
                              lr_decay_iters=60, dtype="float64")
    assert main(["train", "shakespeare_char_cpu", *[f"--{k}={v}" for k, v in kw.items()]]) == 0
    student = str(root / "student")
    assert main(["convert", "--ckpt", str(root / "teacher"), "--sync", PLAN, "--tp", "2",
                 "--out", student]) == 0
    return str(root / "teacher"), student


def distil(capsys, pair, out, *extra) -> dict:
    teacher, student = pair
    capsys.readouterr()
    assert main(["distill", "--ckpt", student, "--teacher", teacher, "--out", str(out),
                 "--steps", "12", "--kl-steps", "4", "--lr", "3e-4", "--batch-size", "4",
                 "--eval-interval", "4", "--tokens", "1000000000", "--progress", "false",
                 "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def weights(ckpt: str) -> dict[str, torch.Tensor]:
    d = os.path.join(ckpt, "model")
    out = {}
    for f in sorted(os.listdir(d)):
        if f.endswith(".safetensors"):
            out.update(load_file(os.path.join(d, f)))
    return out


def test_only_the_region_trains_and_eval_agrees(pair, capsys, tmp_path):
    teacher, student = pair
    r = distil(capsys, pair, tmp_path / "d")
    assert r["regions"] == ["1a-1m"] and r["finished"] and r["steps_done"] == 16
    # what it minimises went down: the region's error against the teacher on held-out text
    from tpgpt.analysis.distill_regions import region_losses
    from tpgpt.analysis.evaluate import checkpoint_split
    from tpgpt.checkpoint.load import load_dense, load_trained, read_checkpoint
    dense = load_dense(teacher)[0]
    val = checkpoint_split(read_checkpoint(teacher), "val")
    idx = val.batch(torch.arange(0, 64 * 16, 16))[0]  # 64 windows of held-out text
    err = [region_losses(load_trained(c).model, dense, [Region(2, 3)], idx)[1][0]
           for c in (student, r["checkpoint"])]
    assert err[1] < 0.5 * err[0], err  # measured: 5x lower
    before, after = weights(student), weights(r["checkpoint"])
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("model.transformer.h.1.") for k in changed), changed
    assert not any(k.startswith("optim.") for k in before)
    moments = {f"optim.{k[len('model.'):]}.{f}" for k in after
               if k.startswith("model.transformer.h.1.") for f in ("exp_avg", "exp_avg_sq")}
    assert {k for k in after if k.startswith("optim.")} == moments | {"optim.step"}
    # the checkpoint is the student's plan, and its reported loss is eval's over the split
    capsys.readouterr()
    assert main(["eval", "--ckpt", str(tmp_path / "d"), "--json"]) == 0
    e = json.loads(capsys.readouterr().out)
    assert e["bits"] == PLAN[5:] and e["tp"] == 2 and not e["converted"]
    assert e["loss"] == pytest.approx(r["student_loss_after"], rel=FLOAT64_RTOL)
    assert main(["eval", "--ckpt", teacher, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["loss"] == pytest.approx(r["teacher_loss"],
                                                                        rel=FLOAT64_RTOL)


def test_a_region_across_blocks_trains_its_sublayers_only(pair, capsys, tmp_path):
    """bits:111001: one region from layer 1's MLP to layer 2's; layer 1's attention (synced)
    keeps its weights."""
    teacher, _ = pair
    student = str(tmp_path / "s")
    assert main(["convert", "--ckpt", teacher, "--sync", "bits:111001", "--tp", "2", "--out",
                 student]) == 0
    r = distil(capsys, (teacher, student), tmp_path / "d", "--steps", "3", "--kl-steps", "0")
    assert r["regions"] == ["1m-2m"]
    before, after = weights(student), weights(r["checkpoint"])
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    inside = ("model.transformer.h.1.ln_2.", "model.transformer.h.1.mlp.",
              "model.transformer.h.2.")
    assert changed == {k for k in before if k.startswith(inside)}, changed


def test_resume_continues_the_same_run(pair, capsys, tmp_path):
    full = distil(capsys, pair, tmp_path / "full")
    part = distil(capsys, pair, tmp_path / "part", "--stop-after", "6")
    assert not part["finished"] and part["steps_done"] == 6
    resumed = distil(capsys, pair, tmp_path / "part", "--resume")
    # the stop evaluated and saved at step 6 as well; everything else is the same run
    assert [h for h in resumed["history"] if h["step"] != 6] == full["history"]
    a, b = weights(full["checkpoint"]), weights(resumed["checkpoint"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def lines(d):
        with open(d / "metrics.jsonl") as f:
            return [json.loads(x) for x in f if json.loads(x)["iter"] != 6]
    assert lines(tmp_path / "full") == lines(tmp_path / "part")


def test_a_sharded_teacher_gives_the_dense_teachers_run(pair, capsys, tmp_path):
    """The teacher sharded like the student (tp=2, every sync on; torchrun's default, here
    simulated) is the same function as the dense one: the same losses and weights, float64."""
    dense = distil(capsys, pair, tmp_path / "dense")
    sharded = distil(capsys, pair, tmp_path / "sharded", "--teacher-sharded")
    assert dense["teacher_layout"] == "dense in every process"
    assert sharded["teacher_layout"].startswith("sharded like the student at tp=2")
    assert sharded["teacher_loss"] == pytest.approx(dense["teacher_loss"], rel=FLOAT64_RTOL)
    for x, y in zip(dense["history"], sharded["history"], strict=True):
        assert x["step"] == y["step"] and abs(x["loss"] - y["loss"]) < TRAIN_LOSS_TOL64
    a, b = weights(dense["checkpoint"]), weights(sharded["checkpoint"])
    bound = adam_weight_bound([3e-4] * 16)
    assert max((b[k] - a[k]).abs().max().item() for k in a if k.startswith("model.")) < bound


def test_torchrun_equals_simulated(pair, capsys, tmp_path):
    """Two processes, one rank each, float64: the same losses and weights to rounding."""
    teacher, student = pair
    one = distil(capsys, pair, tmp_path / "one")
    torchrun(2, "-m", ["tpgpt", "distill", "--ckpt", student, "--teacher", teacher, "--out",
                       str(tmp_path / "two"), "--steps", "12", "--kl-steps", "4", "--lr",
                       "3e-4", "--batch-size", "4", "--eval-interval", "4", "--tokens",
                       "1000000000", "--progress", "false"])
    with open(tmp_path / "two" / "summary.json") as f:
        two = json.load(f)
    layout = two["teacher_layout"]  # each process holds its share of the teacher
    assert layout.startswith("sharded like the student at tp=2") and "torchrun job" in layout
    held, whole = map(float, re.search(r"([\d.]+)M of its ([\d.]+)M", layout).groups())
    assert held < 0.75 * whole, layout
    for x, y in zip(one["history"], two["history"], strict=True):
        assert x["step"] == y["step"] and abs(x["loss"] - y["loss"]) < TRAIN_LOSS_TOL64
    from tpgpt.checkpoint.load import load_dense
    a, b = (load_dense(r)[0].state_dict() for r in (one["checkpoint"], two["checkpoint"]))
    bound = adam_weight_bound([3e-4] * 16)  # 16 steps at no more than the peak lr
    assert max((b[k] - a[k]).abs().max().item() for k in a) < bound
