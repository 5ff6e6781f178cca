"""The boot service (``migrestore daemon``, the unit's ExecStart).

Sequence (docs/ARCHITECTURE.md, the ``daemon.py`` row):

1. Load and validate the config. Invalid: one journal line naming file:line, STATUS=,
   exit 78, nothing touched.
2. Ask systemd for the time the driver wait, the lock wait and the reads may take
   (EXTEND_TIMEOUT_USEC), then wait for the driver, bounded (``driver-wait``), saying so
   in STATUS=; give up: 69.
3. Under the GPU lock, converge (engine.converge): converged already means READY at once
   with no unit stopped and no GPU touched; otherwise stop the active client units,
   apply, verify, start exactly those units again (--no-block), hooks, CDI refresh.
4. READY=1 with a one-line STATUS= summary; write the state file, then the metrics
   file (publish.Publisher; a metrics file that cannot be written is one warning).
   A partial pass (a sick or missing GPU, engine rule 7) is READY too, its STATUS=
   naming the GPU and the error; the watch goes on and restores the GPU once NVML
   reads it again. ``--once`` exits 75 (EXIT_PARTIAL) after it. A GPU whose pending
   Ampere mode change the platform will not activate (executor rule 7) ends the start
   with exit 77 (EXIT_REBOOT), after the other GPUs were restored; the unit does not
   restart on it.
5. Watch: every ``drift.interval`` and on SIGHUP (which also reloads the config; a
   bad new config is reported and the old one kept) one tick observes and decides once
   (``engine.look``); drift is restored with that decision, or only reported, per
   ``drift.policy``; a tick that finds nothing to change rewrites the metrics file
   alone. WATCHDOG=1 when systemd asks for it, also during a tick (a thread pings
   within the budget the tick declares, ``_Guard``). SIGTERM exits 0 and leaves
   the geometry as it is; it also ends a wait for the driver or for the GPU lock at
   once, with nothing changed (``Cancelled``). SIGTERM during a pass lets the pass run
   to its end, every step bounded (a GPU reset cannot be cut short, and a geometry
   left half-made is worse than a late stop), starting the clients it stopped; at
   once, STOPPING=1 and EXTEND_TIMEOUT_USEC ask systemd for what the pass declared it
   still needs, so ``TimeoutStopSec=`` does not kill it mid-reset (issue 12 item 2;
   docs/SYSTEMD.md has the arithmetic).

Back-off (issue 12 items 8 and 4): a watch tick whose restore failed on a GPU because
a destroy answered IN_USE (an instance no process is listed on: DCGM, a leaked handle)
or because only a reboot can activate its pending mode change (a passthrough GPU, a
reset refused; ``RebootNeeded``) does not make every later tick stop and start the
client units again; any other failure is retried at the next tick as before. The GPU is
retried when its observed geometry changes, on SIGHUP, or after a delay that starts at
``BACKOFF_FIRST`` (at least four intervals) and doubles up to ``BACKOFF_MAX``; until
then each tick writes one ``restore_backed_off`` warning naming the GPU, what failed
and what is left, and changes nothing.

Rules: NVML is open only for a pass, a watch tick or a reload check, and shut down
after (issue 12 item 1): a process with NVML initialised holds /dev/nvidiactl, the GPUs'
nodes and the MIG capability nodes and counts as a client of every GPU, so an idle
daemon holding a session would block every reset (an operator's ``nvidia-smi -r``,
Fabric Manager's restart procedure, ``migrestore apply``'s own Ampere reset) and a
driver unload. The GPU lock is taken before the session is opened, so waiting for it
holds no NVML. Signals only set flags (the loop acts on them), woken through a
self-pipe so an idle daemon sleeps in select().
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

from migrestore import backend, engine, logs, metrics, publish, render
from migrestore import config as configmod
from migrestore.errors import (
    EXIT_OK,
    EXIT_PARTIAL,
    ActionFailed,
    ConfigError,
    DriverUnavailable,
    InfeasibleError,
    MigrestoreError,
    NvmlError,
    RebootNeeded,
)
from migrestore.lock import Cancelled, GpuLock
from migrestore.model import Config, DriftPolicy, GpuState, RunResult
from migrestore.notify import Notifier
from migrestore.nvml import Nvml
from migrestore.services import QUERY_TIMEOUT, Systemctl

DRIVER_POLL = 1.0  # seconds between NVML init attempts while waiting for the driver
LOCK_TIMEOUT = 120.0  # seconds to wait for a concurrent 'migrestore apply'
# What a watch tick may take before the pass extends it: the lock wait and the reads.
TICK_BUDGET = LOCK_TIMEOUT + 60.0
# What a pass SIGTERM landed in needs beyond its declared budget: starting the client
# units it stopped again (``systemctl start --no-block``, each bounded by
# services.QUERY_TIMEOUT) and writing the state file. Per client unit, plus this.
STOP_MARGIN = 30.0
# A GPU whose restore failed is retried after this long (or four intervals, if longer),
# then twice as long each time, at most BACKOFF_MAX (module docstring, back-off).
BACKOFF_FIRST = 300.0
BACKOFF_MAX = 3600.0


def _geometry(gpu: GpuState) -> Tuple[object, ...]:
    """What a GPU's back-off compares: its mode and instances (not processes)."""
    return (
        gpu.mig_current,
        gpu.mig_pending,
        tuple(
            (gi.profile, gi.placement, tuple((ci.profile, ci.placement) for ci in gi.cis))
            for gi in gpu.instances
        ),
    )


@dataclass
class _Backoff:
    """A GPU whose restore failed at a watch tick: not retried before ``retry_at``
    unless its geometry changed."""

    geometry: Tuple[object, ...]
    delay: float
    retry_at: float
    error: str
    left: str


class _Signals:
    """SIGHUP/SIGTERM/SIGINT set flags and wake the loop through a pipe."""

    def __init__(self) -> None:
        self.reload = False
        self.stop = False
        self.guard: Optional[_Guard] = None  # the running pass's guard, woken on SIGTERM
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)
        signal.set_wakeup_fd(self.write_fd)
        signal.signal(signal.SIGHUP, self._on_hup)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)

    def _on_hup(self, _signum: int, _frame: Any) -> None:
        self.reload = True

    def _on_term(self, _signum: int, _frame: Any) -> None:
        self.stop = True
        guard = self.guard
        if guard is not None:
            guard.poke()

    def wait(self, timeout: float) -> None:
        """Sleep until a signal arrives or ``timeout`` passes."""
        if self.reload or self.stop:
            return
        with contextlib.suppress(InterruptedError):
            select.select([self.read_fd], [], [], max(0.0, timeout))
        try:
            while os.read(self.read_fd, 512):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        os.close(self.read_fd)
        os.close(self.write_fd)


class _Guard:
    """A thread beside every pass (the start, a watch tick, a reload; issue 12 item 2).

    * ``WATCHDOG=1`` every ``interval`` (watch ticks: a restore can take longer than
      the watchdog interval, issue 13 finding 5), but only within the budget the pass
      declared: ``TICK_BUDGET`` for its lock wait and reads, extended by the pass before
      each slow step (``Daemon.extend``). A pass stuck past its budget is no longer
      pinged, so systemd's watchdog still catches a hang.
    * SIGTERM during the pass (``poke``): the pass runs to its end, every step bounded
      (a client stop or a GPU reset under way cannot be cut short), and starts the
      clients it stopped. The thread says ``STOPPING=1`` and ``EXTEND_TIMEOUT_USEC`` for what is left of the
      declared budget plus ``margin`` (``Daemon.stop_margin``), so systemd's stop timeout does not kill the
      daemon mid-reset or with client units left stopped. Each later ``Daemon.extend``
      of the pass extends the stop timeout in the same way.

    The signal handler only writes a byte to the thread's pipe: it runs on the main
    thread, which may hold the notifier's lock, so it never sends itself."""

    def __init__(
        self,
        notifier: Notifier,
        interval: Optional[float],
        budget: float,
        stop_requested: Callable[[], bool],
        margin: float = STOP_MARGIN,
    ) -> None:
        self.notifier = notifier
        self.interval = interval
        self.stop_requested = stop_requested
        self.margin = margin
        self.deadline = time.monotonic() + budget
        self._done = False
        self._stopped = False
        self._read_fd, self.poke_fd = os.pipe()
        os.set_blocking(self.poke_fd, False)
        self._thread = threading.Thread(target=self._run, name="pass-guard", daemon=True)
        self._thread.start()

    def extend(self, seconds: float) -> None:
        self.deadline = max(self.deadline, time.monotonic() + seconds)

    def poke(self) -> None:
        """Wake the thread (async-signal-safe: one write, no lock)."""
        with contextlib.suppress(OSError):  # a full pipe is awake already
            os.write(self.poke_fd, b"x")

    def _run(self) -> None:
        while True:
            with contextlib.suppress(InterruptedError):
                ready, _, _ = select.select([self._read_fd], [], [], self.interval)
            if ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._read_fd, 512)
            if self._done:
                return
            if self.stop_requested() and not self._stopped:
                self._stopped = True
                left = max(0.0, self.deadline - time.monotonic())
                self.notifier.stopping()
                self.notifier.extend_timeout(left + self.margin)
            if not ready and self.interval is not None and time.monotonic() < self.deadline:
                self.notifier.watchdog()

    def close(self) -> None:
        self._done = True
        self.poke()
        self._thread.join()
        os.close(self._read_fd)
        os.close(self.poke_fd)


class Daemon:
    def __init__(
        self,
        cfg: Config,
        *,
        config_path: str,
        select_name: Optional[str],
        simulate: Optional[str],
        log: Any,
        notifier: Notifier,
        ctl: Optional[Systemctl] = None,
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.select_name = select_name
        self.simulate = simulate
        self.log = log
        self.notifier = notifier
        self.ctl = ctl or Systemctl()
        self.nv: Optional[Nvml] = None  # open only during a pass, a tick or a check
        self.driver: Optional[str] = None  # the driver version last read
        self.state_path = backend.state_path(simulate)
        self.lock_path = backend.lock_path(simulate)
        self.summary = ""  # the last one-line STATUS= summary
        self.unrestored: Tuple[str, ...] = ()  # the GPUs the last pass could not restore
        self.signals: Optional[_Signals] = None  # SIGTERM cuts the waits short
        self.guard: Optional[_Guard] = None  # while a pass, a watch tick or a reload runs
        self.backoff: Dict[str, _Backoff] = {}  # by GPU uuid (module docstring)
        self.publisher = publish.Publisher(
            self.state_path,
            metrics.textfile_path(cfg.metrics_textfile, simulate),
            lambda path, error: log.warning("metrics_not_written", path=path, error=error),
            lambda: engine.left_stopped(self.state_path, log),
        )

    # ----------------------------------------------------------------- waits

    def stop_requested(self) -> bool:
        return self.signals is not None and self.signals.stop

    def pause(self, seconds: float) -> None:
        """Sleep between attempts; SIGTERM ends the wait at once (Cancelled)."""
        if self.signals is None or self.signals.reload:
            time.sleep(seconds)  # (a pending SIGHUP would end every wait at once)
        else:
            self.signals.wait(seconds)
        if self.stop_requested():
            raise Cancelled("stopped while waiting")

    def extend(self, seconds: float) -> None:
        """The pass asks for ``seconds`` more before a slow step: systemd's start (or
        reload) timeout, and the watchdog keepalive of a watch tick."""
        self.notifier.extend_timeout(seconds)
        if self.guard is not None:
            self.guard.extend(seconds)

    def stop_margin(self) -> float:
        """Seconds a pass cut by SIGTERM needs after its declared budget (STOP_MARGIN)."""
        return STOP_MARGIN + QUERY_TIMEOUT * len(self.cfg.clients)

    @contextlib.contextmanager
    def guarded(self, interval: Optional[float]) -> Iterator[None]:
        """A pass (or tick, or reload) with its ``_Guard``; ``interval``: the watchdog
        ping interval, None before READY (systemd's watchdog starts with READY=1)."""
        guard = _Guard(
            self.notifier, interval, TICK_BUDGET, self.stop_requested, self.stop_margin()
        )
        self.guard = guard
        if self.signals is not None:
            self.signals.guard = guard
        try:
            yield
        finally:
            self.guard = None
            if self.signals is not None:
                self.signals.guard = None
            guard.close()

    def lock(self) -> GpuLock:
        """The GPU lock; SIGTERM ends the wait for it (Cancelled), nothing done."""
        return GpuLock(self.lock_path, timeout=LOCK_TIMEOUT, cancel=self.stop_requested)

    # ----------------------------------------------------------------- phases

    def wait_for_driver(self) -> Nvml:
        deadline = time.monotonic() + self.cfg.driver_wait
        said = False
        while True:
            nv = Nvml(backend.choose(self.simulate))
            try:
                nv.open()
                return nv
            except DriverUnavailable as exc:
                if time.monotonic() >= deadline:
                    raise DriverUnavailable(
                        f"{exc} (waited {self.cfg.driver_wait:.0f}s; see driver-wait in the config)"
                    ) from exc
                if not said:
                    self.log.warning("waiting_for_driver", reason=str(exc))
                    self.notifier.status("waiting for NVIDIA driver")
                    said = True
                self.pause(DRIVER_POLL)

    def write_state(
        self,
        result: RunResult,
        message: str,
        observed: Tuple[GpuState, ...],
        outcome: Optional[engine.Outcome] = None,
        *,
        drift: bool = False,
        error: Optional[BaseException] = None,
    ) -> None:
        driver = engine.driver_of(self.nv) if self.nv is not None else self.driver
        try:
            self.publisher.publish(
                engine.state_document(
                    result,
                    message,
                    observed,
                    cfg=self.cfg,
                    outcome=outcome,
                    driver=driver,
                    drift=drift,
                    error=error,
                ),
            )
        except (OSError, MigrestoreError) as exc:
            self.log.warning("state_file_not_written", path=self.state_path, error=str(exc))

    def observed_now(self) -> Tuple[GpuState, ...]:
        """The GPUs for a failure's state file (in a short session of its own when none
        is open); () when they cannot be read."""
        try:
            with self.session() as nv:
                return nv.observe(devices=False)
        except MigrestoreError:
            return ()

    @contextlib.contextmanager
    def session(self) -> Iterator[Nvml]:
        """NVML for one pass, tick or check, shut down after (rule above). A session
        already open (a caller that opened one) is used and left open.

        Raises:
            DriverUnavailable: NVML cannot be initialised (the driver went away).
        """
        if self.nv is not None:
            yield self.nv
            return
        nv = Nvml(backend.choose(self.simulate))
        nv.open()
        self.nv = nv
        try:
            self.driver = engine.driver_of(nv) or self.driver
            yield nv
        finally:
            self.nv = None
            self.shut(nv)

    def converge(self, decision: Optional[engine.Decision] = None) -> engine.Outcome:
        with self.lock(), self.session():
            return self.converge_locked(decision)

    def converge_locked(
        self, decision: Optional[engine.Decision] = None, *, drift: bool = False
    ) -> engine.Outcome:
        """``converge`` for a caller that holds the GPU lock already."""
        assert self.nv is not None
        outcome = engine.converge(
            self.nv,
            self.cfg,
            log=self.log,
            ctl=self.ctl,
            status=self.notifier.status,
            extend=self.extend,
            decision=decision,
            state_path=self.state_path,
        )
        if outcome.devices_read:
            self.record(outcome, outcome.observed, drift=drift)
        for failure in outcome.hook_failures:
            self.log.error("hook_failed", outcome=failure)
        return outcome

    def record(
        self, outcome: engine.Outcome, observed: Tuple[GpuState, ...], *, drift: bool = False
    ) -> None:
        self.write_state(outcome.result, outcome.summary(), observed, outcome, drift=drift)

    def start(self) -> Optional[int]:
        """Steps 2-4. Returns an exit code on failure, None when READY was sent."""
        self.notifier.status("waiting for NVIDIA driver")
        if self.nv is None:
            # systemd's start timeout covers the bounded driver wait, the lock wait and
            # the reads; every slower step of the pass asks for its own time
            self.extend(self.cfg.driver_wait + TICK_BUDGET)
            # the driver is up once NVML initialises; this session ends at once (the
            # pass opens its own after taking the GPU lock)
            nv = self.wait_for_driver()
            try:
                self.driver = engine.driver_of(nv)
            finally:
                self.shut(nv)
        self.notifier.status("observing GPUs")
        with self.guarded(None), self.lock(), self.session() as nv:
            outcome = self.converge_locked()
            summary = self.summary = outcome.summary()
            self.unrestored = outcome.plan.unrestored
            if outcome.result == RunResult.PARTIAL:
                # READY all the same: the other GPUs are restored; STATUS= names the
                # GPUs that are not, and the watch goes on (a recovered GPU is restored
                # at a later tick)
                self.log.warning("partial", changes=outcome.changes, outcome=summary)
            elif outcome.converged_before:
                self.log.info("converged", outcome=summary)
            else:
                self.log.info("restored", changes=outcome.changes, outcome=summary)
            self.notifier.ready(summary)
            if not outcome.devices_read:
                # Converged: READY went out on the verified geometry; the state file
                # also lists the MIG device UUIDs, read now.
                self.record(outcome, nv.observe())
        return None

    def check(self, reason: str) -> None:
        """One watch tick: observe, plan, restore or report drift. Under the GPU lock:
        the GPUs are not read while another migrestore changes them."""
        with self.lock(), self.session():
            self._check_locked(reason)

    def _check_locked(self, reason: str) -> None:
        assert self.nv is not None
        policy = self.cfg.drift_policy
        restore = reason == "reload" or policy == DriftPolicy.RESTORE
        # One observation, one decision (engine.look): a pass that only reports drift
        # destroys nothing, so processes cannot change its answer.
        decision = engine.look(self.nv, self.cfg, force=not restore)
        if decision.converged and decision.plan.unrestored != self.unrestored:
            # a GPU fell sick (or came back unchanged) since the last pass: say so
            engine.report_unrestored(decision, self.log)
            outcome = engine.Outcome(decision.plan, decision.observed, devices_read=False)
            self.unrestored = decision.plan.unrestored
            self.summary = outcome.summary()
            self.notifier.status(self.summary)
            self.record(outcome, self.nv.observe())
            return
        if decision.converged:
            self.log.debug("watch", reason=reason, outcome="converged")
            # a killed or interrupted 'migrestore apply' may have left clients stopped
            engine.start_left_stopped(self.ctl, self.cfg, self.state_path, self.log)
            # every GPU a rule matches is as declared
            self.publisher.tick(decision.observed, dict.fromkeys(decision.desired))
            return
        drift = render.drift_text(decision.plan.actions)
        if restore:
            if reason == "reload":
                self.backoff.clear()  # SIGHUP: try every GPU again now
            elif self._backed_off(decision):
                return
            if reason != "reload":
                self.log.warning("drift_detected", outcome="restoring", drift=drift)
            try:
                outcome = self.converge_locked(decision, drift=reason != "reload")
            except (ActionFailed, RebootNeeded) as exc:
                self._back_off(exc)
                raise
            for action in decision.plan.actions:
                self.backoff.pop(action.gpu, None)
            self.summary = outcome.summary()
            self.unrestored = outcome.plan.unrestored
            self.log.info("restored", reason=reason, changes=outcome.changes, outcome=self.summary)
            self.notifier.status(self.summary)
        elif policy == DriftPolicy.IGNORE:
            self.log.debug("drift_ignored", drift=drift)
        else:
            self.log.warning(
                "drift_detected", outcome="reported only (drift.policy: warn)", drift=drift
            )
            self.notifier.status(f"drift: {drift}")
            # the state file lists the MIG device UUIDs: read them for it
            self.write_state(RunResult.DRIFT, drift, self.nv.observe())

    def _backed_off(self, decision: engine.Decision) -> bool:
        """True when every GPU the decision would change is backed off (its restore
        failed, its geometry is unchanged since, its retry time not reached): one
        warning per such GPU and tick, nothing changed."""
        gpus = {g.uuid: g for g in decision.observed}
        pending = {a.gpu for a in decision.plan.actions} | set(decision.plan.deferred)
        now = time.monotonic()
        waiting: List[Tuple[GpuState, _Backoff]] = []
        for uuid in sorted(pending):
            entry = self.backoff.get(uuid)
            gpu = gpus.get(uuid)
            if gpu is None or entry is None:
                return False
            if now >= entry.retry_at or _geometry(gpu) != entry.geometry:
                return False
            waiting.append((gpu, entry))
        if not waiting:
            return False
        for gpu, entry in waiting:
            self.log.warning(
                "restore_backed_off",
                gpu=gpu.index,
                error=entry.error,
                left=entry.left,
                outcome=(
                    f"not restoring again for {entry.retry_at - now:.0f}s (or when its "
                    "geometry changes, or on SIGHUP); the client units are left running"
                ),
            )
        self.notifier.status(
            "restore backed off: "
            + "; ".join(f"GPU {gpu.index}: {entry.error}" for gpu, entry in waiting)
        )
        return True

    def _back_off(self, exc: Union[ActionFailed, RebootNeeded]) -> None:
        """Record the GPUs a failed tick's restore could not finish (module docstring)."""
        try:
            observed = {g.uuid: g for g in self.nv.observe(devices=False)} if self.nv else {}
        except MigrestoreError:
            observed = {}
        lefts = dict(zip(exc.failed_gpus, exc.left))
        now = time.monotonic()
        for uuid in exc.held:  # only a held instance: other failures retry next tick
            gpu = observed.get(uuid)
            if gpu is None:
                continue
            previous = self.backoff.get(uuid)
            first = max(BACKOFF_FIRST, 4 * self.cfg.drift_interval)
            delay = min(BACKOFF_MAX, previous.delay * 2) if previous is not None else first
            self.backoff[uuid] = _Backoff(
                _geometry(gpu),
                delay,
                now + delay,
                str(exc).split("; left: ")[0],
                lefts.get(uuid, ""),
            )

    def reload(self) -> None:
        """SIGHUP: load the config again and converge to it. A config that is invalid,
        or infeasible on these GPUs, is reported and the previous one kept."""
        self.notifier.reloading()
        try:
            new = configmod.load(self.config_path, self.select_name)
            with self.lock(), self.session() as nv:
                engine.decide(new, nv.observe(devices=False), force=True)
        except (ConfigError, InfeasibleError) as exc:
            self.log.error(
                "config_reload_failed", error=str(exc), outcome="keeping the previous config"
            )
            self.notifier.ready(f"config reload failed, previous config kept: {exc}")
            return
        except BaseException as exc:
            # the pre-check could not read the GPUs (or the lock wait was cut short):
            # RELOADING=1 is always followed by READY=1, which says what failed
            self.log.error(
                "config_reload_failed", error=str(exc), outcome="keeping the previous config"
            )
            self.notifier.ready(f"config reload failed, previous config kept: {exc}")
            raise
        self.cfg = new
        self.publisher.metrics_path = metrics.textfile_path(new.metrics_textfile, self.simulate)
        self.log.info("config_reloaded", path=self.config_path)
        try:
            self.check("reload")
        except BaseException as exc:
            self.notifier.ready(f"failed: {exc}")
            raise
        self.notifier.ready(f"reloaded: {self.summary}")

    def watch(self, signals: _Signals) -> int:
        interval = self.cfg.drift_interval
        watchdog = self.notifier.watchdog_interval()
        next_check = time.monotonic() + interval
        while True:
            now = time.monotonic()
            timeout = next_check - now
            if watchdog is not None:
                timeout = min(timeout, watchdog)
            signals.wait(timeout)
            if signals.stop:
                self.log.info("stopping", outcome="geometry left as it is")
                self.notifier.stopping()
                return EXIT_OK
            if watchdog is not None:
                self.notifier.watchdog()
            try:
                if signals.reload:
                    signals.reload = False
                    with self.guarded(watchdog):
                        self.reload()
                    interval = self.cfg.drift_interval
                    next_check = time.monotonic() + interval
                elif time.monotonic() >= next_check:
                    with self.guarded(watchdog):
                        self.check("interval")
                    next_check = time.monotonic() + interval
            except Cancelled:
                continue  # SIGTERM while waiting for the GPU lock: the loop stops
            except MigrestoreError as exc:
                # The watcher keeps running: a failed restore is reported and retried at
                # the next interval (the clients it stopped were started again).
                self.log.error("watch_failed", error=str(exc))
                self.notifier.status(f"failed: {exc}")
                self.write_state(RunResult.FAILED, str(exc), self.observed_now(), error=exc)
                next_check = time.monotonic() + interval

    def close(self) -> None:
        """Shut NVML down. A failed shutdown is a warning: the GPUs stay as verified, so
        it never turns a clean exit into a failure."""
        nv, self.nv = self.nv, None
        if nv is not None:
            self.shut(nv)

    def shut(self, nv: Nvml) -> None:
        """Shut one NVML session down (after the driver wait, a pass, a tick, a check, or
        at exit). A failed shutdown is a warning: the GPUs stay as verified, so it never
        turns finished work into a failure."""
        try:
            nv.close()
        except NvmlError as exc:
            self.log.warning("nvml_shutdown_failed", error=str(exc), outcome="nothing lost")


def run(
    *,
    config_path: str,
    select: Optional[str] = None,
    simulate: Optional[str] = None,
    log_format: str = "auto",
    verbose: bool = False,
    once: bool = False,
) -> int:
    """The whole service lifetime; returns the exit code."""
    logs.configure(log_format, "debug" if verbose else "info")
    log = logs.get_logger()
    notifier = Notifier(log)
    notifier.status("loading config")
    try:
        cfg = configmod.load(config_path, select)
    except ConfigError as exc:
        log.error("config_invalid", error=str(exc), outcome="nothing touched")
        notifier.status(f"failed: {exc}")
        return exc.exit_code
    signals = _Signals()
    daemon = Daemon(
        cfg,
        config_path=config_path,
        select_name=select,
        simulate=simulate,
        log=log,
        notifier=notifier,
    )
    daemon.signals = signals
    try:
        try:
            daemon.start()
        except Cancelled:
            log.info("stopping", outcome="stopped while waiting; nothing was changed")
            notifier.stopping()
            return EXIT_OK
        except MigrestoreError as exc:
            log.error("failed", error=str(exc), exit_code=exc.exit_code)
            notifier.status(f"failed: {exc}")
            daemon.write_state(RunResult.FAILED, str(exc), daemon.observed_now(), error=exc)
            return exc.exit_code
        if once:
            return EXIT_PARTIAL if daemon.unrestored else EXIT_OK
        # Start-up is over (cli rule 4): what it built lives to the end, so it moves
        # out of the collector's way, and the long watch collects as usual.
        gc.freeze()
        gc.enable()
        return daemon.watch(signals)
    finally:
        daemon.close()
        signals.close()


__all__: List[str] = ["Daemon", "run"]
