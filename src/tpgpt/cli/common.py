"""What every command's parser shares: one-line errors, typed flags, the model's shape flags."""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os

from ..model import GPTConfig


class CliError(Exception):
    """A bad input from the user: printed as one line, exit code 2."""


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help text states it itself or the
    option has none to state (no default, a plain on/off switch, the help flag)."""

    def _format_action(self, action: argparse.Action) -> str:
        default = action.default
        says = action.option_strings and default not in (None, argparse.SUPPRESS) and not (
            action.nargs == 0 and default is False)
        if says and "default" not in (action.help or "").lower():
            action = copy.copy(action)
            shown = " ".join(map(str, default)) if isinstance(default, list) else "%(default)s"
            action.help = f"{action.help} (default: {shown})" if action.help else \
                f"(default: {shown})"
        return super()._format_action(action)


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # one line instead of usage + message
        raise CliError(f"{self.prog}: {message}")

    def parse_known_args(self, args=None, namespace=None):
        """On/off switches (`--overwrite`) also take the config keys' form, `--overwrite=true`
        or `=false`, which argparse itself refuses."""
        if args is None:
            import sys
            args = sys.argv[1:]
        switches = {o for a in self._actions if isinstance(a, argparse._StoreTrueAction)
                    for o in a.option_strings}
        out = []
        for arg in args:
            name, eq, value = arg.partition("=")
            if eq and name in switches:
                try:
                    if boolean(value):
                        out.append(name)
                except argparse.ArgumentTypeError:
                    self.error(f"{name} is a switch: {name}, or {name}=true / {name}=false, "
                               f"not {arg!r}")
                continue
            out.append(arg)
        return super().parse_known_args(out, namespace)


def boolean(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean (true or false)")


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def non_negative_int(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative integer")
    return int(text)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of integers") from None


def flag(p: argparse.ArgumentParser, name: str, **kw) -> None:
    """--some-name and --some_name, both spellings of one option (one for a one-word name)."""
    names = dict.fromkeys((f"--{name.replace('_', '-')}", f"--{name}"))
    p.add_argument(*names, dest=name, **kw)


def add_calibration_args(p: argparse.ArgumentParser) -> None:
    """The held-out tokens a trained model is measured on (sensitivity, convert)."""
    flag(p, "tokens", type=int, default=8192,
         help="calibration tokens, from the start of the split (default 8192)")
    p.add_argument("--split", choices=["val", "train"], default="val")
    flag(p, "data_dir", default=None,
         help="the prepared dataset (default: the one the checkpoint was trained on)")


def add_model_args(p: argparse.ArgumentParser, **defaults) -> None:
    """--field=value for every GPTConfig field, checked by GPTConfig itself."""
    for f in dataclasses.fields(GPTConfig):
        kind = {"int": int, "float": float, "bool": boolean, "str": str}[str(f.type)]
        extra = {"nargs": "?", "const": True} if kind is boolean else {}
        names = dict.fromkeys((f"--{f.name}", f"--{f.name.replace('_', '-')}"))
        p.add_argument(*names, dest=f.name, type=kind,
                       default=defaults.get(f.name, f.default), metavar=f.name.upper(),
                       help=f"model: {f.name} (default {defaults.get(f.name, f.default)})", **extra)


def model_config(args) -> GPTConfig:
    return GPTConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(GPTConfig)})


def is_rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"


def shutdown() -> None:
    """Leave the process group, if this process joined one (under torchrun)."""
    if "RANK" in os.environ:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()


def add_plan_args(p: argparse.ArgumentParser) -> None:
    """--tp and --sync for commands that load a checkpoint: another plan on purpose."""
    p.add_argument("--tp", type=positive_int, default=None,
                   help="run at this tp instead of the trained one (a zero-shot conversion "
                        "unless the plan has every sync on)")
    p.add_argument("--sync", default=None, metavar="PLAN",
                   help="run under this sync plan instead of the trained one (a zero-shot "
                        "conversion: another function than the one trained)")
    p.add_argument("--sync-dtype", "--sync_dtype", dest="sync_dtype", default=None,
                   metavar="DTYPE", help="send the syncs in this dtype (float32, bfloat16, "
                                         "int8) instead of the trained one's")
    p.add_argument("--sync-block", "--sync_block", dest="sync_block", type=positive_int,
                   default=None, metavar="N", help="int8 syncs: channels per scale (default: "
                                                   "the trained one's, else 32)")
