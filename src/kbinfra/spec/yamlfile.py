"""Read YAML keeping the line of every key, and turn validation errors into one clear line."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from kbinfra.errors import SpecError, unreadable
from kbinfra.input_files import noted

Loc = tuple[str | int, ...]

#: More values than any profile, stack file or secrets file holds (a stack file has ~300).
#: Aliases let a few lines name billions of values (the "billion laughs"): the document is
#: refused before it is built if it would expand past this, or nest deeper than MAX_DEPTH.
MAX_VALUES = 10_000
MAX_DEPTH = 64
_MERGE_KEY = "<<"

# libyaml, when PyYAML was built with it, parses and emits ~10x faster than pure Python.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def dump_yaml(value: Any, *, sort_keys: bool = True) -> str:
    """Block-style YAML, keys sorted by default: the same value always gives the same text."""
    text: str = yaml.dump(value, Dumper=_Dumper, sort_keys=sort_keys, default_flow_style=False)
    return text


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


ModelT = TypeVar("ModelT", bound=BaseModel)


class YamlDocument(NamedTuple):
    """A parsed YAML mapping and the 1-based line on which each key path starts."""

    path: Path
    data: dict[str, Any]
    lines: dict[Loc, int]

    def line_of(self, loc: Loc) -> int | None:
        """The line of ``loc`` or of its nearest parent that has one."""
        for end in range(len(loc), -1, -1):
            line = self.lines.get(loc[:end])
            if line is not None:
                return line
        return None

    def where(self, loc: Loc = ()) -> str:
        line = self.line_of(loc)
        return f"{self.path}:{line}" if line else str(self.path)


def read_yaml(path: Path, *, what: str, fix_missing: str) -> YamlDocument:
    """Parse ``path`` as a YAML mapping; any problem is a one-line :class:`SpecError`."""
    try:
        text = noted(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{what} not found", where=str(path), fix=fix_missing) from None
    except IsADirectoryError:
        raise SpecError(
            f"{what} is a directory, not a file", where=str(path), fix="point it at a YAML file"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        reason = unreadable(error)
        raise SpecError(
            f"cannot read {what}: {reason}",
            where=str(path),
            fix="make it a UTF-8 YAML file that this user can read",
        ) from None
    return parse_yaml(text, path, what=what)


class YamlSyntaxError(SpecError):
    """Text that is not YAML; ``what`` quotes the parser's problem, which may hold a value."""


def parse_yaml(text: str, path: Path, *, what: str) -> YamlDocument:
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is not None:
                _check_shape(node, path, what=what)
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = f":{mark.line + 1}" if mark else ""
        problem = error.problem or error.context or "invalid YAML"
        raise YamlSyntaxError(
            f"{what} is not valid YAML: {problem}",
            where=f"{path}{line}",
            fix="fix the indentation or quoting on that line",
        ) from None
    except yaml.YAMLError as error:
        raise YamlSyntaxError(f"{what} is not valid YAML: {error}", where=str(path)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(
            f"{what} must be a mapping of keys to values, not {type(data).__name__}",
            where=f"{path}:1",
        )
    lines: dict[Loc, int] = {}
    if node is not None:
        _collect_lines(node, (), lines)
    return YamlDocument(path=path, data=data, lines=lines)


def _check_shape(root: yaml.Node, path: Path, *, what: str) -> None:
    """Refuse duplicate keys, and documents that aliases expand past MAX_VALUES.

    Aliases share one node, so each node is sized once: the check costs the size of the
    text, never the size of the expansion.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        where = f"{path}:{node.start_mark.line + 1}"
        if id(node) in open_nodes:
            raise SpecError(
                f"{what} holds an alias to a value that contains it", where=where, fix=_NO_ALIAS
            )
        if depth > MAX_DEPTH:
            raise SpecError(f"{what} nests deeper than {MAX_DEPTH} levels", where=where)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            _refuse_duplicate_keys(node, path, what=what)
            children = [part for pair in node.value for part in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        open_nodes.add(id(node))
        total = 1 + sum(size(child, depth + 1) for child in children)
        open_nodes.discard(id(node))
        if total > MAX_VALUES:
            raise SpecError(
                f"{what} expands to more than {MAX_VALUES} values through YAML aliases",
                where=where,
                fix=_NO_ALIAS,
            )
        sizes[id(node)] = total
        return total

    size(root, 0)


_NO_ALIAS = "write the values out instead of repeating an anchor (&name / *name)"


def _refuse_duplicate_keys(node: yaml.MappingNode, path: Path, *, what: str) -> None:
    seen: dict[tuple[str, str], int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.value == _MERGE_KEY:
            continue
        line = key_node.start_mark.line + 1
        first = seen.get((key_node.tag, key_node.value))
        if first is None:
            seen[(key_node.tag, key_node.value)] = line
        else:
            raise SpecError(
                f"key {key_node.value!r} appears twice in {what}, on lines {first} and {line}",
                where=f"{path}:{line}",
                fix="keep one of them: YAML would silently use the last",
            )


def _collect_lines(node: yaml.Node, loc: Loc, lines: dict[Loc, int]) -> None:
    lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            lines[(*loc, key)] = key_node.start_mark.line + 1
            _collect_lines(value_node, (*loc, key), lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _collect_lines(item, (*loc, index), lines)


def validate(
    model: type[ModelT], data: Mapping[str, Any], doc: YamlDocument, *, what: str
) -> ModelT:
    """``model.model_validate(data)``, turning the first error into a one-line SpecError."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise spec_error_from(error, model, doc, what=what) from None


def spec_error_from(
    error: ValidationError, model: type[BaseModel], doc: YamlDocument, *, what: str
) -> SpecError:
    first = error.errors(include_url=False)[0]
    loc: Loc = tuple(part for part in first["loc"] if not _is_internal(part))
    dotted = ".".join(str(part) for part in loc) or "(top level)"
    kind = first["type"]
    if kind == "extra_forbidden":
        known = _known_keys(model, loc[:-1])
        hint = _did_you_mean(str(loc[-1]), known)
        allowed = f"known keys: {', '.join(sorted(known))}" if known else None
        return SpecError(
            f"unknown key {dotted!r} in {what}",
            where=doc.where(loc),
            fix=hint or (f"remove it ({allowed})" if allowed else "remove it"),
        )
    if kind == "missing":
        return SpecError(
            f"{what} is missing the required key {dotted!r}",
            where=doc.where(loc[:-1]),
            fix=f"add {dotted}",
        )
    message = first["msg"].removeprefix("Value error, ")
    return SpecError(f"{dotted}: {message}", where=doc.where(loc), fix=_fix_for(kind))


def _is_internal(part: str | int) -> bool:
    # Pydantic names union branches and validator functions inside ``loc``.
    return isinstance(part, str) and ("[" in part or part.startswith("function-"))


def _fix_for(kind: str) -> str | None:
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return "check the value's type"
    if kind == "literal_error":
        return "use one of the listed values"
    return None


def _did_you_mean(word: str, known: Sequence[str]) -> str | None:
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else None


def _known_keys(model: type[BaseModel], loc: Loc) -> list[str]:
    """The keys the model accepts at ``loc`` (a path of field names and dict keys)."""
    current: Any = model
    for part in loc:
        current = _child_type(current, part)
        if current is None:
            return []
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [field.alias or name for name, field in current.model_fields.items()]
    return []


def _child_type(annotation: Any, part: str | int) -> Any:
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        for name, field in annotation.model_fields.items():
            if part in (name, field.alias):
                return _unwrap(field.annotation)
        return None
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (dict, Mapping) and len(args) == 2:
        return _unwrap(args[1])
    if origin in (list, tuple, Sequence) and args:
        return _unwrap(args[0])
    return None


def _unwrap(annotation: Any) -> Any:
    """``X | None`` and ``Annotated[X, ...]`` → ``X``."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
            continue
        if origin in (typing.Union, types.UnionType):
            models = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(models) == 1:
                annotation = models[0]
                continue
        return annotation
