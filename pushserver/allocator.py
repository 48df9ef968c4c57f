"""Runs the push server on the C library's malloc rather than Python's own allocator.

A broker or an edge that forgot a crowd of channels must give their memory
back. CPython's allocator (pymalloc) returns memory in arenas of 1 MiB, and
only once every object in an arena is gone: the few objects that a running
server makes and keeps while a crowd comes and goes (a timer, a float, an
entry of a free list) are spread over every arena the crowd took, and keep
each of them. glibc's malloc, with `malloc_trim` (`broker.memory`), returns
every whole free page of 4 KiB instead. So `runpushserver` starts itself
again, once, with ``PYTHONMALLOC=malloc``, before it does anything else.
The cost is a slower allocation of small objects: in the benchmarks, a
fifth to a quarter more server CPU where the most objects are made per
message (W3, the broker's intake in W5), about 5 % in W2
(ops/bench/README.md, "W8").

The traps: the allocator is chosen when the interpreter starts, so this
must be an `exec` of the same command line, not a setting; an operator's
own ``PYTHONMALLOC`` (``pymalloc`` to keep Python's allocator, or a debug
one) is left as it is, which is also what stops a second `exec`; and where
there is no `malloc_trim` (musl, macOS) or the interpreter ignores the
environment (``-E``, ``-I``), nothing is done.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from broker.memory import can_trim

VARIABLE = "PYTHONMALLOC"
ALLOCATOR = "malloc"


def environment_for_malloc(
    environ: Mapping[str, str], trims: bool, ignores_environment: bool
) -> dict[str, str] | None:
    """The environment to run the command again in, or None to go on as it is.

    >>> environment_for_malloc({"HOME": "/root"}, True, False)
    {'HOME': '/root', 'PYTHONMALLOC': 'malloc'}
    >>> environment_for_malloc({"PYTHONMALLOC": "pymalloc"}, True, False) is None
    True
    """
    if VARIABLE in environ or not trims or ignores_environment:
        return None
    return {**environ, VARIABLE: ALLOCATOR}


def run_on_malloc() -> None:
    """Execute this process's command line again on malloc; returns only where it does not."""
    environment = environment_for_malloc(os.environ, can_trim(), bool(sys.flags.ignore_environment))
    if environment is None or not sys.executable:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, environment)
