"""`tpgpt sensitivity`: the measurements of sensitivity.py on a checkpoint, as a table and JSON
(the picture: sensitivity_plot.py)."""
from __future__ import annotations

from ..text import counted, signed
from ..checkpoint.load import (load_dense, model_config, read_checkpoint, require_plain_syncs,
                               trained_function)
from ..comm.plan import SyncPlan, validate_tp
from ..errors import ConfigError
from .evaluate import auto_batch_size, checkpoint_split
from .sensitivity import (PlanLoss, backward_cumulative, calibration_set, greedy_budget,
                          lazy_greedy_budget, point_code, point_name, single_drop)

SEARCHES = {"lazy": lazy_greedy_budget, "exact": greedy_budget}


def sensitivity(path: str, tp: int, tokens: int = 8192, split: str = "val",
                data_dir: str | None = None, budget: int | None = None,
                batch_size: int | None = None, search: str = "lazy") -> dict:
    """Single-drop and backward cumulative sensitivities of a checkpoint at `tp`, from the
    function it was trained to be (its plan; every sync on if it was trained at tp=1); with
    `budget`, the greedy plan of that many forward syncs and its path, by the lazy or the exact
    greedy search (sensitivity.py)."""
    if search not in SEARCHES:
        raise ConfigError(f"--search {search!r} is invalid: choose lazy or exact")
    if tokens < 1:
        raise ConfigError(f"--tokens {tokens} is invalid: it must be >= 1")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size} is invalid: it must be >= 1")
    state = read_checkpoint(path)
    config = model_config(state)
    validate_tp(tp, config)
    if tp < 2:
        raise ConfigError("--tp 1 has no syncs to drop: give the tp you will serve at (>= 2)")
    require_plain_syncs(state, "sensitivity")
    trained_tp, trained_sync = trained_function(state)
    base = SyncPlan.parse(trained_sync, config.n_layer).bits
    if budget is not None and not 1 <= budget <= sum(base):
        raise ConfigError(f"--budget {budget} is out of range: the trained plan has "
                          f"{sum(base)} forward syncs, a plan keeps at least 1 (the last)")
    calib = calibration_set(checkpoint_split(state, split, data_dir), tokens)
    dense, _, ckpt = load_dense(path, state)
    element = next(dense.parameters()).element_size()
    loss = PlanLoss(dense, tp, calib,
                    batch_size or auto_batch_size(config.block_size, config.vocab_size, element))
    single = single_drop(loss, base)
    cumulative = backward_cumulative(loss, base)
    out = {"checkpoint": ckpt, "tp": tp, "trained_sync": trained_sync,
           "base_bits": "".join(map(str, base)), "n_layer": config.n_layer,
           "calibration": {"data": calib.path, "split": split, "tokens": calib.tokens},
           "base_loss": loss(base),
           "single_drop": [{"point": s, "name": point_name(s), "delta": d}
                           for s, d in single.items()],
           "backward_cumulative": [{"layer": i, "delta": d} for i, d in
                                   sorted(cumulative.items())]}
    if budget is not None:
        before = len(loss.measured)
        path_ = SEARCHES[search](loss, base, budget)
        out["search"] = {"kind": search, "plans_measured": len(loss.measured) - before}
        out["greedy_path"] = [{**p, "bits": "".join(map(str, p["bits"])),
                               "dropped": None if p["dropped"] is None else
                               point_name(p["dropped"]), "dropped_point": p["dropped"]}
                              for p in path_]
        out["budget"] = budget
        out["plan"] = "bits:" + out["greedy_path"][-1]["bits"]
    out["plans_measured"] = len(loss.measured)
    return out


def format_sensitivity(r: dict) -> str:
    single = {x["point"]: x["delta"] for x in r["single_drop"]}
    cum = {x["layer"]: x["delta"] for x in r["backward_cumulative"]}
    cell = lambda v: "     -" if v is None else signed(v)  # noqa: E731
    lines = [f"sensitivity of {r['checkpoint']} at tp={r['tp']} (from its trained plan "
             f"{r['trained_sync']!r}), zero-shot, on the first {r['calibration']['tokens']:,} "
             f"tokens of {r['calibration']['data']}: base loss {r['base_loss']:.4f}", "",
             "loss increase when one sync is dropped alone; cumulative: the SPD paper's, the "
             "attention sync dropped with every later one dropped already", "",
             "layer  attn (alone)  mlp (alone)  attn (cumulative)"]
    for i in range(r["n_layer"]):
        lines.append(f"{i:5d}  {cell(single.get(2 * i)):>12}  {cell(single.get(2 * i + 1)):>11}"
                     f"  {cell(cum.get(i)):>17}")
    order = sorted(single, key=single.get)
    lines += ["", "least harmful first: " + ", ".join(
        f"L{point_code(s)}" for s in order)]
    if "greedy_path" in r:
        how = ("lazy: re-measure the most promising until one stays the best"
               if r["search"]["kind"] == "lazy" else "exact: re-measure every remaining sync")
        lines += ["", f"greedy selection down to {counted(r['budget'], 'forward sync')} (drop "
                      f"the least harmful, repeat; {how}; "
                      f"{counted(r['search']['plans_measured'], 'plan')} measured beyond the "
                      f"single drops):", "  syncs  loss     dropped"]
        lines += [f"  {p['forward_syncs']:5d}  {p['loss']:.4f}  {p['dropped'] or '-'}"
                  for p in r["greedy_path"]]
        lines += ["", f"plan with {counted(r['budget'], 'forward sync')}: {r['plan']}  (use it "
                      f"as --sync with train, eval, sample, plan, bench)"]
    return "\n".join(lines)
