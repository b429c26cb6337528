"""The ``spd`` command line.

Every module in :mod:`spd.commands` that defines ``NAME``, ``HELP``, ``add_arguments(parser)``
and ``run(args) -> int`` becomes a subcommand; adding a command touches no other file.

``NAME`` and ``HELP`` are read from the modules' source (string literals), so ``spd --help``
imports no command module (and no torch), and ``spd COMMAND`` imports that command's module only.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import pkgutil
import sys
from typing import List, NamedTuple, Optional

from . import commands as _commands

ALL = "*"


class CommandSpec(NamedTuple):
    name: str
    help: str
    module: str


def _literal_assignments(tree: ast.Module) -> dict:
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for t in node.targets:
                if isinstance(t, ast.Name) and isinstance(node.value.value, str):
                    out[t.id] = node.value.value
    return out


def command_specs() -> List[CommandSpec]:
    """The subcommands, read from the sources of :mod:`spd.commands` without importing them: each
    module whose top level assigns string literals to ``NAME`` and ``HELP`` and defines
    ``add_arguments`` and ``run``."""
    specs = []
    for info in sorted(pkgutil.iter_modules(_commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        spec = importlib.util.find_spec(f"{_commands.__name__}.{info.name}")
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            continue
        with open(spec.origin, encoding="utf-8") as f:
            tree = ast.parse(f.read(), spec.origin)
        consts = _literal_assignments(tree)
        funcs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        if "NAME" in consts and "HELP" in consts and {"add_arguments", "run"} <= funcs:
            specs.append(CommandSpec(consts["NAME"], consts["HELP"], spec.name))
    return specs


def build_parser(command: Optional[str] = ALL) -> argparse.ArgumentParser:
    """The ``spd`` parser. Subcommands get their arguments (and their modules are imported) only
    for ``command`` (``ALL``: every one; ``None``: none, enough for ``spd --help``)."""
    parser = argparse.ArgumentParser(
        prog="spd",
        description="Sparse Progressive Distillation and movement pruning on spd_kernels: "
        "fine-tune, prune, evaluate, export and profile sparse transformers.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for spec in command_specs():
        if command not in (ALL, spec.name):
            sub.add_parser(spec.name, help=spec.help, description=spec.help)
            continue
        mod = importlib.import_module(spec.module)
        p = sub.add_parser(
            spec.name,
            help=spec.help,
            description=getattr(mod, "DESCRIPTION", spec.help),
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def _command_of(argv: List[str]) -> Optional[str]:
    """The subcommand ``argv`` names (its first argument that is not an option), if any."""
    for a in argv:
        if not a.startswith("-"):
            return a
    return None


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_of(argv))
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
