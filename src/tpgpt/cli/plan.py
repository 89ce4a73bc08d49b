"""`tpgpt plan`: where a sync plan communicates and how much; with --interconnect, what it costs."""
from __future__ import annotations

import argparse
import dataclasses
import json

from ..comm.wire import DEFAULT_BLOCK, Variant, parse_variant
from ..errors import ConfigError
from ..model import GPTConfig
from .common import add_model_args, boolean, flag, model_config


def register(sub) -> argparse.ArgumentParser:
    plan = sub.add_parser("plan", help="where a sync plan communicates, and how much",
                          description="Per-layer sync diagram and the collectives of one training "
                                      "step (forward with loss, backward, gradient sync).")
    add_model_args(plan)
    plan.add_argument("--tp", type=int, default=2, help="tensor-parallel degree (default 2)")
    plan.add_argument("--sync", nargs="+", metavar="PLAN",
                      help="one or more plans: tp | spd | parallel | a comma list such as "
                           "tp,spd | bits:0111... (default tp); PLAN@DTYPE sends its syncs in "
                           "DTYPE (tp@int8), PLAN@ladder ladders them, PLAN@sp adds sequence "
                           "parallelism")
    flag(plan, "sync_dtype", nargs="+", metavar="DTYPE", default=["float32"],
         help="what the residual stream's syncs send: float32 (as computed), bfloat16, int8 "
              "(one or more; every plan is reported with each)")
    flag(plan, "sync_block", type=int, default=DEFAULT_BLOCK,
         help=f"int8 syncs: channels per float32 scale (default {DEFAULT_BLOCK})")
    flag(plan, "ladder", type=boolean, nargs="?", const=True, default=False,
         help="ladder syncs: each sync's all-reduce overlaps the next region's compute (the "
              "prediction counts max(compute, communication) there)")
    flag(plan, "sequence_parallel", type=boolean, nargs="?", const=True, default=False,
         help="sequence parallelism: each sync a reduce-scatter + all-gather, the stream "
              "between them split along the sequence (a decode step of one token unsplit)")
    flag(plan, "vocab_parallel", type=boolean, nargs="?", const=True, default=False,
         help="vocab-parallel embedding/loss")
    flag(plan, "batch_size", type=int, default=None,
         help="sequences per step (default 12; with --inference 1)")
    flag(plan, "seq_len", type=int, default=None, help="tokens per sequence (default block_size)")
    flag(plan, "dtype_bytes", type=int, default=4,
         help="bytes per activation element: 4 fp32, 2 bf16 (default 4)")
    plan.add_argument("--json", action="store_true", help="print JSON for machines")
    plan.add_argument("--config", help="take the model, tp, sync and batch from a training "
                                       "config (path or preset); flags still override")
    plan.add_argument("--hf-config", "--hf_config", dest="hf_config", metavar="PATH",
                      help="take the model's shape from a Hugging Face config.json (or a "
                           "directory holding one): GPT-2, Llama, Mistral, Qwen2, Qwen3; its "
                           "bf16/fp16 dtype sets --dtype-bytes 2; flags still override")
    plan.add_argument("--interconnect", metavar="NAME|FILE",
                      help="predict step time on an interconnect: nvlink-h100, nvlink-a100, "
                           "pcie4, ib-ndr, 100gbe, 25gbe, or a profile from 'tpgpt bench comm'")
    flag(plan, "achieved_tflops", type=float, default=None,
         help="compute rate of one device for the prediction (default: the rate measured by "
              "'bench plans' when --interconnect is its result, else 300 TFLOP/s, about 30%% of "
              "an H100's dense bf16 peak)")
    flag(plan, "grad_clip", type=boolean, nargs="?", const=True, default=False,
         help="count the grad-norm all-reduce of clipping")
    plan.add_argument("--inference", action="store_true",
                      help="generation instead of training: the collectives of the prefill and "
                           "of one decode step; with --interconnect, predicted time to first "
                           "token and per-token decode latency")
    flag(plan, "prompt_len", type=int, default=None,
         help="--inference: prompt tokens (default block_size // 2)")
    flag(plan, "new_tokens", type=int, default=None,
         help="--inference: tokens generated (default: the rest of block_size)")
    plan.add_argument("--device", metavar="NAME|FILE",
                      help="--inference with --interconnect: the GPU (h100-sxm, a100-sxm, "
                           "a100-pcie, a100-sxm-330w) or a 'tpgpt bench decode' result "
                           "(default: the GPU the interconnect implies, or the device such a "
                           "result measured)")
    plan.set_defaults(func=run, prepare=defaults_from_config)
    return plan


def defaults_from_config(plan: argparse.ArgumentParser, argv: list[str]) -> None:
    """`tpgpt plan --config X`: the config's values become the plan command's defaults."""
    from ..data import resolve_vocab_size
    from ..train.config import activation_bytes, load_config

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    pre.add_argument("--hf-config", "--hf_config", dest="hf_config")
    known, _ = pre.parse_known_args(argv)
    if known.config and known.hf_config:
        raise ConfigError("--config and --hf-config both give the model: pass one")
    if known.hf_config:
        from ..checkpoint.hf import hf_model_config
        config, hf = hf_model_config(known.hf_config)
        dtype = hf.get("dtype") or hf.get("torch_dtype")
        plan.set_defaults(**dataclasses.asdict(config),
                          **({"dtype_bytes": 2} if dtype in ("bfloat16", "float16") else {}))
        return
    if not known.config:
        return
    cfg = load_config(known.config)
    model = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(GPTConfig)}
    # GPT-2's padded vocabulary when neither the config nor its data says; it sets the head's
    # FLOPs (and so --interconnect's compute time): pass --vocab_size to be exact
    model["vocab_size"] = resolve_vocab_size(cfg, 50304)
    # a training batch is no generation batch: --inference keeps its own default (1)
    batch = {} if "--inference" in argv else {"batch_size": cfg.batch_size,
                                              "grad_clip": cfg.grad_clip > 0}
    plan.set_defaults(**model, tp=cfg.tp, sync=[cfg.sync], vocab_parallel=cfg.vocab_parallel,
                      sync_dtype=[cfg.sync_dtype], sync_block=cfg.sync_block, ladder=cfg.ladder,
                      sequence_parallel=cfg.sequence_parallel, **batch, seq_len=cfg.block_size,
                      dtype_bytes=activation_bytes(cfg.dtype))


def run(args) -> int:
    from ..analysis.plan_report import format_plan, format_predictions, plan_report
    from ..comm.plan import SyncPlan, validate_tp
    from ..model.parallel_gpt import check_sequence_parallel

    cfg = model_config(args)
    validate_tp(args.tp, cfg, args.vocab_parallel)
    if args.batch_size is None:
        args.batch_size = 1 if args.inference else 12
    if args.batch_size < 1:
        raise ConfigError(f"batch_size={args.batch_size} is invalid: it must be >= 1")
    seq_len = args.seq_len or cfg.block_size
    if not 1 <= seq_len <= cfg.block_size:
        raise ConfigError(f"seq_len={seq_len} is invalid: it must be in [1, block_size="
                          f"{cfg.block_size}]")
    if args.dtype_bytes not in (2, 4, 8):
        raise ConfigError(f"dtype_bytes={args.dtype_bytes} is invalid: choose 2, 4 or 8")
    args.variants = _variants(args, cfg)
    for v in args.variants:
        check_sequence_parallel(v.sequence_parallel, args.tp, v.wire, cfg.block_size)
        if v.sequence_parallel and args.tp > 1 and not args.inference and seq_len % args.tp:
            raise ConfigError(f"sequence_parallel needs seq_len divisible by tp: seq_len="
                              f"{seq_len} is not a multiple of tp={args.tp}")
    if args.inference:
        for name, given in (("--achieved-tflops", args.achieved_tflops is not None),
                            ("--grad-clip", args.grad_clip)):
            if given:
                raise ConfigError(f"{name} is for training steps; --inference takes the "
                                  f"device's rate from --device")
        return _run_inference(args, cfg)
    if args.device:
        raise ConfigError("--device is for --inference predictions (training uses "
                          "--achieved-tflops)")
    reports = [plan_report(cfg, SyncPlan.parse(v.sync, cfg.n_layer), tp=args.tp,
                           batch_size=args.batch_size, seq_len=seq_len,
                           vocab_parallel=args.vocab_parallel, dtype_bytes=args.dtype_bytes,
                           grad_clip=args.grad_clip, wire=v.wire, ladder=v.ladder,
                           sequence_parallel=v.sequence_parallel)
               for v in args.variants]
    rate_note = None
    if args.interconnect:
        ic, rate, rate_note = _interconnect(args, cfg)
        from ..analysis.costmodel import predict_step
        for r in reports:
            r["prediction"] = predict_step(r, cfg, ic, rate)
    if args.json:
        print(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2))
        return 0
    print("\n\n".join(format_plan(r) for r in reports))
    if args.interconnect:
        print("\n" + format_predictions(reports, ic, rate))
        if rate_note:
            print("  " + rate_note)
    return 0


def _variants(args, cfg) -> list[Variant]:
    """The variants to report: each --sync with each --sync-dtype, or with its own '@DTYPE' /
    '@ladder' / '@sp' (the benchmarks' spelling: tp@int8, spd@ladder, tp@sp)."""
    return list(dict.fromkeys(  # a spec naming its dtype gives one variant, whatever the list
        parse_variant(spec, cfg.n_embd, dtype, args.sync_block, args.ladder,
                      args.sequence_parallel)
        for spec in args.sync or ["tp"] for dtype in args.sync_dtype))


def _interconnect(args, cfg):
    """(profile, compute rate in TFLOP/s, a note on where the rate came from or None)."""
    from ..analysis.costmodel import load_interconnect, measured_compute

    if args.achieved_tflops is not None and not args.achieved_tflops > 0:
        raise ConfigError(f"achieved_tflops={args.achieved_tflops} must be > 0")
    ic = load_interconnect(args.interconnect)
    if args.achieved_tflops is not None:
        return ic, args.achieved_tflops, None
    measured = measured_compute(args.interconnect)  # a `bench plans` result knows its rate
    if not measured:
        return ic, 300.0, None
    rate, shape = measured
    same = all(shape.get(k) == getattr(cfg, k) for k in shape)
    note = (f"compute rate {rate:.3g} TFLOP/s: measured by bench plans on "
            + ("this model's shape" if same else
               f"another shape ({shape.get('n_layer')} layers, n_embd {shape.get('n_embd')}), "
               f"so a rough guess here")
            + "; --achieved-tflops overrides it")
    return ic, rate, note


def _run_inference(args, cfg) -> int:
    from ..analysis.costmodel import load_interconnect
    from ..analysis.generation_cost import predict_generation
    from ..analysis.plan_report import (format_generation_predictions, format_inference,
                                        inference_report)
    from ..comm.plan import SyncPlan

    P = cfg.block_size // 2 if args.prompt_len is None else args.prompt_len
    N = cfg.block_size - P if args.new_tokens is None else args.new_tokens
    if P < 1 or N < 1:
        raise ConfigError(f"prompt_len={P} and new_tokens={N} must both be >= 1")
    if P + N > cfg.block_size:
        raise ConfigError(f"prompt_len + new_tokens = {P + N} exceeds block_size="
                          f"{cfg.block_size}: the KV cache holds block_size positions (longer "
                          f"generation restarts the window, see 'tpgpt sample')")
    plans = [(SyncPlan.parse(v.sync, cfg.n_layer), v) for v in args.variants]
    reports = [inference_report(cfg, plan, tp=args.tp, batch_size=args.batch_size,
                                prompt_len=P, new_tokens=N, vocab_parallel=args.vocab_parallel,
                                dtype_bytes=args.dtype_bytes, wire=v.wire, ladder=v.ladder,
                                sequence_parallel=v.sequence_parallel)
               for plan, v in plans]
    if args.interconnect:
        ic, device = load_interconnect(args.interconnect), _device(args)
        for r, (plan, v) in zip(reports, plans):
            r["prediction"] = predict_generation(
                cfg, plan, tp=args.tp, batch=args.batch_size,
                prompt_len=P, new_tokens=N, vocab_parallel=args.vocab_parallel,
                dtype_bytes=args.dtype_bytes, device=device, ic=ic, wire=v.wire,
                ladder=v.ladder, sequence_parallel=v.sequence_parallel)
    elif args.device:
        raise ConfigError("--device needs --interconnect (the prediction uses both)")
    if args.json:
        print(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2))
        return 0
    print("\n\n".join(format_inference(r) for r in reports))
    if args.interconnect:
        print("\n" + format_generation_predictions(reports))
        for what in (ic, device):
            if what.source:
                print(f"  {what.name}: {what.source}")
    return 0


def _device(args):
    """--device, else the GPU the interconnect implies, else the device its file measured."""
    from ..analysis.generation_cost import IMPLIED_DEVICE, load_device
    if args.device:
        return load_device(args.device)
    if args.interconnect in IMPLIED_DEVICE:
        return load_device(IMPLIED_DEVICE[args.interconnect])
    try:  # a `bench decode` result holds the device it measured
        with open(args.interconnect) as f:
            if isinstance(json.load(f).get("device"), dict):
                return load_device(args.interconnect)
    except (OSError, ValueError, AttributeError):
        pass  # load_interconnect has read it already: a profile without a device
    raise ConfigError(f"--interconnect {args.interconnect} implies no device: name one with "
                      f"--device (h100-sxm, a100-sxm, a100-pcie or a 'tpgpt bench decode' "
                      f"result)")
