"""`offload doctor`: is each builder usable, and if not, what to do about it.

``model`` holds the data (a ``Check`` with a verdict, a detail and a fix; a ``MachineReport``
per machine), ``reach`` and ``facts`` judge what the probes saw (pure, one function per
check), ``login`` probes a machine up to the login and ``run`` the rest, the machines
concurrently; ``render`` prints the table.
"""

from offload.doctor.model import CHECKS, Check, MachineReport, Verdict
from offload.doctor.render import format_report
from offload.doctor.run import DEFAULT_TIMEOUT, BuilderFacts, DoctorOptions, diagnose, examine

__all__ = [
    "CHECKS",
    "DEFAULT_TIMEOUT",
    "BuilderFacts",
    "Check",
    "DoctorOptions",
    "MachineReport",
    "Verdict",
    "diagnose",
    "examine",
    "format_report",
]
