"""Replaying real demand traces through the controller and through the usual baselines."""
