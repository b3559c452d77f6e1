"""How much margin a business is provisioned with: it follows the error budget left.

Where it sits: read by ``policies.assess`` when it computes the capacity a business needs.
An SLA of 99.95% allows 0.05% of bad time; a controller that provisions for the SLA's own
quantile of every forecast at the policy's comfortable target utilisation never spends that
budget and pays for capacity that almost never carries load. Instead, the budget is spent
deliberately:

- while at least half of it is left, capacity covers the forecast's 99th percentile at the
  SLI's saturation threshold (what the forecast misses, vertical hot-adds catch in seconds);
- as it is spent, the quantile rises and the utilisation falls, in three steps, to the
  SLA's own quantile at the policy's target utilisation once it is gone.

The steps are fixed fractions of the budget, not constants fitted to any trace; the quantiles
they name are those every fitted forecast carries (``MARGIN_QUANTILES``).
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.forecast import MARGIN_QUANTILES

__all__ = ["MARGIN_QUANTILES", "Margin", "margin_for"]


@dataclass(frozen=True, slots=True)
class Margin:
    """Provision for the forecast's ``quantile`` at ``utilisation`` of capacity."""

    quantile: float
    utilisation: float
    why: str


def margin_for(
    budget_left: float, sla_quantile: float, target_utilisation: float, saturation: float
) -> Margin:
    """The margin for a business with ``budget_left`` (1 = untouched, <= 0 = spent)."""
    target = min(target_utilisation, saturation)
    if budget_left >= 0.5:
        return Margin(min(0.99, sla_quantile), saturation, "at least half the error budget left")
    if budget_left >= 0.25:
        middle = (saturation + target) / 2
        return Margin(min(0.995, sla_quantile), middle, "a quarter to half the budget left")
    if budget_left > 0:
        return Margin(min(0.999, sla_quantile), target, "less than a quarter of the budget left")
    return Margin(sla_quantile, target, "the error budget is spent")
