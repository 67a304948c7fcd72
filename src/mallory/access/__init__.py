"""The attacker's handle on a system, and the evaluator beside it.

* :mod:`mallory.access.oracle`: the Oracle (exposure, admission, the event log);
* :mod:`mallory.access.view`: the view an attack holds, and nothing else;
* :mod:`mallory.access.events`: the event log of what the attacker sent and got;
* :mod:`mallory.access.policies`: admission policies (budget, allotment, rate limit, ban);
* :mod:`mallory.access.judge`: the judge (majority over draws; its own ledger);
* :mod:`mallory.access.record`: the attacker's record of the adversarial inputs it saw.
"""

from mallory.access.judge import Judge, Judgement
from mallory.access.oracle import Access, Gradient, Oracle
from mallory.access.view import OracleView

__all__ = ["Access", "Gradient", "Judge", "Judgement", "Oracle", "OracleView"]
