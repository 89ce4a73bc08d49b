"""The `tpgpt` command: one entry point, alone or under torchrun (RANK in the environment).

Each command is a module here with `register(subparsers)` (its flags) and `run(args)`; the work
itself lives in the packages (train/, analysis/, ...). Bad input of any kind ends as one line on
stderr and exit code 2.
"""
from __future__ import annotations

import os
import sys

from ..errors import ConfigError
from . import (bench, convert, distill, eval, export, import_hf, plan, prepare, sample,
               sensitivity, sweep, train, verify)
from .common import CliError, Parser

COMMANDS = (plan, verify, prepare, train, sweep, eval, sample, export, import_hf, bench,
            sensitivity, convert, distill)


def build_parser() -> Parser:
    p = Parser(prog="tpgpt", description="Tensor-parallel GPT with per-layer sync plans.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    p.commands = {}
    for module in COMMANDS:
        cmd = module.register(sub)
        p.commands[cmd.prog.split()[-1]] = cmd
    return p


def _is_comm_failure(e: BaseException) -> bool:
    import torch.distributed as dist
    text = str(e).lower()
    return isinstance(e, getattr(dist, "DistError", ())) or any(
        w in text for w in ("gloo", "nccl", "connection", "timed out", "broken pipe"))


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        argv = sys.argv[1:] if argv is None else argv
        cmd = parser.commands.get(argv[0]) if argv else None
        prepare_fn = cmd.get_default("prepare") if cmd is not None else None
        if prepare_fn is not None:  # e.g. `plan --config X` sets the plan flags' defaults
            prepare_fn(cmd, argv[1:])
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
