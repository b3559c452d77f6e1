"""The lab's rack temperature sensors: a real trace replayed into node-exporter's textfile folder.

Where it sits: a lab component feeding the node collector. This machine has no hwmon, so a
feeder process replays ``data/nab/machine_temperature_system_failure.csv`` (5-minute steps,
time-compressed) as one hwmon-style metric per rack,
``node_hwmon_temp_celsius{chip="rack_<rack>",sensor="temp1"}``, each rack at its own phase of
the trace. ``ramp`` makes one rack heat up on demand (fault injection); the feeder reads its
control file every tick.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from autoscaler.model.names import check_name
from lab.layout import LabLayout
from lab.supervision import (
    ComponentStatus,
    remove_folder,
    running_pid,
    spawn,
    start_clean,
    stop_all,
    wait_until,
)

COMPONENT = "temperature"
PROCESS = "feeder"
DEFAULT_TRACE = (
    Path(__file__).resolve().parents[1] / "data" / "nab" / "machine_temperature_system_failure.csv"
)
OUTPUT_NAME = "lab_temperature.prom"
PHASE_STEPS = 997  # each rack starts this many trace steps after the previous one
HELP = "Hardware monitor for temperature (input)"


@dataclass(frozen=True)
class TemperatureFeeder:
    pid: int
    output: Path
    racks: tuple[str, ...]


def _folder(layout: LabLayout) -> Path:
    return layout.root / COMPONENT


def _control_file(layout: LabLayout) -> Path:
    return _folder(layout) / "ramps.json"


def load_trace(path: Path) -> list[float]:
    """The trace's values in time order (header ``timestamp,value``)."""
    with path.open(newline="") as handle:
        rows = csv.DictReader(handle)
        values = [float(row["value"]) for row in rows]
    if not values:
        raise ValueError(f"{path}: no samples")
    return values


def render(temperatures: dict[str, float]) -> str:
    """Textfile-collector exposition of one reading per rack."""
    lines = [
        f"# HELP node_hwmon_temp_celsius {HELP}",
        "# TYPE node_hwmon_temp_celsius gauge",
    ]
    for rack, value in sorted(temperatures.items()):
        lines.append(f'node_hwmon_temp_celsius{{chip="rack_{rack}",sensor="temp1"}} {value:.3f}')
    return "\n".join(lines) + "\n"


def _ramp_offsets(control: Path, now: float) -> dict[str, float]:
    try:
        ramps = json.loads(control.read_text())
    except (OSError, ValueError):
        return {}
    offsets: dict[str, float] = {}
    if not isinstance(ramps, dict):
        return offsets
    for rack, spec in ramps.items():
        try:
            delta = float(spec["delta_c"])
            began = float(spec["start"])
            over = max(float(spec["over_s"]), 1e-3)
        except (KeyError, TypeError, ValueError):
            continue
        offsets[str(rack)] = delta * min(1.0, max(0.0, (now - began) / over))
    return offsets


def feed(
    trace: Path, output: Path, control: Path, racks: Sequence[str], seconds_per_step: float
) -> None:
    """Run the feeder loop (the body of the feeder process); never returns."""
    values = load_trace(trace)
    began = time.time()
    tmp = output.with_name(f".{output.name}.tmp")
    while True:
        now = time.time()
        step = int((now - began) / seconds_per_step)
        offsets = _ramp_offsets(control, now)
        readings = {
            rack: values[(step + i * PHASE_STEPS) % len(values)] + offsets.get(rack, 0.0)
            for i, rack in enumerate(racks)
        }
        output.parent.mkdir(parents=True, exist_ok=True)  # a restarted node-exporter stack
        tmp.write_text(render(readings))  # recreates its textfile folder: keep feeding it
        os.replace(tmp, output)
        time.sleep(min(seconds_per_step, 1.0))


def start(
    layout: LabLayout,
    racks: Sequence[str],
    *,
    trace: Path = DEFAULT_TRACE,
    seconds_per_step: float = 1.0,
    timeout: float = 10.0,
) -> TemperatureFeeder:
    """Start (or keep) the feeder writing into ``layout.node_textfile_dir``."""
    names = tuple(check_name(r, what="rack") for r in racks)
    if not names:
        raise ValueError("at least one rack is needed")
    output = layout.node_textfile_dir / OUTPUT_NAME
    folder = _folder(layout)
    pid = running_pid(folder, PROCESS)
    racks_file = folder / "racks.json"
    if (
        pid is not None
        and racks_file.exists()
        and json.loads(racks_file.read_text()) == list(names)
    ):
        return TemperatureFeeder(pid=pid, output=output, racks=names)
    return start_clean(
        layout, stop, lambda: _start_fresh(layout, names, trace, seconds_per_step, timeout)
    )


def _start_fresh(
    layout: LabLayout,
    names: tuple[str, ...],
    trace: Path,
    seconds_per_step: float,
    timeout: float,
) -> TemperatureFeeder:
    folder = _folder(layout)
    output = layout.node_textfile_dir / OUTPUT_NAME
    folder.mkdir(parents=True)
    layout.node_textfile_dir.mkdir(parents=True, exist_ok=True)
    (folder / "racks.json").write_text(json.dumps(list(names)))
    pid = spawn(
        folder,
        PROCESS,
        [
            sys.executable,
            "-m",
            "lab.temperature",
            "--trace",
            str(trace),
            "--output",
            str(output),
            "--control",
            str(_control_file(layout)),
            "--seconds-per-step",
            str(seconds_per_step),
            *names,
        ],
        log=folder / "feeder.log",
    )
    wait_until(output.exists, timeout=timeout, what=f"first temperature reading in {output}")
    return TemperatureFeeder(pid=pid, output=output, racks=names)


def ramp(layout: LabLayout, rack: str, *, delta_c: float, over_s: float) -> None:
    """Make ``rack`` heat up by ``delta_c`` degrees over ``over_s`` seconds, then stay there."""
    check_name(rack, what="rack")
    control = _control_file(layout)
    try:
        ramps = json.loads(control.read_text())
    except (OSError, ValueError):
        ramps = {}
    ramps[rack] = {"delta_c": delta_c, "start": time.time(), "over_s": over_s}
    tmp = control.with_name(".ramps.tmp")
    tmp.write_text(json.dumps(ramps))
    os.replace(tmp, control)


def clear_ramps(layout: LabLayout) -> None:
    _control_file(layout).unlink(missing_ok=True)


def stop(layout: LabLayout) -> None:
    """Stop the feeder, remove its reading from the textfile folder and its own folder."""
    stop_all(_folder(layout))
    (layout.node_textfile_dir / OUTPUT_NAME).unlink(missing_ok=True)
    remove_folder(_folder(layout))


def status(layout: LabLayout) -> ComponentStatus:
    return ComponentStatus(
        component=COMPONENT, processes={PROCESS: running_pid(_folder(layout), PROCESS)}
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="replay a temperature trace per rack")
    parser.add_argument("--trace", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--control", type=Path, required=True)
    parser.add_argument("--seconds-per-step", type=float, default=1.0)
    parser.add_argument("racks", nargs="+")
    args = parser.parse_args(argv)
    racks = [check_name(r, what="rack") for r in args.racks]
    feed(args.trace, args.output, args.control, racks, args.seconds_per_step)


if __name__ == "__main__":
    main()
