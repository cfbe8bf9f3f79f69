"""Typed TOML configs: read a file, apply dotted ``--set`` overrides, build nested dataclasses with every key and
type checked. A :class:`ConfigError` carries the dotted key it is about, so a caller can say where it came from
(file and line, or ``--set``) without parsing messages."""

from __future__ import annotations

import math
import re
import tomllib
import types
from collections.abc import Sequence
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints


class ConfigError(ValueError):
    """A configuration value that cannot be used. ``key`` is the dotted key (``recipe.lr``) when one is known."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


def read_toml(path: str | Path, what: str = "config file") -> tuple[dict[str, Any], str]:
    """The parsed table and the text of a TOML file; errors name the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a {what}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    return parse_toml(text, str(path)), text


def parse_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{source}: not valid TOML: {err}") from None
    except RecursionError:
        raise ConfigError(f"{source}: not valid TOML: tables or arrays nested too deeply") from None


def to_toml(tree: dict[str, Any]) -> str:
    """``tree`` as TOML text, unset (``None``) values omitted at every depth."""
    import tomli_w

    def prune(node: dict[str, Any]) -> dict[str, Any]:
        return {k: prune(v) if isinstance(v, dict) else v for k, v in node.items() if v is not None}

    return tomli_w.dumps(prune(tree))


def parse_value(text: str) -> Any:
    """A TOML value (``3``, ``1e-4``, ``true``, ``"x"``, ``[1, 2]``); ``none``/``null`` is None; else the text."""
    words = {"none": None, "null": None, "true": True, "false": False}
    if text.lower() in words:
        return words[text.lower()]
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text
    except RecursionError:
        raise ConfigError(f"--set value {text[:40]!r}...: nested too deeply") from None


def split_override(item: str) -> tuple[str, Any]:
    """``"a.b=VALUE"`` -> ``("a.b", parsed VALUE)``."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {item!r} is not KEY=VALUE (e.g. train.steps=20)")
    return key, parse_value(text.strip())


def set_dotted(tree: dict[str, Any], key: str, value: Any, *, named_lists: Sequence[str] = ()) -> str:
    """Set ``tree[a][b]... = value`` for ``key = "a.b..."``; returns the key as errors name it.

    In a list of tables named in ``named_lists`` (``designs``), the part after the list's name picks the entry by
    its ``name``: ``designs.M1.label`` sets the ``label`` of the design named ``M1`` (named ``designs[M1].label``).
    """
    parts = key.split(".")
    node: Any = tree
    shown = key
    if parts[0] in named_lists and len(parts) >= 3:
        entries = tree.get(parts[0]) or []
        matches = [e for e in entries if isinstance(e, dict) and e.get("name") == parts[1]]
        if not matches:
            names = [e.get("name") for e in entries if isinstance(e, dict)]
            raise ConfigError(f"--set {key!r}: no {parts[0][:-1]} named {parts[1]!r}; {parts[0]}: {names}", key)
        node, shown = matches[0], f"{parts[0]}[{parts[1]}].{'.'.join(parts[2:])}"
        parts = parts[2:]
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key!r}: {part!r} is a value, not a table", key)
    if isinstance(value, dict) and isinstance(node.get(parts[-1]), dict):
        merge_into(node[parts[-1]], value)  # an inline table changes the keys it names, not the whole table
    else:
        node[parts[-1]] = value
    return shown


def merge_into(table: dict[str, Any], update: dict[str, Any]) -> None:
    """Set every key of ``update`` in ``table``, merging nested tables."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(table.get(key), dict):
            merge_into(table[key], value)
        else:
            table[key] = value


def apply_overrides(
    tree: dict[str, Any], overrides: Sequence[str], *, named_lists: Sequence[str] = ()
) -> dict[str, str]:
    """Apply every ``KEY=VALUE``; returns the keys set, as errors name them, each with its ``KEY=VALUE``."""
    return {set_dotted(tree, *split_override(item), named_lists=named_lists): item for item in overrides}


def override_source(key: str | None, applied: dict[str, str]) -> str | None:
    """``--set 'KEY=VALUE'`` for the override that set ``key`` (or the table holding it), else ``None``."""
    if key is None:
        return None
    for shown, item in applied.items():
        if key == shown or key.startswith(f"{shown}."):
            return f"--set {item!r}"
    return None


def build_dataclass(cls: type, raw: Any, prefix: str = "") -> Any:
    """Instantiate nested config dataclasses from plain data, type-checking every value.

    Errors are :class:`ConfigError` whose ``key`` is the dotted key (``prefix`` + field name); a ``ConfigError``
    raised by a dataclass's own checks keeps its key, prefixed."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a table, got {raw!r}", prefix.rstrip(".") or None)
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown key '{prefix}{unknown[0]}'; known keys: {sorted(known)}", prefix + unknown[0])
    values = {}
    for name, value in raw.items():
        hint = hints[name]
        if is_dataclass(hint):
            values[name] = build_dataclass(hint, value, f"{prefix}{name}.")
        else:
            values[name] = check_type(value, hint, f"{prefix}{name}")
    return cls(**values)


def build_from(cls: type, raw: Any, source: str) -> Any:
    """:func:`build_dataclass` of values read from ``source`` (a file): every error names it, one line."""
    try:
        return build_dataclass(cls, raw)
    except (ConfigError, ValueError, TypeError) as err:
        raise ConfigError(f"{source}: {err}", getattr(err, "key", None)) from None


def check_type(value: Any, hint: Any, key: str) -> Any:
    """``value`` if it matches ``hint`` (ints are accepted as floats), else a :class:`ConfigError` about ``key``."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return check_type(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key} = {value!r} is not {type_name(hint)}", key)
    if hint is Any:
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} = {value!r} is not {type_name(hint)}", key)
        return [check_type(v, get_args(hint)[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} = {value!r} is not a table", key)
        return dict(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool):
        raise ConfigError(f"{key} = {value!r} is not int", key)
    if not isinstance(value, hint):
        raise ConfigError(f"{key} = {value!r} is not {type_name(hint)}", key)
    return value


def type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


@dataclass(frozen=True)
class Range:
    """The values a numeric key accepts: finite numbers from ``low`` to ``high`` (each end excluded when open)."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def accepts(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return math.isfinite(value) and above and below

    def rule(self) -> str:
        """What the value must be, for an error message ("positive", "in [0, 1)")."""
        if self.high == math.inf:
            if self.low == 0:
                return "positive" if self.low_open else "non-negative"
            return f"{'above' if self.low_open else 'at least'} {self.low}"
        return f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"

    def check(self, key: str, value: float | None) -> None:
        """Raise :class:`ConfigError` about ``key`` unless ``value`` is ``None`` or accepted."""
        if value is not None and not self.accepts(value):
            finite = "" if math.isfinite(value) else "finite and "
            raise ConfigError(f"{key} must be {finite}{self.rule()}, got {value}", key)


#: A count or size of at least 1, or a positive amount.
POSITIVE = Range(0, low_open=True)
#: Zero or more.
NOT_NEGATIVE = Range(0)


class KeyLocator:
    """Finds the line of a key in TOML text, for error messages (best effort; ``None`` when not found)."""

    HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.\-]+)\s*\]\]?")

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    def _key_line(self, key: str, start: int, stop: int) -> int | None:
        pattern = re.compile(rf"(^|[\s{{,]){re.escape(key)}\s*=")
        for number in range(start, stop):
            if pattern.search(self.lines[number].split("#", 1)[0]):
                return number + 1
        return None

    def _section(self, section: str) -> tuple[int, int]:
        """[start, stop) line indices of a table's body; (0, 0) when the table is absent."""
        headers = [(i, m.group(1)) for i, line in enumerate(self.lines) if (m := self.HEADER.match(line))]
        if section == "":
            return 0, headers[0][0] if headers else len(self.lines)
        for k, (i, name) in enumerate(headers):
            if name == section:
                return i, headers[k + 1][0] if k + 1 < len(headers) else len(self.lines)
        return 0, 0

    def line(self, section: str, key: str | None = None) -> int | None:
        """Line of ``key`` in ``[section]`` ("" = top level), or of the section header."""
        start, stop = self._section(section)
        if key is None:
            return start + 1 if stop and section else None
        return self._key_line(key, start, stop)

    def design(self, name: str, key: str | None = None) -> int | None:
        """Line of a design entry (found by its name) or of one of its keys."""
        pattern = re.compile(rf"name\s*=\s*[\"']{re.escape(str(name))}[\"']")
        for number, line in enumerate(self.lines):
            if pattern.search(line.split("#", 1)[0]):
                if key is None or re.search(rf"(^|[\s{{,]){re.escape(key)}\s*=", line):
                    return number + 1
                following = self._key_line(key, number + 1, min(len(self.lines), number + 12))
                return following or number + 1
        return None
