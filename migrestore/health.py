"""``migrestore status --check``: one exit code and one line for any monitor.

The contract of Node Problem Detector custom plugins, Nagios/Icinga plugins and
Kubernetes exec probes: the exit code says the state, stdout says why in one line.

Rules:

1. ``OK`` (0): the GPUs a rule matches are as the config declares them, the last pass
   did not fail and no client unit was left stopped.
2. ``PROBLEM`` (1): the last pass failed, or a GPU is sick now (NVML cannot read it) or
   the last pass was partial (a GPU was not restored), or client units were left
   stopped, or the GPUs are not as the config declares them (drift, a pending mode
   change), or the config cannot be used. The first of these, in that order, is the
   line.
3. ``UNKNOWN`` (2): the state cannot be known: no NVIDIA driver, or no state file
   (migrestore has not run since boot), or a state file that cannot be read.
4. The line is at most ``MAX_LINE`` (80) characters, one line, starting with the state
   word; a longer reason is cut and ends with ``...``.
5. ``decide`` is pure: what the caller observed in, ``Verdict`` out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

__all__ = ["MAX_LINE", "OK", "PROBLEM", "UNKNOWN", "Verdict", "decide", "one_line"]

OK = 0
PROBLEM = 1
UNKNOWN = 2
MAX_LINE = 80
_WORDS = {OK: "OK", PROBLEM: "PROBLEM", UNKNOWN: "UNKNOWN"}


@dataclass(frozen=True)
class Verdict:
    code: int
    line: str


def one_line(code: int, reason: str) -> str:
    """``WORD: reason`` on one line of at most MAX_LINE characters."""
    text = f"{_WORDS[code]}: {' '.join(reason.split())}"
    if len(text) > MAX_LINE:
        text = text[: MAX_LINE - 3].rstrip() + "..."
    return text


def _verdict(code: int, reason: str) -> Verdict:
    return Verdict(code, one_line(code, reason))


def decide(
    *,
    driver_error: Optional[str] = None,
    state: Optional[Mapping[str, Any]] = None,
    state_error: Optional[str] = None,
    config_error: Optional[str] = None,
    left_stopped: Sequence[str] = (),
    drift: Sequence[str] = (),
    summary: str = "",
    sick: Sequence[str] = (),
) -> Verdict:
    """The check's verdict. ``driver_error``: why NVML could not be opened;
    ``state``: the state document (None: none this boot) or ``state_error``: why it
    cannot be read; ``config_error``: why the config cannot be used; ``left_stopped``:
    the client units stopped and not started again; ``drift``: per GPU that is not as
    declared, one short description (from a plan of the live GPUs); ``summary``: the
    OK line's text (``2 MIG GPUs, 6 MIG devices``); ``sick``: per GPU NVML cannot read
    now, one line (``GpuIdentity.describe_sick``)."""
    if driver_error is not None:
        return _verdict(UNKNOWN, f"no NVIDIA driver: {driver_error}")
    if state_error is not None:
        return _verdict(UNKNOWN, state_error)
    if state is None:
        return _verdict(UNKNOWN, "no state file: migrestore has not run since boot")
    if state.get("result") == "failed":
        return _verdict(PROBLEM, f"last pass failed at {state.get('time')}: {state.get('message')}")
    if sick:
        many = f" ({len(sick)} GPUs)" if len(sick) > 1 else ""
        return _verdict(PROBLEM, f"partial: sick GPU{many}: {sick[0]}")
    if state.get("result") == "partial":
        return _verdict(PROBLEM, f"partial at {state.get('time')}: {state.get('message')}")
    if left_stopped:
        return _verdict(PROBLEM, f"units left stopped: {', '.join(left_stopped)}")
    if config_error is not None:
        return _verdict(PROBLEM, f"config: {config_error}")
    if drift:
        many = f" ({len(drift)} GPUs)" if len(drift) > 1 else ""
        return _verdict(PROBLEM, f"not converged{many}: {drift[0]}")
    text = f"converged: {summary}" if summary else "converged"
    return _verdict(OK, f"{text}; {state.get('result')} {state.get('time')}")
