"""Evaluation: campaigns over the threat-model spectrum, and the metrics of their reports."""

from mallory.evaluation.campaign import Campaign, ThreatPlan, default_attacks
from mallory.evaluation.metrics import build_report

__all__ = ["Campaign", "ThreatPlan", "build_report", "default_attacks"]
