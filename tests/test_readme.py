"""README.md cannot drift from the code: its Python blocks run as written (the distributed one
under torchrun), and every `tpgpt ...` and `make ...` command it shows, in a shell block or in
the prose, names a subcommand, options and make targets that exist."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

from dist_common import torchrun
from tpgpt.cli import build_parser
from tpgpt.train.config import config_keys

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def fenced(lang: str) -> list[str]:
    return [body for kind, body in FENCE.findall(README) if kind == lang]


def shell_lines() -> list[str]:
    """Every command of the bash blocks (continuations joined, comments dropped) and every
    inline code span of the prose that holds a tpgpt or make command."""
    lines = []
    for body in fenced("bash"):
        lines += [ln for ln in body.replace("\\\n", " ").splitlines() if ln.strip()]
    prose = FENCE.sub("", README)
    lines += [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", prose)]
    return lines


def tokens(line: str) -> list[str]:
    try:
        return shlex.split(line, comments=True)
    except ValueError:  # an unbalanced quote in a prose span: not a command
        return []


def tpgpt_commands() -> list[list[str]]:
    """[subcommand, arguments...] of each tpgpt command shown."""
    out = []
    for line in shell_lines():
        t = tokens(line)
        for i, tok in enumerate(t[:-1]):
            ops = ("&&", "||", ";", "|")
            if tok == "tpgpt" and not t[i + 1].startswith("-") and t[i + 1] not in ops \
                    and (i == 0 or t[i - 1] != "cd"):
                end = next((j for j in range(i + 1, len(t)) if t[j] in ops), len(t))
                out.append([x.strip("[]") for x in t[i + 1:end]])
    return out


def test_the_readme_shows_commands_to_check():
    subs = {c[0] for c in tpgpt_commands()}
    assert {"train", "sample", "eval", "sweep", "plan", "sensitivity", "bench"} <= subs, subs


def test_every_tpgpt_command_names_a_subcommand_and_its_options():
    parser = build_parser()
    keys = set(config_keys())
    bad = []
    for cmd in tpgpt_commands():
        sub, args = cmd[0], cmd[1:]
        if sub not in parser.commands:
            bad.append(f"tpgpt {sub}: no such subcommand")
            continue
        p = parser.commands[sub]
        overrides = p.get_default("takes_overrides")
        for a in args:
            if not a.startswith("--"):
                continue
            name = a.split("=", 1)[0]
            if name in p._option_string_actions:
                continue
            if overrides and "=" in a and name[2:] in keys:
                continue
            bad.append(f"tpgpt {' '.join(cmd)}: {name} is not an option of {sub}"
                       + (" nor a config field (--key=value)" if overrides else ""))
        positional = [a for a in p._actions if not a.option_strings and a.choices]
        words = [a for a in args if not a.startswith("-")]
        if positional and words and words[0] not in positional[0].choices:
            bad.append(f"tpgpt {' '.join(cmd)}: {words[0]!r} is not one of "
                       f"{sorted(positional[0].choices)}")
    assert not bad, "\n".join(bad)


def test_every_make_target_shown_exists():
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    shown = set()
    for line in shell_lines():
        t = tokens(line)
        if t[:1] == ["make"]:
            shown |= {x for x in t[1:] if not x.startswith("-") and "=" not in x}
    assert shown, "the README shows no make command"
    assert shown <= targets, f"make targets the Makefile lacks: {sorted(shown - targets)}"


def python_blocks() -> list[str]:
    return fenced("python")


def test_the_readme_python_api_block_runs_as_written():
    local = [b for b in python_blocks() if "init_distributed" not in b]
    assert local, "the README shows no Python block"
    for block in local:
        exec(compile(block, "README.md", "exec"), {"__name__": "readme"})


def test_the_readme_distributed_block_runs_under_torchrun(tmp_path):
    blocks = [b for b in python_blocks() if "init_distributed" in b]
    assert blocks, "the README shows no distributed Python block"
    for i, block in enumerate(blocks):
        script = tmp_path / f"readme_{i}.py"
        script.write_text(block)
        out = torchrun(2, str(script), [], timeout=120).stdout
        losses = re.findall(r"loss (\d+\.\d+)", out)
        assert len(losses) == 2 and losses[0] == losses[1], out
