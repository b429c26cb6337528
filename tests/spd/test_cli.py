import subprocess
import sys

from spd.cli import build_parser, main


def test_help_lists_subcommands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "usage: spd" in out


def test_every_subcommand_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        text = p.format_help()
        assert p.description, f"spd {name} has no description"
        assert "--help" in text


def test_module_entry_point():
    r = subprocess.run([sys.executable, "-m", "spd", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "usage: spd" in r.stdout
