"""Typed dataclass configs: field docstrings become ``--help``, every field becomes a CLI override.

A config is a plain ``@dataclass`` whose fields carry a docstring (a string literal on the
line after the field, as in tyro / simple-parsing). Validation lives in ``__post_init__``
so a bad value fails at construction, wherever the config came from (CLI, JSON, code).
Nested dataclass fields are flattened with a dotted prefix: ``--solver.method newton``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import textwrap
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

__all__ = [
    "field_docs",
    "add_dataclass_args",
    "dataclass_from_args",
    "to_dict",
    "from_dict",
    "save_config",
    "load_config",
    "resume_config",
    "flat_config",
    "parse_bool",
    "check",
    "deep_merge",
    "key_values",
    "RUNTIME_FIELDS",
    "ConfigError",
]


class ConfigError(ValueError):
    """A config value is invalid (names the field and the problem)."""


def field_docs(cls: type) -> dict[str, str]:
    """Return ``{field: docstring}`` read from the class source (including base classes)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        try:
            src = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        tree = ast.parse(src)
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:] + [None]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(getattr(nxt, "value", None), ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _resolved_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")


parse_bool = _parse_bool


def _scalar_parser(tp: Any, optional: bool):
    def parse(text: str):
        if optional and text.lower() in ("none", "null"):
            return None
        if tp is bool:
            return _parse_bool(text)
        if tp in (int, float, str):
            try:
                return tp(text)
            except ValueError as exc:
                raise argparse.ArgumentTypeError(f"expected {tp.__name__}, got {text!r}") from exc
        if tp is Path:
            return Path(text)
        raise argparse.ArgumentTypeError(f"unsupported type {tp}")

    return parse


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """Add one ``--name`` option per field of dataclass ``cls`` (recursing into nested ones)."""
    docs = field_docs(cls)
    hints = _resolved_hints(cls)
    group = parser.add_argument_group(prefix.rstrip(".") or cls.__name__)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            add_dataclass_args(parser, tp, prefix=f"{name}.")
            continue
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        )
        help_text = docs.get(f.name, "")
        help_text = f"{help_text} (default: {default!r})" if help_text else f"(default: {default!r})"
        base, optional = _unwrap_optional(tp)
        # argparse %-formats help strings: a literal "%" in a docstring must be escaped
        kwargs: dict[str, Any] = dict(dest=name, default=argparse.SUPPRESS, help=help_text.replace("%", "%%"))
        origin = get_origin(base)
        if origin is Literal:
            choices = list(get_args(base))
            kwargs.update(type=type(choices[0]), choices=choices, metavar="{" + ",".join(map(str, choices)) + "}")
        elif origin in (tuple, list):
            args = [a for a in get_args(base) if a is not Ellipsis]
            elem = args[0] if args else str
            kwargs.update(type=_scalar_parser(elem, optional), nargs="+" if Ellipsis in get_args(base) or origin is list else len(args))
        elif base is bool:
            kwargs.update(type=_parse_bool, nargs="?", const=True, metavar="BOOL")
        else:
            kwargs.update(type=_scalar_parser(base, optional))
        flag = "--" + name.replace("_", "-")
        aliases = [flag] if flag == "--" + name else [flag, "--" + name]
        group.add_argument(*aliases, **kwargs)


def _collect(ns: dict[str, Any], cls: type, prefix: str) -> dict[str, Any]:
    hints = _resolved_hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            sub = _collect(ns, tp, f"{name}.")
            if sub:
                out[f.name] = sub
        elif name in ns:
            val = ns[name]
            if isinstance(val, list) and get_origin(_unwrap_optional(tp)[0]) is tuple:
                val = tuple(val)
            out[f.name] = val
    return out


def dataclass_from_args(cls: type, ns: argparse.Namespace, base: Any | None = None, preset: dict[str, Any] | None = None):
    """Build ``cls`` from parsed args; fields not given keep ``base``'s (or the default) value.

    ``preset`` (a partial, nested dict of field values) is applied over ``base`` and under the args.
    """
    overrides = _collect(vars(ns), cls, "")
    start = to_dict(base) if base is not None else {}
    if preset:
        start = deep_merge(start, preset)
    return from_dict(cls, deep_merge(start, overrides))


def deep_merge(a: dict, b: dict) -> dict:
    """``a`` updated by ``b``, nested dicts merged key by key (neither is modified)."""
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _plain(v: Any) -> Any:
    if dataclasses.is_dataclass(v):
        return {f.name: _plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, Path):
        return str(v)
    return v


def flat_config(d: dict, prefix: str = "") -> dict:
    """A nested config dict as ``{"a.b": value}`` (lists JSON-encoded), for grouping and comparing runs."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, list) else v
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain JSON-able dict of a (nested) dataclass."""
    return _plain(cfg)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


RUNTIME_FIELDS = ("progress", "num_threads", "device")
"""Fields that change how a run executes, not what it computes: a resumed run may change them."""


def resume_config(cls: type, saved: Any, ns: argparse.Namespace, runtime: tuple[str, ...] = RUNTIME_FIELDS):
    """The config of a resumed run: ``saved`` plus the options given in ``ns``, which may only
    extend ``steps`` or set :data:`RUNTIME_FIELDS`.

    Raises :class:`ConfigError` (before anything is written) naming every option that would
    contradict the checkpoint, or a ``--steps`` below the run's budget.
    """
    given = _flatten(_plain(_collect(vars(ns), cls, "")))
    before = _flatten(to_dict(saved))
    changed = {k: (before.get(k), v) for k, v in given.items() if k not in runtime and k != "steps" and before.get(k) != v}
    if changed:
        detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(changed.items()))
        raise ConfigError(
            f"--resume continues a run with its saved config; cannot change {sorted(changed)} ({detail}); "
            "only --steps (to extend the budget) and " + ", ".join(f"--{r.replace('_', '-')}" for r in runtime) + " may be given"
        )
    if "steps" in given and given["steps"] < before["steps"]:
        raise ConfigError(f"--steps {given['steps']} is below the run's budget of {before['steps']}; a resumed run can only be extended")
    return dataclass_from_args(cls, ns, base=saved)


def from_dict(cls: type, data: dict[str, Any]):
    """Inverse of :func:`to_dict`; unknown keys are an error naming them."""
    hints = _resolved_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {}
    for key, val in data.items():
        tp, _ = _unwrap_optional(hints[key])
        if dataclasses.is_dataclass(tp) and isinstance(val, dict):
            val = from_dict(tp, val)
        elif get_origin(tp) is tuple and isinstance(val, list):
            val = tuple(val)
        elif tp is Path and isinstance(val, str):
            val = Path(val)
        kwargs[key] = val
    return cls(**kwargs)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as JSON, atomically."""
    from difftori.utils.io import atomic_write_text

    atomic_write_text(path, json.dumps(to_dict(cfg), indent=2, sort_keys=True))


def load_config(cls: type, path: str | Path):
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"config file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid JSON: {exc}") from None
    return from_dict(cls, data)


def check(cond: bool, msg: str) -> None:
    """Raise :class:`ConfigError` with ``msg`` unless ``cond`` (for ``__post_init__`` validation)."""
    if not cond:
        raise ConfigError(msg)


def key_values(entries: Iterable[str], form: str, parse: Callable[[str, str], Any]) -> dict[str, Any]:
    """``{KEY: parse(KEY, VALUE)}`` of ``KEY=VALUE`` option entries (a later entry wins). ``parse`` raises
    ``ValueError`` for a bad entry; the :class:`ConfigError` then names ``form`` (what an entry must be), the entry
    and the parser's reason."""
    out: dict[str, Any] = {}
    for entry in entries:
        key, sep, value = str(entry).partition("=")
        try:
            if not sep:
                raise ValueError("")
            out[key] = parse(key, value)
        except ValueError as exc:
            reason = f": {exc}" if str(exc) else ""
            raise ConfigError(f"{form}, got {entry!r}{reason}") from None
    return out
