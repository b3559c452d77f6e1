"""The demo's new phases without a lab: web's lab policy names v1 before ``lab up``, the
rollout is written into the controls as ``autoscaler rollout web --to v2`` writes it, its
progress is counted from the controller's view, and the traffic line reads the generator's
status file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from ruamel.yaml import YAML

from autoscaler.runtime.controls import ControlFile
from lab import demo
from lab import lab as lab_mod


def test_the_lab_copy_of_web_names_v1_and_keeps_a_version_it_has(tmp_path: Path) -> None:
    demo.versioned_policy(tmp_path)
    copy = tmp_path / "businesses" / "web.yaml"
    text = copy.read_text()
    assert YAML(typ="safe").load(text)["template"]["version"] == "v1"
    assert text.startswith("# Web front-end")  # a round trip: the comments stay
    copy.write_text(text.replace("version: v1", "version: v7"))
    demo.versioned_policy(tmp_path)
    assert YAML(typ="safe").load(copy.read_text())["template"]["version"] == "v7"


def test_the_rollout_goes_into_the_controls_from_the_policys_version(tmp_path: Path) -> None:
    demo.versioned_policy(tmp_path)
    policies = tmp_path / "policies"
    policies.mkdir()
    shutil.copyfile(tmp_path / "businesses" / "web.yaml", policies / "web.yaml")
    config = SimpleNamespace(policy_dir=policies, state_dir=tmp_path / "state")
    said = demo.start_rollout(cast(Any, None), cast(Any, config), "local")
    assert "v1 -> v2" in said
    rollout = ControlFile(tmp_path / "state").read().rollouts["web"]
    assert (rollout.to, rollout.previous, rollout.paused) == ("v2", "v1", False)


def vm(version: str | None, ready: bool = True, business: str = "web") -> SimpleNamespace:
    return SimpleNamespace(
        business=business, state=SimpleNamespace(value="running"), version=version, ready=ready
    )


def test_rollout_progress_counts_the_instances_at_v2_and_those_left() -> None:
    controller = SimpleNamespace(snapshot=None)
    assert demo.rollout_progress(cast(Any, controller)) == (0, 0, 0)
    controller.snapshot = SimpleNamespace(
        vms=[vm("v1"), vm("v2"), vm("v2", ready=False), vm("v1", business="api")]
    )
    assert demo.rollout_progress(cast(Any, controller)) == (1, 3, 1)


def test_the_traffic_line_shows_rate_failures_and_p95(tmp_path: Path) -> None:
    status = tmp_path / "traffic.json"
    view = demo.TrafficView(status)
    assert "starting" in view.line()
    status.write_text(json.dumps({"elapsed_s": 1.0, "completed": 2, "sent": 2, "failures": 0}))
    view.line()
    status.write_text(
        json.dumps(
            {
                "elapsed_s": 5.0,
                "completed": 10,
                "sent": 11,
                "failures": 1,
                "latency_ms": {"p95": 84.2},
            }
        )
    )
    line = view.line()
    assert "2.0 req/s" in line and "11 sent" in line and "1 failed" in line
    assert "p95 84 ms" in line


def test_the_examples_web_policy_is_where_the_demo_copies_it_from() -> None:
    assert (lab_mod.EXAMPLES / "businesses" / "web.yaml").exists()
