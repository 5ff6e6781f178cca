"""Publishing what a run found: the state file, then the Prometheus metrics file.

Rules:

1. ``assess`` is pure: for each GPU a config rule matches, None when it is as the
   config declares it, else one line saying how it differs (its first planned change,
   or why its layout cannot exist on it). GPUs no rule matches are not in the result.
2. ``Publisher.publish`` writes the state document first, with the ``counters`` of the
   previous state file advanced by this document (``metrics.count``), then the metrics
   rendered from exactly that document. The units an earlier run stopped and could not
   start again (the engine's note beside the state file) are added to
   ``units.start_failed``: they are still stopped, whichever run stopped them.
3. The metrics file never fails a run: an error writing it is one warning line
   (``metrics_not_written``), said again only when the error changes.
4. ``Publisher.tick``: a watch tick that found the GPUs as declared changes no state;
   it rewrites the metrics alone (the last document, with the tick's time and GPUs),
   so ``migrestore_last_check_timestamp_seconds`` shows the watch is alive.
5. Writing the state file keeps its own error (``StateFileError``) for the caller, who
   reports it as before.
"""

from __future__ import annotations

import datetime
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

from migrestore import __version__, metrics, statefile
from migrestore.errors import MigrestoreError
from migrestore.model import RESET_ALLOW, Config, GpuState, RunResult

__all__ = ["Publisher", "assess"]


def assess(cfg: Config, observed: Sequence[GpuState]) -> Dict[str, Optional[str]]:
    """Rule 1. Each GPU is planned on its own, so a layout that cannot exist on one GPU
    says so for that GPU only."""
    from migrestore import config as configmod
    from migrestore import planner

    desired = configmod.resolve(cfg, observed)
    verdicts: Dict[str, Optional[str]] = {}
    for gpu in observed:
        spec = desired.get(gpu.uuid)
        if spec is None:
            continue
        try:
            plan = planner.plan(
                {gpu.uuid: spec},
                observed,
                force=True,
                allow_reset=cfg.ampere_reset == RESET_ALLOW,
            )
        except MigrestoreError as exc:
            verdicts[gpu.uuid] = f"GPU {gpu.index}: {exc}"
            continue
        actions = plan.actions
        if not actions:
            verdicts[gpu.uuid] = None
            continue
        more = f" (+{len(actions) - 1} more)" if len(actions) > 1 else ""
        verdicts[gpu.uuid] = actions[0].describe() + more
    return verdicts


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Publisher:
    """Writes the state file and the metrics file of one process (rules 2-4)."""

    def __init__(
        self,
        state_path: str,
        metrics_path: Optional[str],
        warn: Callable[[str, str], None],
        left_stopped: Callable[[], Sequence[str]] = lambda: (),
    ) -> None:
        """``warn(path, error)`` reports a metrics file that could not be written;
        ``left_stopped`` reads the units earlier runs left stopped."""
        self.state_path = state_path
        self.metrics_path = metrics_path
        self.warn = warn
        self.left_stopped = left_stopped
        self.last: Optional[Dict[str, Any]] = None
        self._said = ""

    def publish(self, doc: Mapping[str, Any]) -> None:
        """Rule 2. Raises StateFileError when the state file cannot be written (the
        metrics file is then still written)."""
        current = dict(doc)
        units = dict(current.get("units") or {})
        still = list(units.get("start_failed") or [])
        for unit in self.left_stopped():
            if unit not in still:
                still.append(unit)
        units["start_failed"] = still
        current["units"] = units
        try:
            previous = statefile.read_state(self.state_path)
        except MigrestoreError:
            previous = None  # unreadable: the counters start again
        current["counters"] = metrics.count(previous, current)
        self.last = current
        try:
            statefile.write_state(self.state_path, current)
        finally:
            self._write_metrics(current)

    def tick(self, observed: Sequence[GpuState], assessment: Mapping[str, Optional[str]]) -> None:
        """Rule 4: the last document with this tick's time and GPUs, metrics only."""
        if self.last is None:
            try:
                self.last = statefile.read_state(self.state_path)
            except MigrestoreError:
                self.last = None
        if self.last is None or not self.metrics_path:
            return
        doc = dict(self.last)
        doc["checked"] = _now()
        doc["gpus"] = statefile.build_state(
            RunResult.CONVERGED, "", observed, 0.0, problems=assessment
        )["gpus"]
        self._write_metrics(doc)

    def _write_metrics(self, doc: Mapping[str, Any]) -> None:
        if not self.metrics_path:
            return
        try:
            metrics.write_textfile(self.metrics_path, metrics.render(doc, version=__version__))
        except MigrestoreError as exc:
            if str(exc) != self._said:
                self._said = str(exc)
                self.warn(self.metrics_path, str(exc))
            return
        self._said = ""
