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
            str(path), [ConfigProblem(line=None, field="-", message=str(exc))]
        ) from exc
    yaml = YAML(typ="rt", pure=True)
    yaml.allow_duplicate_keys = False
    try:
        data = yaml.load(source)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        message = " ".join(str(m) for m in (exc.context, exc.problem) if m)
        raise ConfigError(
            str(path), [ConfigProblem(line=line, field="-", message=f"not valid YAML: {message}")]
        ) from exc
    except (YAMLError, ValueError, TypeError, RecursionError) as exc:
        raise ConfigError(
            str(path), [ConfigProblem(line=None, field="-", message=f"not valid YAML: {exc}")]
        ) from exc
    return data


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
            parts.append(("." if parts else "") + part)
    return "".join(parts) or "-"


def _plain(value: Any) -> Any:
    """ruamel's round-trip containers, as plain dicts and lists for pydantic."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def problems_from(exc: ValidationError, data: Any) -> list[ConfigProblem]:
    problems = []
    for error in exc.errors(include_url=False):
        loc = [p for p in error["loc"] if isinstance(p, int | str)]
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
            ConfigProblem(line=line_of(data, loc), field=_field_path(loc), message=message)
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
        return model.model_validate(_plain(data), context=context)
    except ValidationError as exc:
        raise ConfigError(str(path), problems_from(exc, data)) from exc
