"""`make faults`: every fault offload is meant to survive, put in at random moments on a local
fleet, many times, with what each run left behind (see ``scenarios`` for the faults, ``harness``
for the audit, ``report`` for docs/RELIABILITY.md). ``python -m bench.faults --help``."""
