"""The command's help a person reads: every subcommand described, every option explained with its default."""

from __future__ import annotations

import argparse

from clip_retrieval.cli import build_parser, main


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_subcommand_has_a_one_line_description_and_every_option_help_with_its_default():
    parser = build_parser()
    subcommands = _subcommands(parser)
    assert {"extract", "search", "classify", "dedup", "serve"} <= set(subcommands)
    for name, sub in subcommands.items():
        assert sub.description and "\n" not in sub.description, name
        formatter = sub._get_formatter()
        for action in sub._actions:
            if not action.option_strings or action.default is argparse.SUPPRESS:
                continue
            assert action.help and action.help.strip(), f"{name} {action.option_strings[0]} has no help"
            shown = formatter._get_help_string(action) % {"default": action.default}
            assert "default" in shown, f"{name} {action.option_strings[0]}: {shown}"


def test_bare_command_prints_usage_and_the_subcommands(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: clip-retrieval")
    for name, sub in _subcommands(build_parser()).items():
        assert name in err
