"""The convolution planners' memo. A plan is a function of its arguments (geometry, dtype, forced
choices, SM count) and of module-level tables, and deciding it costs 0.05 to 1 ms of Python a pass
(the searches over split counts, grids and dy paths): a training step of a ResNet would spend
milliseconds planning launches that run in less on a GPU. The launchers ask the same questions
every step, so each planner remembers its answers; a plan is immutable (frozen dataclasses), so one
object is shared by every caller.

Code that changes what a planner reads (the tests' patches of its tables, weights or helpers) calls
clear() after the change; tests/conftest.py clears before every test."""
from __future__ import annotations

import functools

_CACHES = []
PLAN_MEMO_SIZE = 1024   # plans a planner keeps; its memo is emptied when it reaches this many


def memoized(context=None):
    """Decorator: the planner's plans remembered per (positional arguments, keyword arguments,
    context()), where `context` returns what else the planner reads per call (conv.forced's
    context variable). Arguments that cannot be hashed skip the memo (the planner's checks refuse
    them). A known plan costs one hash of its key and one lookup (a launch pass asks every step)."""
    def wrap(planner):
        known = {}

        @functools.wraps(planner)
        def plan(*args, **options):
            key = (args, tuple(sorted(options.items())), context() if context else None)
            try:
                found = known.get(key)
            except TypeError:   # an unhashable argument
                return planner(*args, **options)
            if found is None:
                found = planner(*args, **options)
                if len(known) >= PLAN_MEMO_SIZE:
                    known.clear()
                known[key] = found
            return found

        _CACHES.append(known)
        return plan
    return wrap


def clear() -> None:
    """Forgets every memoized plan."""
    for known in _CACHES:
        known.clear()
