"""`reptile-tf --help` a newcomer can use: every option of every command has a help text and its
default, the hyperparameter flags give the papers' values, `--version` works."""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib import metadata

import pytest

from reptile_tf import cli, train
from reptile_tf.settings import flag_fields, paper_settings


def all_parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    """(name, parser) of the top level, every subcommand and their sub-subcommands (`tables diff`)."""
    found = [("reptile-tf", cli.build_parser())]
    index = 0
    while index < len(found):
        name, parser = found[index]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                found += [(f"{name} {sub}", p) for sub, p in action.choices.items()]
        index += 1
    return found


def documented_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions
            if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) and a.help != argparse.SUPPRESS]


def test_every_command_is_walked():
    names = {name for name, _ in all_parsers()}
    assert {f"reptile-tf {c}" for c in cli.SUBCOMMANDS} | {"reptile-tf", "reptile-tf tables diff"} <= names


@pytest.mark.parametrize("name, parser", all_parsers(), ids=lambda x: x if isinstance(x, str) else "")
def test_every_option_has_a_help_text(name, parser):
    missing = [a.option_strings[0] if a.option_strings else a.dest for a in documented_actions(parser)
               if not (a.help or "").strip()]
    assert not missing, f"{name}: options without a help text: {missing}"


@pytest.mark.parametrize("name, parser", all_parsers(), ids=lambda x: x if isinstance(x, str) else "")
def test_every_default_is_shown(name, parser):
    """An option with a default other than None/False/empty shows it (the formatter or the help itself)."""
    formatter = cli.HelpFormatter(prog=name)
    for action in documented_actions(parser):
        if not action.option_strings or action.required or action.default in (None, False, [], ()):
            continue
        if isinstance(action, argparse._VersionAction):
            continue
        shown = formatter._get_help_string(action) % {"default": action.default}
        assert "default" in shown.lower(), (name, action.option_strings, shown)


def test_help_renders_for_every_command():
    for name, parser in all_parsers():
        text = parser.format_help()  # a stray % in a help text raises here
        assert "usage:" in text, name


def test_hyperparameter_flags_give_the_paper_values():
    parser = dict(all_parsers())["reptile-tf train"]
    helps = {a.dest: a.help for a in parser._actions}
    for name in flag_fields():
        assert helps.get(name), name
    # the values come from the settings table, not from copies in the help text
    assert "0.0005" in helps["inner_lr"] and "0.4" in helps["inner_lr"]
    assert f"{paper_settings('reptile', 'omniglot', 20, 1).iterations:,}" in helps["iterations"]
    assert "60,000" in helps["iterations"]
    assert "= --shots" in helps["train_shots"]  # MAML trains on the test shots
    assert "parallel_mean" in helps["inner_adam_mode"]


def test_choices_are_listed_without_rejecting_what_the_workflow_accepts():
    parser = dict(all_parsers())["reptile-tf train"]
    text = parser.format_help()
    assert "--inner-optimizer {adam,sgd}" in text and "--loss-reduction {mean,sum,sum_per_shot}" in text
    assert "--algorithm {reptile,fomaml,maml}" in text
    assert "--network {reptile,maml}" in text


def test_version():
    assert cli.package_version() == metadata.version("reptile-tf")
    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0
    result = subprocess.run([sys.executable, "-m", "reptile_tf.cli", "--version"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == f"reptile-tf {metadata.version('reptile-tf')}"


def test_top_level_help_is_for_newcomers(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "make reproduce" in out and "reptile-tf train --algorithm reptile" in out
    for command in cli.SUBCOMMANDS:
        assert command in out
