"""What one policy did over one trace: the capacity it had in each interval, and its actions.

Where it sits: the result type shared by the simulated controller and the baselines
(``autoscaler.simulation``); the report is computed from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PolicyRun:
    """Capacity (cores) each policy had in each interval, and the actions it took."""

    capacity_cores: np.ndarray
    actions: int
