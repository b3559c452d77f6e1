"""YAML files with line numbers, and pydantic errors turned into file:line:field messages.

Where it sits: the entry of every user-written file (business policies here, the controller
file in autoscaler.config). ruamel.yaml keeps each key's line, so a validation error can point
at the line an operator has to fix rather than at a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from autoscaler.model.errors import ConfigError, ConfigProblem

ModelT = TypeVar("ModelT", bound=BaseModel)


def read_yaml(path: Path, text: str | None = None) -> Any:
    """Parse ``path`` (or ``text`` attributed to it), keeping line numbers; ConfigError if bad."""
    try:
        source = path.read_text(encoding="utf-8") if text is None else text
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            str(path), [ConfigProblem(line=None, field="-", message=printable(str(exc)))]
        ) from exc
    yaml = YAML(typ="rt", pure=True)
    yaml.allow_duplicate_keys = False
    try:
        data = yaml.load(source)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        message = printable(" ".join(str(m) for m in (exc.context, exc.problem) if m))
        raise ConfigError(
            str(path), [ConfigProblem(line=line, field="-", message=f"not valid YAML: {message}")]
        ) from exc
    except (YAMLError, ValueError, TypeError, RecursionError) as exc:
        message = printable(str(exc))
        raise ConfigError(
            str(path), [ConfigProblem(line=None, field="-", message=f"not valid YAML: {message}")]
        ) from exc
    return data


def printable(text: str) -> str:
    """``text`` with control characters escaped: a key or value from the file can never break
    an error message into extra (forged) lines of output or logs."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def line_of(data: Any, loc: Sequence[int | str]) -> int | None:
    """The 1-based line of the deepest node of ``loc`` that the file has."""
    line: int | None = None
    node = data
    for part in loc:
        if isinstance(node, CommentedMap) and isinstance(part, str) and part in node:
            line = node.lc.key(part)[0] + 1
            node = node[part]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
            line = node.lc.item(part)[0] + 1
            node = node[part]
        else:
            break
    if line is None and isinstance(data, CommentedMap | CommentedSeq):
        line = data.lc.line + 1
    return line


def _field_path(loc: Sequence[int | str]) -> str:
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif part.startswith(("function-", "tagged-union", "json-or-python")) or part in (
            "str",
            "int",
            "float",
        ):
            continue
        else:
            parts.append(("." if parts else "") + printable(part))
    return "".join(parts) or "-"


MAX_VALUES = 100_000
"""Most values a file may expand to: YAML aliases can make a few lines expand to billions
(the "billion laughs"), which would eat the controller's memory before validation starts."""


class _TooLarge(ValueError):
    pass


def _plain(value: Any, budget: list[int] | None = None) -> Any:
    """ruamel's round-trip containers, as plain dicts and lists for pydantic (bounded)."""
    budget = [MAX_VALUES] if budget is None else budget
    budget[0] -= 1
    if budget[0] < 0:
        raise _TooLarge(f"the file expands to more than {MAX_VALUES} values (YAML aliases?)")
    if isinstance(value, dict):
        return {k: _plain(v, budget) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v, budget) for v in value]
    return value


def _without_tags(data: Any, loc: Sequence[int | str]) -> list[int | str]:
    """``loc`` less the tags pydantic inserts for a discriminated union (``target.folder.path``
    is ``target.path`` in the file: ``folder`` is the value of its ``kind``)."""
    out: list[int | str] = []
    node = data
    for i, part in enumerate(loc):
        # A tag is the mapping's own ``kind`` with a field still to come (``pool.pool``: the
        # tag, then the pool target's ``pool`` field).
        if isinstance(node, dict) and node.get("kind") == part and i < len(loc) - 1:
            continue
        node = _child(node, part)
        out.append(part)
    return out


def _child(node: Any, part: int | str) -> Any:
    """``node[part]`` when the file has it, else None."""
    if isinstance(node, dict) and part in node:
        return node[part]
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    return None


def problems_from(exc: ValidationError, data: Any) -> list[ConfigProblem]:
    problems = []
    for error in exc.errors(include_url=False):
        loc = _without_tags(data, [p for p in error["loc"] if isinstance(p, int | str)])
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown field (check the spelling; see `autoscaler schema`)"
        elif error["type"] == "missing":
            message = "required field is missing"
        elif "input" in error and error["type"] not in ("model_type", "dict_type"):
            shown = repr(error["input"])
            if len(shown) <= 60:
                message = f"{message} (got {shown})"
        problems.append(
            ConfigProblem(
                line=line_of(data, loc), field=_field_path(loc), message=printable(message)
            )
        )
    return problems


def validate_file(
    model: type[ModelT], path: Path, data: Any, context: dict[str, Any] | None = None
) -> ModelT:
    """Validate parsed YAML against ``model``; ConfigError with file, line and field if bad."""
    if not isinstance(data, dict):
        raise ConfigError(
            str(path),
            [ConfigProblem(line=1, field="-", message="expected a mapping at the top of the file")],
        )
    try:
        plain = _plain(data)
    except (_TooLarge, RecursionError) as exc:
        message = str(exc) if isinstance(exc, _TooLarge) else "the file nests too deeply"
        raise ConfigError(
            str(path), [ConfigProblem(line=None, field="-", message=message)]
        ) from exc
    try:
        return model.model_validate(plain, context=context)
    except ValidationError as exc:
        raise ConfigError(str(path), problems_from(exc, data)) from exc
