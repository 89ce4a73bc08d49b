"""The `tpgpt` command: one entry point, alone or under torchrun (RANK in the environment)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from .model import GPT, GPTConfig
from .errors import ConfigError

TOLERANCE = 1e-5  # relative, fp32: "exactly the dense model" up to summation order


class CliError(Exception):
    """A bad input from the user: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        raise CliError(f"{self.prog}: {message}")


def _bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean (true or false)")


def _add_model_args(p: argparse.ArgumentParser, **defaults) -> None:
    """--field=value for every GPTConfig field, checked by GPTConfig itself."""
    for f in dataclasses.fields(GPTConfig):
        kind = {"int": int, "float": float, "bool": _bool}[str(f.type)]
        extra = {"nargs": "?", "const": True} if kind is _bool else {}
        p.add_argument(f"--{f.name}", f"--{f.name.replace('_', '-')}", dest=f.name, type=kind,
                       default=defaults.get(f.name, f.default), metavar=f.name.upper(),
                       help=f"model: {f.name} (default {defaults.get(f.name, f.default)})", **extra)


def _model_config(args) -> GPTConfig:
    return GPTConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(GPTConfig)})


def _cmd_plan(args) -> int:
    from .plan import SyncPlan, validate_tp
    from .plan_report import format_plan, plan_report

    cfg = _model_config(args)
    validate_tp(args.tp, cfg.n_head, cfg.vocab_size, args.vocab_parallel)
    if args.batch_size < 1:
        raise ConfigError(f"batch_size={args.batch_size} is invalid: it must be >= 1")
    seq_len = args.seq_len or cfg.block_size
    if not 1 <= seq_len <= cfg.block_size:
        raise ConfigError(f"seq_len={seq_len} is invalid: it must be in [1, block_size="
                         f"{cfg.block_size}]")
    if args.dtype_bytes not in (2, 4, 8):
        raise ConfigError(f"dtype_bytes={args.dtype_bytes} is invalid: choose 2, 4 or 8")
    plans = args.sync or ["tp"]
    reports = [plan_report(cfg, SyncPlan.parse(s, cfg.n_layer), tp=args.tp,
                           batch_size=args.batch_size, seq_len=seq_len,
                           vocab_parallel=args.vocab_parallel, dtype_bytes=args.dtype_bytes,
                           grad_clip=args.grad_clip)
               for s in plans]
    if args.interconnect:
        from .costmodel import load_interconnect, measured_compute, predict_step
        if args.achieved_tflops is not None and not args.achieved_tflops > 0:
            raise ConfigError(f"achieved_tflops={args.achieved_tflops} must be > 0")
        ic = load_interconnect(args.interconnect)
        rate_note = None
        if args.achieved_tflops is None:  # a `bench plans` result knows its compute rate
            measured = measured_compute(args.interconnect)
            args.achieved_tflops = measured[0] if measured else 300.0
            if measured:
                shape = measured[1]
                same = all(shape.get(k) == getattr(cfg, k) for k in shape)
                rate_note = (f"compute rate {measured[0]:.3g} TFLOP/s: measured by bench plans on "
                             + ("this model's shape" if same else
                                f"another shape ({shape.get('n_layer')} layers, n_embd "
                                f"{shape.get('n_embd')}), so a rough guess here")
                             + "; --achieved-tflops overrides it")
        for r in reports:
            r["prediction"] = predict_step(r, cfg, ic, args.achieved_tflops)
    if args.json:
        print(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2))
        return 0
    print("\n\n".join(format_plan(r) for r in reports))
    if args.interconnect:
        from .plan_report import format_predictions
        print("\n" + format_predictions(reports, ic, args.achieved_tflops))
        if rate_note:
            print("  " + rate_note)
    return 0


def _cmd_verify(args) -> int:
    import torch

    from .verify import check_plan, check_distributed

    cfg = _model_config(args)
    for tp in args.tp:
        from .plan import validate_tp
        validate_tp(tp, cfg.n_head, cfg.vocab_size, args.vocab_parallel)
    torch.manual_seed(args.seed)
    gpt = GPT(cfg)
    idx = torch.randint(0, cfg.vocab_size, (args.batch_size, cfg.block_size))
    targets = torch.randint(0, cfg.vocab_size, (args.batch_size, cfg.block_size))
    distributed = "RANK" in os.environ
    if distributed:
        from .distributed import init_distributed
        rank, world, _ = init_distributed(backend="gloo")
    rows = []
    try:
        for tp in args.tp:
            for sync in args.plans:
                check = check_distributed if distributed else check_plan
                rows.append(check(gpt, tp, sync, idx, targets, args.vocab_parallel))
    finally:
        if distributed:
            import torch.distributed as dist
            dist.barrier()
            dist.destroy_process_group()
    ok = all(r["counts_match"] and (not r["exact"] or max(r["loss_err"], r["logits_err"],
                                                          r["grad_err"]) < TOLERANCE)
             for r in rows)
    if distributed and rank != 0:
        return 0 if ok else 1
    ref = "simulated" if distributed else "dense"
    print(f"{'tp':>3}  {'sync':<24} {'fwd syncs':>9}  {'vs ' + ref:<10} {'loss':>9} "
          f"{'logits':>9} {'grads':>9}  counts = plan")
    for r in rows:
        exact = "exact" if r["exact"] else "differs"
        print(f"{r['tp']:>3}  {r['sync']:<24} {r['forward_syncs']:>9}  {exact:<10} "
              f"{r['loss_err']:9.1e} {r['logits_err']:9.1e} {r['grad_err']:9.1e}  "
              f"{'yes' if r['counts_match'] else 'NO'}")
    print(f"\n{'all checks passed' if ok else 'CHECKS FAILED'} (relative tolerance {TOLERANCE:g}; "
          f"'differs' rows drop syncs, so they are other models than the {ref} one"
          + (")" if distributed else ", and only their counts are checked)"))
    return 0 if ok else 1


def _cmd_prepare(args) -> int:
    from . import data

    if args.dataset == "shakespeare_char":
        meta = data.prepare_shakespeare_char(args.out, args.input, force=args.force)
    elif args.dataset == "text":
        if not args.input:
            raise CliError("tpgpt prepare text: --input FILE is required")
        meta = data.prepare_text(args.out, args.input, args.tokenizer, args.val_fraction,
                                 force=args.force)
    else:
        meta = data.prepare_openwebtext(args.out, num_proc=args.num_proc, force=args.force)
    print(f"prepared {args.out}: {meta['train_tokens']:,} train and {meta['val_tokens']:,} val "
          f"tokens, tokenizer {meta['tokenizer']}, vocab_size {meta['vocab_size']}")
    return 0


def _cmd_train(args, extra: list[str]) -> int:
    from .config import load_config, parse_overrides
    from .train import Trainer

    cfg = load_config(args.config, parse_overrides(extra))
    resume = args.resume
    from .distributed import restart_count
    restarts = restart_count()
    if restarts and not resume:
        from .checkpoint import find_checkpoint
        # torchrun --max-restarts restarted the workers after a failure: continue, don't restart
        resume = find_checkpoint(os.path.join(cfg.out_dir, "last")) is not None
        if resume and os.environ.get("RANK", "0") == "0":
            print(f"tpgpt train: restart {restarts} by torchrun: resuming from "
                  f"{cfg.out_dir}/last", flush=True)
    try:
        trainer = Trainer(cfg, resume=resume, overwrite=args.overwrite or bool(restarts))
        trainer.run()
        trainer.close()
    finally:
        _shutdown()
    return 0


def _cmd_sweep(args, extra: list[str]) -> int:
    from .config import load_config, parse_overrides
    from .sweep import run_sweep

    cfg = load_config(args.config, parse_overrides(extra))
    echo = print if os.environ.get("RANK", "0") == "0" else (lambda *a: None)
    try:
        rows = run_sweep(cfg, args.plans, args.out, echo=echo)
    finally:
        _shutdown()
    echo(f"\nwrote {args.out}/results.md, results.csv, frontier.png, loss_curves.png")
    with open(os.path.join(args.out, "results.md")) as f:
        echo(f.read())
    return 0 if rows else 1


def _shutdown() -> None:
    if "RANK" in os.environ:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()


def _cmd_sample(args) -> int:
    from .sample import sample

    texts = sample(args.ckpt, args.prompt, args.num_samples, args.max_new_tokens,
                   args.temperature, args.top_k, args.seed, args.device)
    print("\n---------------\n".join(texts))
    return 0


def _cmd_export(args) -> int:
    from .hf import export_hf

    found = export_hf(args.ckpt, args.out, force=args.force)
    print(f"exported {found} to {args.out} (model.safetensors, config.json): loads with "
          f"tpgpt.hf.load_hf and transformers' GPT2LMHeadModel.from_pretrained")
    return 0


def _cmd_import_hf(args) -> int:
    from .hf import import_hf

    import_hf(args.path, args.out)
    print(f"imported {args.path} as the tpgpt checkpoint {args.out}")
    return 0


def _cmd_bench(args) -> int:
    import importlib

    module = {"throughput": "throughput", "comm": "comm", "plans": "plans", "dist": "dtensor"}
    return getattr(importlib.import_module(f".bench.{module[args.what]}", __package__),
                   f"run_{args.what}_cli")(args)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tpgpt", description="Tensor-parallel GPT with per-layer sync plans.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    plan = sub.add_parser("plan", help="where a sync plan communicates, and how much",
                          description="Per-layer sync diagram and the collectives of one training "
                                      "step (forward with loss, backward, gradient sync).")
    _add_model_args(plan)
    plan.add_argument("--tp", type=int, default=2, help="tensor-parallel degree (default 2)")
    plan.add_argument("--sync", nargs="+", metavar="PLAN",
                      help="one or more plans: tp | spd | parallel | a comma list such as "
                           "tp,spd | bits:0111... (default tp)")
    plan.add_argument("--vocab-parallel", "--vocab_parallel", dest="vocab_parallel", type=_bool,
                      nargs="?", const=True, default=False, help="vocab-parallel embedding/loss")
    plan.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=12)
    plan.add_argument("--seq-len", "--seq_len", dest="seq_len", type=int, default=None,
                      help="tokens per sequence (default block_size)")
    plan.add_argument("--dtype-bytes", "--dtype_bytes", dest="dtype_bytes", type=int, default=4,
                      help="bytes per activation element: 4 fp32, 2 bf16 (default 4)")
    plan.add_argument("--json", action="store_true", help="print JSON for machines")
    plan.add_argument("--config", help="take the model, tp, sync and batch from a training "
                                       "config (path or preset); flags still override")
    plan.add_argument("--interconnect", metavar="NAME|FILE",
                      help="predict step time on an interconnect: nvlink-h100, pcie4, ib-ndr, "
                           "100gbe, 25gbe, or a profile from 'tpgpt bench comm'")
    plan.add_argument("--achieved-tflops", "--achieved_tflops", dest="achieved_tflops",
                      type=float, default=None,
                      help="compute rate of one device for the prediction (default: the rate "
                           "measured by 'bench plans' when --interconnect is its result, else "
                           "300 TFLOP/s, about 30%% of an H100's dense bf16 peak)")
    plan.add_argument("--grad-clip", "--grad_clip", dest="grad_clip", type=_bool, nargs="?",
                      const=True, default=False, help="count the grad-norm all-reduce of clipping")
    plan.set_defaults(func=_cmd_plan)
    p.plan_parser = plan  # `plan --config` sets this subparser's defaults

    ver = sub.add_parser("verify", help="check parallel == dense and counts == plan",
                         description="On a small model: simulated TP with every sync on equals "
                                     "the dense GPT, and every plan's collectives equal the plan. "
                                     "Under torchrun: distributed equals simulated, every plan.")
    _add_model_args(ver, n_layer=4, n_head=4, n_embd=64, vocab_size=96, block_size=32)
    ver.add_argument("--tp", type=_int_list, default=[1, 2, 4], help="comma list (default 1,2,4)")
    ver.add_argument("--plans", nargs="+", default=["tp", "spd", "tp,spd", "parallel",
                                                    "spd,parallel", "bits:01100111"])
    ver.add_argument("--vocab-parallel", "--vocab_parallel", dest="vocab_parallel", type=_bool,
                     nargs="?", const=True, default=False)
    ver.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=4)
    ver.add_argument("--seed", type=int, default=1337)
    ver.set_defaults(func=_cmd_verify)

    prep = sub.add_parser("prepare", help="tokenize a dataset into train.bin/val.bin/meta.json")
    prep.add_argument("dataset", choices=["shakespeare_char", "text", "openwebtext"])
    prep.add_argument("--out", required=True, help="output directory")
    prep.add_argument("--input", help="a local text file (shakespeare_char: a local copy of the "
                                      "corpus instead of the download; default $TPGPT_SHAKESPEARE)")
    prep.add_argument("--tokenizer", choices=["char", "byte"], default="char", help="text only")
    prep.add_argument("--val-fraction", "--val_fraction", dest="val_fraction", type=float,
                      default=0.1, help="text only (default 0.1)")
    prep.add_argument("--num-proc", "--num_proc", dest="num_proc", type=int, default=8,
                      help="openwebtext only: tokenizer processes")
    prep.add_argument("--force", action="store_true", help="replace a prepared dataset in --out")
    prep.set_defaults(func=_cmd_prepare)

    train = sub.add_parser("train", help="train a GPT under a sync plan (alone or under torchrun)",
                           description="Train from a TOML preset (a path or a name in configs/) "
                                       "with --key=value overrides of any config field.")
    train.add_argument("config", help="TOML config: path or preset name")
    train.add_argument("--resume", action="store_true",
                       help="continue from out_dir/last exactly where it stopped")
    train.add_argument("--overwrite", action="store_true",
                       help="start afresh in an out_dir that holds a checkpoint (replacing it)")
    train.set_defaults(func=_cmd_train, takes_overrides=True)

    sw = sub.add_parser("sweep", help="train one model per sync plan; table and plots",
                        description="Trains CONFIG once per plan (same data, seed, budget) in "
                                    "OUT/<plan>/, then writes results.csv, results.md, "
                                    "frontier.png and loss_curves.png. Rerun to resume.")
    sw.add_argument("config", help="TOML config: path or preset name")
    sw.add_argument("--plans", nargs="+", required=True, metavar="PLAN",
                    help="sync plans; the all-sync 'tp' baseline is added if missing")
    sw.add_argument("--out", required=True, help="sweep directory")
    sw.set_defaults(func=_cmd_sweep, takes_overrides=True)

    exp = sub.add_parser("export", help="write a checkpoint as an HF GPT-2 directory")
    exp.add_argument("--ckpt", required=True, help="a checkpoint dir or a run's out_dir")
    exp.add_argument("--out", required=True, help="directory for model.safetensors + config.json")
    exp.add_argument("--force", action="store_true", help="replace an earlier export in --out")
    exp.set_defaults(func=_cmd_export)

    imp = sub.add_parser("import-hf", help="read an HF GPT-2 directory into a tpgpt checkpoint")
    imp.add_argument("path", help="directory with config.json and model.safetensors")
    imp.add_argument("--out", required=True, help="the checkpoint directory to write")
    imp.set_defaults(func=_cmd_import_hf)

    from .bench.args import add_bench_parser
    bench = add_bench_parser(sub, _positive_int)
    bench.set_defaults(func=_cmd_bench)

    samp = sub.add_parser("sample", help="generate text from a checkpoint")
    samp.add_argument("--ckpt", required=True, help="a checkpoint dir or a run's out_dir")
    samp.add_argument("--prompt", default="\n")
    samp.add_argument("--num-samples", "--num_samples", dest="num_samples", type=int, default=3)
    samp.add_argument("--max-new-tokens", "--max_new_tokens", dest="max_new_tokens", type=int,
                      default=500)
    samp.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    samp.add_argument("--top-k", "--top_k", dest="top_k", type=int, default=200)
    samp.add_argument("--seed", type=int, default=1337)
    samp.add_argument("--device", default="cpu")
    samp.set_defaults(func=_cmd_sample)
    return p


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of integers") from None


def _plan_defaults_from_config(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """`tpgpt plan --config X`: the config's values become the plan command's defaults."""
    from .config import load_config

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if not known.config:
        return
    cfg = load_config(known.config)
    plan = parser.plan_parser
    model = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(GPTConfig)}
    from .data import resolve_vocab_size
    # GPT-2's padded vocabulary when neither the config nor its data says; it sets the head's
    # FLOPs (and so --interconnect's compute time): pass --vocab_size to be exact
    model["vocab_size"] = resolve_vocab_size(cfg, 50304)
    plan.set_defaults(**model, tp=cfg.tp, sync=[cfg.sync], vocab_parallel=cfg.vocab_parallel,
                      batch_size=cfg.batch_size, seq_len=cfg.block_size,
                      grad_clip=cfg.grad_clip > 0,
                      dtype_bytes=2 if cfg.dtype in ("bfloat16", "float16") else 4)


def _is_comm_failure(e: BaseException) -> bool:
    import torch.distributed as dist
    text = str(e).lower()
    return isinstance(e, getattr(dist, "DistError", ())) or any(
        w in text for w in ("gloo", "nccl", "connection", "timed out", "broken pipe"))


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        argv = sys.argv[1:] if argv is None else argv
        if argv[:1] == ["plan"]:
            _plan_defaults_from_config(parser, argv[1:])
        args, extra = parser.parse_known_args(argv)
        if getattr(args, "takes_overrides", False):
            return args.func(args, extra)
        if extra:
            raise CliError(f"unrecognized arguments: {' '.join(extra)}")
        return args.func(args)
    except RuntimeError as e:
        # torch.distributed raises RuntimeError subclasses (DistBackendError, gloo's errors)
        # when a peer is gone: one line naming this rank instead of a traceback per rank
        if "RANK" not in os.environ or not _is_comm_failure(e):
            raise
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        print(f"tpgpt: error: [rank {os.environ['RANK']}] a collective failed, a peer process is "
              f"gone or unreachable (torchrun's report names it): {first[:200]}",
              file=sys.stderr, flush=True)
        return 1
    except (CliError, ConfigError) as e:
        rank = os.environ.get("RANK", "0")
        if rank != "0":
            # Under torchrun every rank usually meets the same error: rank 0 says it, and
            # torchrun stops the others while they wait. An error of one rank alone still shows.
            import time
            time.sleep(1.0)
            print(f"tpgpt: error: [rank {rank}] {e}", file=sys.stderr, flush=True)
        else:
            print(f"tpgpt: error: {e}", file=sys.stderr, flush=True)
        return 2
