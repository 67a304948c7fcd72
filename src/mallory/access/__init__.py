"""The attacker's handle on a system: the Oracle and the view an attack holds."""

from mallory.access.oracle import Access, Gradient, Oracle, OracleView

__all__ = ["Access", "Gradient", "Oracle", "OracleView"]
