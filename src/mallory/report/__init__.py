"""The report: data first (:mod:`mallory.report.model`), then its renderings."""

from mallory.report.model import SCHEMA, Report

__all__ = ["SCHEMA", "Report"]
