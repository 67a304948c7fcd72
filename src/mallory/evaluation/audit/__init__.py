"""The audit: a defended system walked through the pipeline of defense failures.

* :mod:`mallory.evaluation.audit.runner`: :class:`Audit` and :func:`audit`;
* :mod:`mallory.evaluation.audit.stages`: the six stages, one function each;
* :mod:`mallory.evaluation.audit.bench`: a system, its judge, attacks run on all its samples.
"""

from mallory.evaluation.audit.runner import Audit, audit

__all__ = ["Audit", "audit"]
