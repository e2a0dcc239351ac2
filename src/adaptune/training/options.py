"""Options declared once, on dataclass fields: ``field(metadata=option(...))`` gives each field its command-line
help, type and choices. From that one declaration come the argparse options (``add_options``), the dataclass
from parsed arguments (``values_from_args``) and the argument list of a subprocess (``to_argv``).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = [
    "add_method_options",
    "add_options",
    "checked",
    "method_argv",
    "method_options",
    "on_off",
    "option",
    "positive_float",
    "positive_int",
    "probability",
    "to_argv",
]

_KEY = "adaptune_option"


def checked(convert: Callable[[str], Any], ok: Callable[[Any], bool], expected: str) -> Callable[[str], Any]:
    """An argparse ``type=`` that converts, checks ``ok(value)`` and otherwise says what was expected."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not ok(value):  # NaN fails every comparison, so it is refused too
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


positive_int = checked(int, lambda v: v >= 1, "an integer >= 1")
positive_float = checked(float, lambda v: v > 0, "a number > 0")
probability = checked(float, lambda v: 0 <= v < 1, "a probability in [0, 1)")
on_off = checked({"on": True, "off": False}.get, lambda v: True, "on or off")  # type: ignore[arg-type]


def option(
    help: str | None = None,
    *,
    commands: tuple[str, ...] = ("train", "fuse"),
    flag: str | None = None,
    type: Callable[[str], Any] | None = None,
    choices: Iterable[Any] | None = None,
    group: str | None = None,
) -> dict[str, Any]:
    """Field metadata declaring a command-line option.

    Args:
        help: the ``--help`` text.
        commands: the commands that take this option (others may still ask for it by name).
        flag: the option's spelling when not ``--field-name``.
        type: argparse converter (default: from the field's default value, ``str`` otherwise).
        choices: the allowed values.
        group: the ``--help`` section (argument group title).
    """
    choices = tuple(choices) if choices is not None else None
    spec = {"help": help, "commands": commands, "flag": flag, "type": type, "choices": choices, "group": group}
    return {_KEY: spec}


def _declared(cls: type) -> dict[str, tuple[dataclasses.Field[Any], dict[str, Any]]]:
    return {f.name: (f, f.metadata[_KEY]) for f in dataclasses.fields(cls) if _KEY in f.metadata}


def _flag(name: str, spec: dict[str, Any]) -> str:
    return spec["flag"] or "--" + name.replace("_", "-")


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def add_options(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    command: str | None = None,
    names: Iterable[str] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """Add the options ``cls`` declares: those of ``command``, or exactly ``names``; ``defaults`` overrides the
    field defaults (and makes a field without default optional)."""
    declared = _declared(cls)
    wanted = list(names) if names is not None else [n for n, (_, s) in declared.items() if command in s["commands"]]
    groups: dict[str, Any] = {}
    for name in wanted:
        f, spec = declared[name]
        target: Any = parser
        if spec["group"]:
            if spec["group"] not in groups:
                groups[spec["group"]] = parser.add_argument_group(spec["group"])
            target = groups[spec["group"]]
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = (defaults or {}).get(name, _default(f))
        kwargs: dict[str, Any] = {"dest": name, "help": spec["help"]}
        if isinstance(default, bool) and spec["type"] is None:
            kwargs["action"] = "store_true"  # a switch that is off by default
        elif isinstance(default, tuple):
            kwargs |= {"nargs": "+", "default": list(default), "type": spec["type"] or str}
        else:
            kwargs |= {"type": spec["type"] or type(default) if default is not None else spec["type"]}
            kwargs |= {"default": default, "choices": spec["choices"]}
            if spec["type"] is on_off:
                kwargs["metavar"] = "{on,off}"
            if required and name not in (defaults or {}):
                kwargs["required"] = True
        target.add_argument(_flag(name, spec), **kwargs)


def values_from_args(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The declared fields of ``cls`` that ``args`` holds, as field values (lists of ``nargs`` become tuples)."""
    out: dict[str, Any] = {}
    for name in _declared(cls):
        if hasattr(args, name):
            value = getattr(args, name)
            out[name] = tuple(value) if isinstance(value, list) else value
    return out


def to_argv(cls: type, values: Mapping[str, Any]) -> list[str]:
    """Command-line arguments that set the declared fields in ``values`` (``None`` values are left out)."""
    declared = _declared(cls)
    argv: list[str] = []
    for name, value in values.items():
        spec = declared[name][1]
        flag = _flag(name, spec)
        if value is None:
            continue
        if spec["type"] is on_off:
            argv += [flag, "on" if value else "off"]
        elif isinstance(value, bool):
            argv += [flag] if value else []
        elif isinstance(value, (tuple, list)):
            argv += [flag, *map(str, value)] if value else []
        else:
            argv += [flag, str(value)]
    return argv


def method_options(method: Any) -> dict[str, dataclasses.Field[Any]]:
    """``--<method>-<field>`` flag -> field, for the fields of a registered method's config (``core.contract.Method``)
    that carry ``metadata["help"]``: a method declares its command-line options on its own config."""
    from ..core.config import MethodConfig

    base = {f.name for f in dataclasses.fields(MethodConfig)}
    return {
        f"--{method.name}-{f.name.replace('_', '-')}": f
        for f in dataclasses.fields(method.config_class)
        if f.name not in base and "help" in f.metadata
    }


def add_method_options(parser: argparse.ArgumentParser, methods: Iterable[Any]) -> None:
    """Every method's own options, one ``--help`` section per method; unset (``None``) unless given."""
    for method in methods:
        options = method_options(method)
        if not options:
            continue
        group = parser.add_argument_group(f"{method.name} adapter (--method {method.name})")
        for flag, f in options.items():
            kind = type(f.default) if f.default is not None else str
            kind = _parse_bool if kind is bool else kind  # argparse's bool("false") would be True
            text = f"{f.metadata['help']} (default: {f.default})"
            group.add_argument(flag, type=kind, choices=f.metadata.get("choices"), help=text)


def _parse_bool(text: str) -> bool:
    """``true`` / ``false`` (also ``1`` / ``0``, ``yes`` / ``no``) for a method's boolean option."""
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value


def method_argv(args: argparse.Namespace, method: Any) -> list[str]:
    """The ``--<method>-<field>`` options of ``method`` that ``args`` sets, as command-line arguments."""
    argv: list[str] = []
    for flag in method_options(method):
        value = getattr(args, flag[2:].replace("-", "_"), None)
        if value is not None:
            argv += [flag, str(value)]
    return argv
