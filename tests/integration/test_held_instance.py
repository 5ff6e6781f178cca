"""Destroys that fail half-way (issue 12 item 8): DCGM or a leaked handle holds an
instance that no process query lists (``migrestore-sim hold --gi``), so its destroy
answers IN_USE after other destroys ran. The destroys are cut into independent steps,
so the failure leaves as much of the declared geometry as can be made, and what is left
is reported; the watching daemon does not stop and start the client units on every
drift tick for an instance it cannot destroy (it backs off, one warning per tick)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from migrestore.errors import EXIT_FAILED, EXIT_OK
from tests.integration.cli_util import layout_of, run, sim, sim_show, write
from tests.integration.daemon_util import Node, sim_argv

BEFORE = """\
version: 1
clients: []
gpus:
  - match: all
    mig: true
    instances:
      - {profile: 3g.40gb, placement: 0}
      - {profile: 2g.20gb, placement: 4}
      - {profile: 1g.10gb, placement: 6}
"""
AFTER = """\
version: 1
clients: []
gpus:
  - match: all
    mig: true
    instances:
      - {profile: 1g.10gb, count: 7, placement: [0, 1, 2, 3, 4, 5, 6]}
"""
IN_USE = "NVML_ERROR_IN_USE"


def _hold(state: str, gpu: int, gi: int, env: Dict[str, str]) -> subprocess.Popen[str]:
    """A hidden holder of GI ``gi`` (a leaked handle) until killed; returns once held."""
    proc = subprocess.Popen(
        sim_argv("hold", state, "--gpu", str(gpu), "--gi", str(gi)),
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # printed once the holder is registered
    assert line.startswith("holding GI"), line
    return proc


def _gi_id(gis: List[dict], start: int) -> int:  # type: ignore[type-arg]
    return int(next(gi["id"] for gi in gis if gi["start"] == start))


@pytest.fixture
def held(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[tuple]:  # type: ignore[type-arg]
    state = str(tmp_path / "gpus.json")
    assert sim(capsys, "init", state, "h100-80gb-hbm3:1").code == 0
    before = write(tmp_path / "before.yaml", BEFORE)
    assert run(capsys, "--simulate", state, "-c", before, "apply", "--no-clients").code == 0
    gi = _gi_id(sim_show(capsys, state)["gpus"][0]["gis"], 0)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    holder = _hold(state, 0, gi, env)
    try:
        yield state, holder
    finally:
        holder.kill()
        holder.wait()


def test_a_destroy_failing_half_way_leaves_the_most_declared_geometry(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    held: tuple,  # type: ignore[type-arg]
) -> None:
    state, holder = held
    after = write(tmp_path / "after.yaml", AFTER)
    applied = run(capsys, "--simulate", state, "-c", after, "apply", "--no-clients")
    assert applied.code == EXIT_FAILED, applied.err
    lines = applied.err.splitlines()
    # the failed destroy: GPU, profile, placement, NVML error
    (failed,) = [ln for ln in lines if "destroy_gi" in ln and "outcome=failed" in ln]
    assert "gpu=0" in failed and "profile=3g.40gb" in failed and "placement=0:4" in failed
    assert f"nvml_error={IN_USE}" in failed
    # the other steps ran: the 2g.20gb made room for two declared 1g.10gb, the
    # declared 1g.10gb at 6 was never touched
    status = run(capsys, "--simulate", state, "status", "--json").json()
    assert layout_of(status, 0) == [
        ("3g.40gb", (0, 4)),
        ("1g.10gb", (4, 1)),
        ("1g.10gb", (5, 1)),
        ("1g.10gb", (6, 1)),
    ]
    gis = status["gpus"][0]["instances"]
    assert [len(gi["compute"]) for gi in gis] == [0, 1, 1, 1]
    # what is left: one line for the GPU, and the same in the error and the state file
    (left,) = [ln for ln in lines if ln.startswith("<3>left ")]
    assert "gpu=0" in left and "3 of 7 declared GPU instances in place" in left
    assert "still there: GI" in left and "(3g.40gb at 0:4)" in left
    assert "not made: 1g.10gb at 0:1, 1g.10gb at 1:1, 1g.10gb at 2:1, 1g.10gb at 3:1" in left
    with open(os.environ["MIGRESTORE_STATE"], encoding="utf-8") as f:
        doc = json.load(f)
    assert doc["result"] == "failed" and doc["nvml_error"] == IN_USE
    assert "3g.40gb at 0:4" in doc["message"] and "3 of 7 declared" in doc["message"]
    text = run(capsys, "--simulate", state, "status")
    assert "3 of 7 declared GPU instances in place" in text.out

    # the holder goes (DCGM restarted): the next apply finishes the job
    holder.kill()
    holder.wait()
    again = run(capsys, "--simulate", state, "-c", after, "apply", "--no-clients")
    assert again.code == EXIT_OK, again.err
    status = run(capsys, "--simulate", state, "status", "--json").json()
    assert layout_of(status, 0) == [("1g.10gb", (i, 1)) for i in range(7)]


DAEMON = """\
version: 1
clients: [nvidia-dcgm.service]
drift: {policy: restore, interval: 1}
gpus:
  - match: all
    mig: true
    instances:
      - {profile: 3g.40gb, placement: 0}
      - {profile: 1g.10gb, placement: 4}
"""


@pytest.fixture
def hopper(tmp_path: Path) -> Iterator[Node]:
    node = Node(tmp_path, "h100-80gb-hbm3:1")
    yield node
    node.cleanup()


def test_the_daemon_backs_off_an_instance_it_cannot_destroy(hopper: Node) -> None:
    hopper.write_config(DAEMON)
    hopper.units.add("nvidia-dcgm.service")
    hopper.start_daemon()
    hopper.notify.wait_for("READY=1")  # the start applied the layout: one stop already
    calls = len(hopper.units.calls())
    # drift behind the daemon's back: a GI in the free slices, held by a leaked handle;
    # made under the GPU lock, so no tick restores it before it is held
    with hopper.gpu_lock():
        hopper.sim(
            "create-gi", hopper.state, "--gpu", "0", "--profile", "1g.10gb", "--placement", "5"
        )
        gi = _gi_id(hopper.show()["gpus"][0]["gis"], 5)
        holder = _hold(hopper.state, 0, gi, hopper.env)
    try:
        # the first tick's restore fails IN_USE; later ticks back off and say so
        hopper.notify.wait_for("STATUS=failed:")
        hopper.wait_backed_off(3)
        stops = [c for c in hopper.units.calls()[calls:] if "stop nvidia-dcgm.service" in c]
        assert len(stops) == 1, hopper.units.calls()  # bounced once, not every tick
        assert hopper.units.state("nvidia-dcgm.service") == "active"
        assert hopper.geometry(0) == [("3g.40gb", (0, 4)), ("1g.10gb", (4, 1)), ("1g.10gb", (5, 1))]

        # the holder goes; SIGHUP retries at once and restores
        holder.kill()
        holder.wait()
        assert hopper.daemon is not None
        hopper.daemon.send_signal(1)  # SIGHUP
        hopper.wait_until(
            lambda: hopper.geometry(0) == [("3g.40gb", (0, 4)), ("1g.10gb", (4, 1))],
            what="drift restored after SIGHUP",
        )
    finally:
        holder.kill()
        holder.wait()
    code, err = hopper.stop_daemon()
    assert code == 0, err
    backed = [ln for ln in err.splitlines() if "restore_backed_off" in ln]
    statuses = [m for m in hopper.notify.fields("STATUS") if m.startswith("restore backed off")]
    assert len(backed) == len(statuses) >= 3  # one warning per tick
    assert all("gpu=0" in ln and IN_USE in ln for ln in backed)
    assert all("1g.10gb at 5:1" in ln for ln in backed)
