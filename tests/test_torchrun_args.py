"""robaudit's options survive torchrun's own parser (issue 21).

`torchrun ... -m robaudit scan ... --n 200` stopped in torchrun: its argparse parser reads every
option string of the command line, robaudit's included, and allows abbreviations, so `--n` was
"ambiguous" (--nnodes, --nproc-per-node, ...). The class test runs every option of `scan` and
`harden` (taken from the Typer/Click commands, so a new option is tested too) through
``torch.distributed.run.get_args_parser()`` after ``-m robaudit <command>`` and asserts it reaches
robaudit unchanged; then it parses the torchrun command lines of the README and docs/ as written, with
torchrun's parser and with robaudit's own.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest
import typer

from robaudit.cli.main import app

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]  # scaling.md and harden.md hold the examples
COMMANDS = typer.main.get_command(app).commands
TORCHRUN = ["--standalone", "--nproc_per_node=2", "-m", "robaudit"]


def _torchrun_parse(argv: list[str]):
    """torchrun's own parse of ``argv`` (its options, then the script and the script's arguments);
    SystemExit with torchrun's message on a parse error."""
    from torch.distributed.run import get_args_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return get_args_parser().parse_args(argv)
    except SystemExit:
        raise AssertionError(f"torchrun's parser stopped: {err.getvalue().strip().splitlines()[-1]}") from None


def _options(command: str) -> list[tuple[str, bool]]:
    """(option string, is a flag) for every option of ``command``, long and short."""
    out = []
    for param in COMMANDS[command].params:
        if param.param_type_name == "option":
            out += [(opt, bool(param.is_flag)) for opt in [*param.opts, *param.secondary_opts]]
    return out


CASES = [(cmd, opt, flag) for cmd in ("scan", "harden") for opt, flag in _options(cmd)]
# Spellings torchrun can't pass on, kept for use outside torchrun; each option that has one also has
# an unambiguous long name (checked below). A new option that torchrun stops on fails the test.
AMBIGUOUS_IN_TORCHRUN = {("scan", "--n")}


@pytest.mark.parametrize("command, option, flag", CASES, ids=[f"{c} {o}" for c, o, _ in CASES])
@pytest.mark.parametrize("form", ["separate", "joined"])
def test_every_option_reaches_robaudit_unchanged_through_torchrun(command, option, flag, form):
    if flag:
        given = [option]
    elif form == "joined" and option.startswith("--"):
        given = [f"{option}=7"]
    elif form == "joined":
        given = [f"{option}7"]
    else:
        given = [option, "7"]
    script_args = [command, "model.safetensors", "-d", "demo", *given, "--json", "r.json"]
    if (command, option) in AMBIGUOUS_IN_TORCHRUN:
        with pytest.raises(AssertionError, match="ambiguous option"):
            _torchrun_parse([*TORCHRUN, *script_args])
        param = next(p for p in COMMANDS[command].params if option in p.opts)
        assert any(o.startswith("--") and (command, o) not in AMBIGUOUS_IN_TORCHRUN for o in param.opts), (
            f"{option} needs an unambiguous long name"
        )
        return
    parsed = _torchrun_parse([*TORCHRUN, *script_args])
    assert parsed.training_script == "robaudit" and parsed.module
    assert parsed.training_script_args == script_args
    assert parsed.nproc_per_node == "2" and parsed.standalone


def test_the_ambiguous_spelling_is_what_fails_and_num_samples_is_the_same_option():
    """The control: `--n` does stop torchrun (so the test above can fail), and `--num-samples`,
    `--n` and `-n` are one option of scan (`--n` keeps working outside torchrun)."""
    with pytest.raises(AssertionError, match="ambiguous option: --n could match"):
        _torchrun_parse([*TORCHRUN, "scan", "m.safetensors", "--n", "200"])
    n_option = next(p for p in COMMANDS["scan"].params if p.name == "n")
    assert {"--num-samples", "--n", "-n"} <= set(n_option.opts)
    for spelling in ("--num-samples", "--n", "-n"):
        ctx = COMMANDS["scan"].make_context("scan", ["m.safetensors", "-d", "demo", spelling, "200"])
        assert ctx.params["n"] == 200


def _readme_torchrun_commands() -> list[str]:
    """Every `torchrun ...` command line in the code blocks of the README and docs/, continuation lines joined."""
    text = "\n".join(f.read_text(encoding="utf-8") for f in DOC_FILES)
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    commands = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("torchrun "):
                commands.append(line)
    return commands


def test_the_readme_has_torchrun_examples_of_scan_and_harden():
    commands = _readme_torchrun_commands()
    assert any(" scan " in c for c in commands) and any(" harden " in c for c in commands), commands
    assert all("--num-samples" in c for c in commands if " scan " in c), (
        "every torchrun scan example names the sample count unambiguously"
    )


@pytest.mark.parametrize("line", _readme_torchrun_commands())
def test_the_readmes_torchrun_commands_parse_as_written(line):
    """torchrun's parser takes the line (shell variables stand for numbers) and hands robaudit
    exactly its arguments, which robaudit's own parser then accepts."""
    argv = [re.sub(r"\$\{?\w+\}?", "0", word) for word in shlex.split(line)][1:]
    parsed = _torchrun_parse(argv)
    assert parsed.module and parsed.training_script == "robaudit"
    args = parsed.training_script_args
    assert args == argv[argv.index("robaudit") + 1 :]
    command = COMMANDS[args[0]]
    ctx = command.make_context(args[0], list(args[1:]))  # robaudit's parser: every option known and well-formed
    assert ctx.params
