"""The README's Python example runs as written, at micro sizes (the shipped base model, a handful of records)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"

# What the micro run changes in the example's text: sizes only, so the code itself is the README's.
MICRO = {
    "n_captions=4, n_images=4, train_steps=20, eval_n=100": "n_captions=2, n_images=4, train_steps=2, eval_n=8, batch_size=2",
    "n=64": "n=12",
    'out = Path("runs/api")': "out = OUT",
}


def python_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) == 1, "the README has one Python example"
    return blocks[0]


@pytest.mark.slow
def test_the_readme_python_example_runs_at_micro_sizes(tmp_path, capsys):
    code = python_example()
    for old, new in MICRO.items():
        assert old in code, f"the README example no longer says {old!r}: update MICRO"
        code = code.replace(old, new)
    exec(compile(code, str(README), "exec"), {"OUT": tmp_path / "api"})
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed[-3:]] == ["understanding_score", "generation_score", "gap"]
    assert (tmp_path / "api" / "round-1" / "model" / "config.json").exists()


def test_every_hermesflow_command_in_the_readme_and_docs_is_one_the_cli_accepts():
    """A flag renamed or a preset removed fails here, not in a new user's first ten minutes."""
    import shlex

    from hermesflow import config
    from hermesflow.cli import VERBS, build_parser, unknown_arguments, verb_parser

    docs = [README, *sorted((README.parent / "docs").glob("*.md")), *sorted((README.parent / "experiments").glob("*.md"))]
    text = "".join(doc.read_text(encoding="utf-8") for doc in docs).replace("\\\n", " ")
    commands = [line.split("#")[0].strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)
                for line in block.splitlines() if line.strip().startswith("hermesflow ")]
    assert any("--preset quick" in c for c in commands) and len(commands) >= 20
    parser = build_parser()
    for command in commands:
        argv = shlex.split(command)[1:]
        if argv == ["--help"]:
            continue
        args, extra = parser.parse_known_args(argv)
        assert not extra, f"{command}: {unknown_arguments(verb_parser(parser, args.verb), extra)}"
        config.resolve(VERBS[args.verb][0], args)  # presets exist, values in range and among the choices
