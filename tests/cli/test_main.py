"""The `turnout` command's manners: --version, help on every option, a misspelt option or command named with the
closest valid one, and --help that answers without importing the heavy stack."""

import argparse
import importlib.metadata
import subprocess
import sys

import pytest

from turnout.cli.main import COMMANDS, build_parser, main


def _parsers() -> dict[str, argparse.ArgumentParser]:
    """The top-level parser and every subcommand's, by prog."""
    top = build_parser()
    found = {top.prog: top}
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update({p.prog: p for p in action.choices.values()})
    return found


def _exit(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(argv)
    out, err = capsys.readouterr()
    return e.value.code, out, err


def test_version_is_the_installed_distribution_s(capsys):
    code, out, err = _exit(["--version"], capsys)
    assert code == 0 and err == "" and out == f"turnout {importlib.metadata.version('turnout')}\n"


def test_every_option_of_every_command_has_help():
    parsers = _parsers()
    assert set(parsers) == {"turnout"} | {f"turnout {name}" for name in COMMANDS}
    missing = [f"{prog} {'/'.join(a.option_strings) or a.dest}" for prog, p in parsers.items() for a in p._actions
               if not (a.help and a.help.strip()) or a.help == argparse.SUPPRESS]
    assert not missing, missing


@pytest.mark.parametrize("argv, fragment", [
    (["train", "--conifg", "configs/debug.toml", "--out", "r"], "unrecognized argument --conifg (did you mean --config?)"),
    # misspelt and a required option missing: the misspelling is what the line names
    (["train", "--conifg=configs/debug.toml"], "unrecognized argument --conifg (did you mean --config?)"),
    (["serve", "--model", "m", "--prot", "80"], "unrecognized argument --prot (did you mean --port?)"),
    (["qualify", "--target", "cpu", "--out", "d", "--requier", "train"], "(did you mean --require?)"),
])
def test_an_unknown_option_names_the_closest_valid_one_and_the_usage(argv, fragment, capsys):
    code, out, err = _exit(argv, capsys)
    lines = err.splitlines()
    assert code == 2 and out == "" and len(lines) == 1, err
    assert lines[0].startswith(f"turnout {argv[0]}: error: ") and fragment in lines[0]
    assert f"usage: turnout {argv[0]} [-h]" in lines[0]


def test_an_unknown_command_names_the_closest_one(capsys):
    code, _, err = _exit(["trian", "--out", "r"], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("turnout: error: unknown command 'trian' (did you mean train?)") and "usage: turnout" in err
    code, _, err = _exit(["--nope"], capsys)
    assert code == 2 and err.startswith("turnout: error: unrecognized argument --nope;")


def test_what_argparse_accepts_still_parses():
    p = build_parser()
    args = p.parse_args(["train", "--conf", "c.toml", "--out=r", "--set=train.lr=3e-3"])
    assert (args.config, args.out, args.set) == ("c.toml", "r", ["train.lr=3e-3"])  # a unique prefix is fine
    args = p.parse_args(["generate", "--model", "m", "--prompt", "--a word", "--seed", "-1", "--stop", "-"])
    assert (args.prompt, args.seed, args.stop) == ("--a word", -1, ["-"])  # values argparse reads as values
    args = p.parse_args(["targets", "--json", "cpu", "sim:flaky"])
    assert args.specs == ["cpu", "sim:flaky"]
    assert p.parse_args(["report", "--", "--odd-folder-name"]).run == "--odd-folder-name"  # after '--': values


def test_help_answers_without_importing_the_heavy_stack():
    """--help builds every parser; none of the command modules may import torch & co. at module level (that took
    ~3 s per `turnout --help`)."""
    script = (
        "import sys\n"
        "from turnout.cli.main import COMMANDS, main\n"
        "for argv in [['--help'], ['--version']] + [[name, '--help'] for name in COMMANDS]:\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (argv, e.code)\n"
        "heavy = ('torch', 'numpy', 'rich', 'matplotlib', 'jinja2', 'tokenizers', 'safetensors', 'fastapi', 'uvicorn',"
        " 'httpx')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.splitlines()[-1] == "[]"


def test_an_error_quoting_a_line_break_still_prints_as_one_line(tmp_path, capsys):
    path = tmp_path / "a\nb\u2028c.toml"  # the path is quoted as given: the message itself spans lines
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1
    assert err == f"turnout train: error: {tmp_path}/a b c.toml: config file not found\n"
