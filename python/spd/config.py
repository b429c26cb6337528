"""Configs as dataclasses; the CLI and YAML/JSON config files are both read from them.

Each config field's ``metadata["help"]`` becomes the ``--help`` text of a flag named after the
field (``max_length`` -> ``--max-length``, optionally with a prefix). Precedence, lowest first:
the dataclass default, a method's own defaults, the config file (``--config run.yaml``), the
flags given on the command line. Config files hold either one section per dataclass
(``data:``, ``train:``, ``pruning:``, ``distill:``, ``graft:``) or the same keys flat.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import typing
from typing import Any, Dict, Iterable, Mapping, Optional, Type, TypeVar

T = TypeVar("T")


def _flag(name: str, prefix: str = "") -> str:
    return "--" + (prefix + name).replace("_", "-")


def _dest(name: str, prefix: str = "") -> str:
    return prefix + name


def _base_type(tp):
    """(python type, optional?) of a field annotation such as ``Optional[int]``."""
    if isinstance(tp, str):
        tp = eval(tp, vars(typing))  # annotations are strings under `from __future__ import annotations`
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def add_dataclass_arguments(
    parser: argparse.ArgumentParser,
    cls: Type,
    prefix: str = "",
    title: Optional[str] = None,
    exclude: Iterable[str] = (),
    defaults: Optional[Mapping[str, Any]] = None,
) -> None:
    """One flag per field of ``cls``. Flags default to ``argparse.SUPPRESS`` so that only the
    flags actually given reach :func:`build_config` (a config file can then fill the rest)."""
    group = parser.add_argument_group(title or cls.__name__)
    exclude = set(exclude)
    defaults = dict(defaults or {})
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        tp, optional = _base_type(f.type)
        default = defaults.get(f.name, f.default)
        help_ = f.metadata.get("help", "")
        shown = "none" if default is None else default
        help_ = f"{help_} (default: {shown})"
        kwargs: Dict[str, Any] = {"dest": _dest(f.name, prefix), "default": argparse.SUPPRESS, "help": help_}
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            # 'none' means None for optional numbers; string options keep it (e.g. --cache-dir none
            # and --teacher-cache none mean "no disk cache", not "the default location")
            kwargs["type"] = (
                (lambda s, t=tp: None if s.lower() == "none" else t(s)) if optional and tp is not str else tp
            )
            kwargs["metavar"] = tp.__name__.upper()
            if "choices" in f.metadata:
                kwargs["choices"] = list(f.metadata["choices"])
                kwargs.pop("metavar")
        group.add_argument(_flag(f.name, prefix), **kwargs)


def load_config_file(path: Optional[str]) -> Dict[str, Any]:
    """A YAML (.yaml/.yml) or JSON mapping; {} for None."""
    if not path:
        return {}
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path} not found")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"config file {path} is not UTF-8 text ({e})") from None
    if path.endswith((".yaml", ".yml")):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"config file {path} is not valid YAML: {' '.join(str(e).split())}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"config file {path} is not valid JSON: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    return data


def check_value(cls: Type, name: str, value: Any, where: str = "config file") -> Any:
    """``value`` for the field ``name`` of ``cls`` as read from a file: of the field's type (an
    int is a float; YAML's ``null`` fits optional fields), else ``ValueError`` naming the key,
    so a string never reaches arithmetic (``batch_size: eight``)."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    tp, optional = _base_type(f.type)
    if value is None and optional:
        return None
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
    }.get(tp, lambda v: True)
    if not ok(value):
        raise ValueError(f"{where}: {name} must be {tp.__name__}, got {value!r}")
    if "choices" in f.metadata and value not in f.metadata["choices"]:
        raise ValueError(f"{where}: {name} must be one of {list(f.metadata['choices'])}, got {value!r}")
    return float(value) if tp is float else value


def build_config(
    cls: Type[T],
    args: argparse.Namespace,
    file_cfg: Optional[Mapping[str, Any]] = None,
    section: Optional[str] = None,
    prefix: str = "",
    defaults: Optional[Mapping[str, Any]] = None,
    overrides: Optional[Mapping[str, Any]] = None,
) -> T:
    """An instance of ``cls``: field default < ``defaults`` < the config file (its
    ``section`` or its flat keys) < CLI flags < ``overrides``."""
    names = {f.name for f in dataclasses.fields(cls)}
    values: Dict[str, Any] = {}
    values.update({k: v for k, v in (defaults or {}).items() if k in names})
    file_cfg = dict(file_cfg or {})
    if section and isinstance(file_cfg.get(section), dict):
        sect = file_cfg[section]
        unknown = sorted(set(sect) - names)
        if unknown:
            raise ValueError(f"config section {section!r}: unknown keys {unknown}; known: {sorted(names)}")
        values.update({k: check_value(cls, k, v, f"config section {section!r}") for k, v in sect.items()})
    values.update(
        {k: check_value(cls, k, v) for k, v in file_cfg.items() if k in names and not isinstance(v, dict)}
    )
    for n in names:
        if hasattr(args, _dest(n, prefix)):
            values[n] = getattr(args, _dest(n, prefix))
    values.update({k: v for k, v in (overrides or {}).items() if k in names})
    return cls(**values)


def check_file_sections(file_cfg: Mapping[str, Any], known: Mapping[str, Type]) -> None:
    """Refuse a config file whose keys belong to no known section or field."""
    fields = {f.name for cls in known.values() for f in dataclasses.fields(cls)}
    sections = [k for k, v in file_cfg.items() if k in known and not isinstance(v, dict) and k not in fields]
    if sections:
        raise ValueError(f"config file: section {sections[0]!r} must be a mapping of options")
    bad = [k for k, v in file_cfg.items() if not (k in known and isinstance(v, dict)) and k not in fields]
    if bad:
        raise ValueError(f"config file: unknown keys {sorted(bad)}; sections are {sorted(known)}")


def to_dict(cfg) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)


__all__ = [
    "add_dataclass_arguments",
    "build_config",
    "check_file_sections",
    "check_value",
    "load_config_file",
    "to_dict",
]
