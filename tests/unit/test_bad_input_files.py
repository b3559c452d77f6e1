"""Bad input: the files operators write (policy and controller files), fuzzed with hypothesis.

Where it sits: the reliability suite's first gate (issue 7). Whatever an operator (or an attacker
with write access to the policy folder) puts in a file, the loaders answer with a valid model or
a ``ConfigError`` whose every line names the file — never a traceback or another exception
type — and ``autoscaler validate`` exits 1 with that message. Mutations start from a valid file
(drop, replace or add a key anywhere), plus arbitrary text, bytes, truncations and YAML alias
bombs.
"""

from __future__ import annotations

import contextlib
import copy
import io
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from autoscaler.cli.main import main
from autoscaler.config import load_controller_config
from autoscaler.model import ConfigError
from policies.loader import load_policy
from tests.reliability import record

pytest_plugins = ["tests.reliability_plugin"]
ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "businesses"
IMAGES = ROOT / "examples" / "images"
WORK = Path(tempfile.mkdtemp(prefix="bad-input-files-"))
FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

_safe = YAML(typ="safe", pure=True)
POLICY: dict[str, Any] = _safe.load((EXAMPLES / "web.yaml").read_text())
CONTROLLER: dict[str, Any] = {
    "apiVersion": "autoscaler/v1",
    "kind": "Controller",
    "policy_dir": str(EXAMPLES),
    "image_dir": str(IMAGES),
    "state_dir": "state",
    "domain_type": "kvm",
    "inventory": {
        "regions": [
            {
                "name": "north",
                "datacenters": [
                    {
                        "name": "n1",
                        "racks": [
                            {
                                "name": "r1",
                                "hosts": [
                                    {
                                        "name": "kvm-1",
                                        "uri": "qemu+tls://kvm-1/system",
                                        "cpus": 32,
                                        "memory_mib": 262144,
                                    }
                                ],
                            }
                        ],
                    }
                ],
            }
        ]
    },
    "intervals": {"collect_s": 5, "decide_s": 10},
}

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            out += _paths(value, (*prefix, i))
    return out


def _at(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        doc = doc[part]
    return doc


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """``base`` with one to three keys dropped, replaced by any value, or added."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(doc)))
        op = draw(st.sampled_from(["drop", "replace", "add"]))
        if not path or op == "add":
            target = _at(doc, path)
            if isinstance(target, dict):
                target[draw(st.text(min_size=1, max_size=12))] = draw(values)
            continue
        parent, last = _at(doc, path[:-1]), path[-1]
        if op == "drop":
            del parent[last]
        else:
            parent[last] = draw(values)
    return doc


def _dump(doc: Any) -> str:
    out = io.StringIO()
    YAML(typ="safe", pure=True).dump(doc, out)
    return out.getvalue()


def _write(name: str, content: str | bytes) -> Path:
    path = WORK / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", errors="surrogatepass")
    return path


def _clear_or_valid(path: Path, load: Callable[[Path], object]) -> ConfigError | None:
    """Load ``path``: None if valid; the ConfigError if not, checked to name the file on every
    line. Any other exception escapes and fails the test."""
    try:
        load(path)
    except ConfigError as exc:
        text = str(exc)
        assert text, "an empty error message"
        assert "Traceback" not in text
        for line in text.splitlines():
            assert line.startswith(str(path)), f"a line of the error does not name the file: {line}"
        return exc
    return None


def _validate(path: Path) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["validate", str(path), "--image-dir", str(IMAGES)])
    return code, err.getvalue()


def _load_and_validate(
    name: str, doc: dict[str, Any], load: Callable[[Path], object]
) -> tuple[ConfigError | None, int, str]:
    path = _write(name, _dump(doc))
    error = _clear_or_valid(path, load)
    return (error, *_validate(path))


def _policy(path: Path) -> object:
    return load_policy(path, images={p.name for p in IMAGES.iterdir()})


@FUZZ
@given(doc=mutated(POLICY))
def test_a_mutated_policy_file_is_valid_or_a_clear_error_naming_the_file(
    doc: dict[str, Any],
) -> None:
    """Policy files with keys dropped, replaced by any value or added (hypothesis).

    Expect: a valid policy or a ConfigError naming the file on every line; validate exits 1.
    """
    error, code, err = _load_and_validate("policy.yaml", doc, _policy)
    assert code == (1 if error is not None else 0)
    if error is not None:
        assert str(error) in err


@FUZZ
@given(required=st.sampled_from(["apiVersion", "kind", "business", "template", "instances"]))
def test_a_policy_without_a_required_field_names_that_field(required: str) -> None:
    """Policy files missing a required field.

    Expect: a ConfigError naming the file and the missing field.
    """
    doc = copy.deepcopy(POLICY)
    del doc[required]
    path = _write("policy.yaml", _dump(doc))
    error = _clear_or_valid(path, _policy)
    assert error is not None
    assert f"field '{required}': required field is missing" in str(error)


@FUZZ
@given(doc=mutated(CONTROLLER))
def test_a_mutated_controller_file_is_valid_or_a_clear_error_naming_the_file(
    doc: dict[str, Any],
) -> None:
    """Controller files with keys dropped, replaced by any value or added (hypothesis).

    Expect: a valid file or a ConfigError naming the file on every line; validate exits 1.
    """
    error, code, err = _load_and_validate("controller.yaml", doc, load_controller_config)
    path = WORK / "controller.yaml"
    if error is not None:
        # without its ``kind`` the file is validated as a policy file: another message, same file
        assert code == 1 and f"{path}" in err and "Traceback" not in err
        if doc.get("kind") == "Controller":
            assert str(error) in err
    else:
        assert code in (0, 1)  # valid file; its policy folder or images may still be wrong
        assert "Traceback" not in err


@FUZZ
@given(text=st.text(max_size=300))
def test_any_text_is_a_valid_policy_or_a_clear_error(text: str) -> None:
    """Arbitrary text as a policy and as a controller file (hypothesis).

    Expect: a ConfigError naming the file; validate exits 1; never a traceback.
    """
    path = _write("text.yaml", text)
    _clear_or_valid(path, _policy)
    _clear_or_valid(path, load_controller_config)
    code, err = _validate(path)
    assert code == 1
    assert str(path) in err


@FUZZ
@given(data=st.binary(max_size=200))
def test_any_bytes_give_a_clear_error(data: bytes) -> None:
    """Arbitrary bytes (invalid UTF-8 included) as a policy file (hypothesis).

    Expect: a ConfigError naming the file; validate exits 1.
    """
    path = _write("bytes.yaml", data)
    _clear_or_valid(path, _policy)
    assert _validate(path)[0] == 1


@FUZZ
@given(cut=st.integers(min_value=0, max_value=len((EXAMPLES / "web.yaml").read_bytes()) - 1))
def test_a_truncated_policy_file_is_a_clear_error(cut: int) -> None:
    """A policy file truncated at any byte (hypothesis).

    Expect: a ConfigError naming the file, unless the cut leaves a complete valid file.
    """
    data = (EXAMPLES / "web.yaml").read_bytes()[:cut]
    path = _write("truncated.yaml", data)
    error = _clear_or_valid(path, _policy)
    # only a cut inside the trailing maintenance list (or the very last newline) can stay valid
    assert error is not None or cut >= data.rfind(b"maintenance:") or cut >= len(data) - 1


BOMBS = {
    "billion laughs (10^8 values)": "a: &a [x,x,x,x,x,x,x,x,x,x]\n"
    + "".join(
        f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n"
        for p, n in zip("abcdefg", "bcdefgh", strict=True)
    ),
    "self-referencing alias": "business: &a [*a]\n",
    "deep nesting": "business: " + "[" * 20000 + "]" * 20000 + "\n",
    "python object tag": 'business: !!python/object/apply:os.system ["touch /tmp/pwned"]\n',
    "duplicate key": "business: web\nbusiness: api\n",
    "binary tag": 'business: !!binary "zz"\n',
    "non-string key": "? [a, b]\n: 1\n",
    "a list at the top": "- web\n- api\n",
    "nul byte": "business: we\x00b\n",
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", sorted(BOMBS))
def test_hostile_yaml_is_refused_quickly_without_executing_anything(case: str) -> None:
    """Hostile YAML: alias bombs, recursion, python tags, duplicates, deep nesting.

    Expect: refused with a ConfigError in seconds, nothing executed.
    """
    pwned = Path("/tmp/pwned")
    pwned.unlink(missing_ok=True)
    path = _write("bomb.yaml", "apiVersion: autoscaler/v1\nkind: BusinessPolicy\n" + BOMBS[case])
    started = __import__("time").monotonic()
    error = _clear_or_valid(path, _policy)
    elapsed = __import__("time").monotonic() - started
    assert error is not None
    assert elapsed < 20, f"{case}: {elapsed:.1f} s to refuse"
    assert not pwned.exists()
    record(
        "bad-input",
        f"policy file: {case}",
        injected=f"a policy file with {case}",
        behaviour=str(error).splitlines()[-1].replace(str(WORK), "")[:160],
        lost="nothing (file refused)",
    )


def test_validate_as_a_process_exits_1_with_the_message_and_no_traceback() -> None:
    """`autoscaler validate` run as a process on a policy naming '../../etc'.

    Expect: exit 1, the file:line message on stderr, no traceback.
    """
    bad = _write("cli-bad.yaml", _dump({**POLICY, "business": "../../etc"}))
    done = subprocess.run(
        [sys.executable, "-m", "autoscaler.cli", "validate", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert f"{bad}:" in done.stderr and "not a safe name" in done.stderr
    record(
        "bad-input",
        "autoscaler validate on a bad file",
        injected="a policy file whose business is '../../etc'",
        behaviour=f"exit {done.returncode}: "
        + done.stderr.strip().splitlines()[-1].replace(str(WORK), "")[:120],
        lost="nothing",
    )
