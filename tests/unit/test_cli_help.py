"""The command's help a person reads: every subcommand described, every option explained with its default."""

from __future__ import annotations

import argparse
import json

import pytest

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


def test_every_help_and_description_has_its_chinese_half():
    """A Chinese user reads `--help` in Chinese: each option, positional and subcommand starts in Chinese
    (from the catalogue in cli_zh, or written bilingual where the option is defined)."""
    from clip_retrieval.cli_zh import is_bilingual

    parser = build_parser()
    missing = []
    for name, sub in _subcommands(parser).items():
        if not is_bilingual(sub.description):
            missing.append(f"{name}: {sub.description}")
        missing += [f"{name} {a.option_strings or a.dest}: {a.help}" for a in sub._actions
                    if a.help and a.help != argparse.SUPPRESS and not is_bilingual(a.help)]
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing += [f"list: {c.dest}: {c.help}" for c in action._choices_actions if not is_bilingual(c.help)]
    assert not missing, "help with no Chinese (add it to clip_retrieval/cli_zh.HELP_ZH):\n" + "\n".join(missing)
    extract = _subcommands(parser)["extract"]
    update = next(a for a in extract._actions if "--update" in a.option_strings)
    assert update.help == "只重新编码新增或改动的图片和描述，去掉已删除的 / re-encode only new or changed images and " \
                          "captions; drop removed ones"


def test_bare_command_prints_usage_and_the_subcommands(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: clipsou")
    for name, sub in _subcommands(build_parser()).items():
        assert name in err
    # a newcomer sees what to type first and what the exit codes mean
    assert "clipsou extract --images" in err and "clipsou search 金毛" in err
    assert "exit codes: 0 done; 2 bad input" in err and "3 partial" in err
    assert 'extract with unreadable images: 0, they are skipped and listed (stderr, manifest.json "skipped")' in err


def test_search_takes_the_query_as_its_argument_as_people_type_it(tiny_features, tmp_path, cli):
    """`clipsou search 金毛` (rclip's habit) is the same search as `--query 金毛`; both at once is refused."""
    common = ["search", "--features", tiny_features, "--log-dir", tmp_path, "--json", "--device", "cpu"]
    typed = cli(*common, "金毛")
    flagged = cli(*common, "--query", "金毛")
    assert typed.returncode == flagged.returncode == 0, typed.stderr
    assert json.loads(typed.stdout)["results"] == json.loads(flagged.stdout)["results"]
    assert json.loads(typed.stdout)["query"] == "金毛"
    both = cli(*common, "金毛", "--query", "灰猫")
    assert both.returncode == 2 and both.stdout == ""
    assert both.stderr.strip() == "clipsou: 查询只能给一次 / give the query once: '金毛' or --query '灰猫', not both"


def test_extract_images_help_names_every_type_the_scan_reads():
    from clip_retrieval.collection.dataset import IMAGE_EXTENSIONS

    images = next(a for a in _subcommands(build_parser())["extract"]._actions if a.dest == "images")
    for suffix in IMAGE_EXTENSIONS:
        name = {"JPG": "JPEG", "TIF": "TIFF"}.get(suffix[1:].upper(), suffix[1:].upper())
        assert name in images.help.upper(), suffix


def test_rules_help_says_the_bundled_table_is_used_outside_the_checkout(capsys):
    """Outside a checkout there is no rules/expansions.yaml: the help must not promise that file."""
    for command in ("search", "extract"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        help_text = " ".join(capsys.readouterr().out.split())
        assert ("(default: rules/expansions.yaml in the working folder; where there is none, "
                "the table bundled with clip_retrieval)") in help_text
