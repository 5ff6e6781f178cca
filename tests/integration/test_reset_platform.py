"""The platform around an Ampere reset (issue 12 items 4 and 5), through the command
line on simulated GPUs: a passthrough GPU in a VM and a loaded nvidia_drm end with one
``reboot_needed`` line per GPU and exit 77 (the unit does not restart on it) while the
other GPUs are restored; a DGX A100-like node (8 A100-SXM4 on one NVSwitch fabric)
resets one GPU alone while Fabric Manager runs, the whole group in one command when it
does not and the config manages every GPU of it, and otherwise fails naming the peers;
Fabric Manager's unit is only ever read."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from migrestore import simulator
from migrestore.errors import EXIT_OK, EXIT_REBOOT
from tests.edges.systemctl_fake import FakeSystemctl
from tests.integration.cli_util import layout_of, run, sim, sim_show, write
from tests.integration.daemon_util import Node

A100_80 = """\
version: 1
clients: []
gpus:
  - match: all
    mig: true
    instances:
      - {profile: 3g.40gb, placement: 4}
      - {profile: 2g.20gb, placement: 0}
"""
A100_80_RESTORED = [("2g.20gb", (0, 2)), ("3g.40gb", (4, 4))]
H100_RESTORED = A100_80_RESTORED

DGX_LAYOUT = """\
version: 1
clients: []
gpus:
  - match: {match}
    mig: true
    instances:
      - {{profile: 3g.20gb, placement: 4}}
      - {{profile: 2g.10gb, placement: 0}}
"""
DGX_RESTORED = [("2g.10gb", (0, 2)), ("3g.20gb", (4, 4))]
DGX_BUSES = [f"00000000:{b}:00.0" for b in ("18", "2A", "3A", "5D", "9A", "AB", "BA", "DB")]
FM = "nvidia-fabricmanager.service"
ADVICE = "reboot the node (or reset the GPU from the host)"


def lines(text: str, event: str) -> List[str]:
    return [line for line in text.splitlines() if event in line]


def error_lines(text: str) -> List[str]:
    return [line for line in text.splitlines() if line.startswith("migrestore: error: ")]


def resets(state: str) -> List[int]:
    """The GPUs the simulator reset, one entry per GPU reset."""
    return [c["gpu"] for c in simulator.Simulator(state).changes() if c["function"] == "gpu_reset"]


def mig(capsys: pytest.CaptureFixture[str], state: str, gpu: int) -> Dict[str, bool]:
    g = sim_show(capsys, state)["gpus"][gpu]
    return {"current": g["mig_current"], "pending": g["mig_pending"]}


# --------------------------------------------------------------------------- item 4


@pytest.mark.parametrize("status", ["NVML_ERROR_NOT_SUPPORTED", "NVML_ERROR_RESET_REQUIRED"])
def test_a_passthrough_a100_needs_a_reboot_and_the_other_gpu_is_restored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], status: str
) -> None:
    """A VM with two passthrough A100s: GPU 1 had MIG enabled before the VM's last
    reboot, GPU 0 gets its first enable now, which the platform cannot activate."""
    state = str(tmp_path / "vm.json")
    assert sim(capsys, "init", state, "a100-80gb:2", "--passthrough").code == 0
    assert sim(capsys, "passthrough", state, "--gpu", "0", "--status", status).code == 0
    assert sim(capsys, "set-mode", state, "--gpu", "1", "on").code == 0
    assert sim(capsys, "reboot", state).code == 0
    cfg = write(tmp_path / "node.yaml", A100_80)

    applied = run(capsys, "--simulate", state, "-c", cfg, "apply", "--no-clients")
    assert applied.code == EXIT_REBOOT == 77, applied.err
    said = lines(applied.err, "reboot_needed")
    assert len(said) == 1, applied.err
    assert "gpu=0" in said[0] and "pci_bus_id=00000000:18:00.0" in said[0]
    assert status in said[0] and ADVICE in said[0] and "passthrough" in said[0]
    errors = error_lines(applied.err)
    assert len(errors) == 1 and ADVICE in errors[0] and "00000000:18:00.0" in errors[0]
    # no reset was tried: the platform said it cannot
    assert resets(state) == []
    assert mig(capsys, state, 0) == {"current": False, "pending": True}
    status_now = run(capsys, "--simulate", state, "status", "--json").json()
    assert layout_of(status_now, 1) == A100_80_RESTORED

    # the reboot the message asks for applies the pending mode; the next run restores
    assert sim(capsys, "reboot", state).code == 0
    again = run(capsys, "--simulate", state, "-c", cfg, "apply", "--no-clients")
    assert again.code == EXIT_OK, again.err
    status_now = run(capsys, "--simulate", state, "status", "--json").json()
    assert layout_of(status_now, 0) == A100_80_RESTORED
    assert layout_of(status_now, 1) == A100_80_RESTORED


def test_a_loaded_nvidia_drm_is_named_as_the_cause(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = str(tmp_path / "node.json")
    assert sim(capsys, "init", state, "a100-80gb:1,h100-80gb-hbm3:1").code == 0
    assert sim(capsys, "module", state, "load", "nvidia_drm").code == 0
    cfg = write(tmp_path / "node.yaml", A100_80)

    applied = run(capsys, "--simulate", state, "-c", cfg, "apply", "--no-clients")
    assert applied.code == EXIT_REBOOT, applied.err
    said = lines(applied.err, "reboot_needed")
    assert len(said) == 1 and "gpu=0" in said[0], applied.err
    assert "nvidia_drm" in said[0] and "NVML_ERROR_IN_USE" in said[0]
    assert "modprobe -r nvidia_drm" in said[0]
    assert mig(capsys, state, 0) == {"current": False, "pending": True}
    status_now = run(capsys, "--simulate", state, "status", "--json").json()
    assert layout_of(status_now, 1) == H100_RESTORED  # the Hopper GPU needs no reset

    assert sim(capsys, "module", state, "unload", "nvidia_drm").code == 0
    again = run(capsys, "--simulate", state, "-c", cfg, "apply", "--no-clients")
    assert again.code == EXIT_OK, again.err
    assert resets(state) == [0]
    status_now = run(capsys, "--simulate", state, "status", "--json").json()
    assert layout_of(status_now, 0) == A100_80_RESTORED


# --------------------------------------------------------------------------- item 5


@pytest.fixture
def dgx(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> tuple[str, FakeSystemctl]:
    """A DGX A100-like node: 8 A100-SXM4-40GB on one NVSwitch fabric, Fabric Manager's
    unit in a systemctl stand-in."""
    state = str(tmp_path / "dgx.json")
    assert sim(capsys, "init", state, "--nvswitch", "a100-sxm4-40gb:8").code == 0
    fake = FakeSystemctl(tmp_path / "systemctl")
    for key, value in fake.env().items():
        monkeypatch.setenv(key, value)
    return state, fake


def fabric_manager(
    capsys: pytest.CaptureFixture[str], state: str, fake: FakeSystemctl, up: bool
) -> None:
    """Fabric Manager running or not: its unit (what migrestore reads) and the process
    the reset depends on (what the simulated nvidia-smi sees)."""
    fake.add(FM, "active" if up else "failed")
    assert sim(capsys, "fabric-manager", state, "start" if up else "stop").code == 0


def fm_untouched(fake: FakeSystemctl) -> None:
    """Fabric Manager's unit was read and never stopped, restarted or started."""
    calls = [c for c in fake.calls() if FM in c]
    assert calls and all(c.split()[-2] == "is-active" for c in calls), calls


def test_dgx_with_fabric_manager_up_resets_one_gpu_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dgx: tuple[str, FakeSystemctl]
) -> None:
    state, fake = dgx
    fabric_manager(capsys, state, fake, up=True)
    # GPU 0's enable stayed pending (a client held it then): it needs our reset
    node = simulator.Simulator(state)
    node.hold(0)
    assert node.set_mode(0, True) == "NVML_ERROR_IN_USE"
    node.release(0)
    cfg = write(tmp_path / "node.yaml", DGX_LAYOUT.format(match="all"))

    applied = run(capsys, "--simulate", state, "-c", cfg, "apply")
    assert applied.code == EXIT_OK, applied.err
    assert resets(state) == [0]  # GPU 0 alone; the others activated in the driver
    assert lines(applied.err, "group_reset") == []
    status_now = run(capsys, "--simulate", state, "status", "--json").json()
    for gpu in range(8):
        assert layout_of(status_now, gpu) == DGX_RESTORED
    fm_untouched(fake)


def test_dgx_with_fabric_manager_down_resets_the_whole_group_in_one_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dgx: tuple[str, FakeSystemctl]
) -> None:
    state, fake = dgx
    fabric_manager(capsys, state, fake, up=False)
    cfg = write(tmp_path / "node.yaml", DGX_LAYOUT.format(match="all"))

    applied = run(capsys, "--simulate", state, "-c", cfg, "apply")
    assert applied.code == EXIT_OK, applied.err
    group = lines(applied.err, "group_reset")
    assert len(group) == 1 and "outcome=ok" in group[0] and "fabric_manager=failed" in group[0]
    assert sorted(resets(state)) == list(range(8))  # each GPU once, in one command
    status_now = run(capsys, "--simulate", state, "status", "--json").json()
    for gpu in range(8):
        assert layout_of(status_now, gpu) == DGX_RESTORED
    fm_untouched(fake)
    assert fake.state(FM) == "failed"


def test_dgx_with_fabric_manager_down_fails_naming_the_peers_it_may_not_reset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dgx: tuple[str, FakeSystemctl]
) -> None:
    """The config manages GPUs 0-3 only: GPUs 4-7 are not ours to reset."""
    state, fake = dgx
    fabric_manager(capsys, state, fake, up=False)
    cfg = write(tmp_path / "node.yaml", DGX_LAYOUT.format(match="{index: [0, 1, 2, 3]}"))

    applied = run(capsys, "--simulate", state, "-c", cfg, "apply")
    assert applied.code == EXIT_REBOOT, applied.err
    said = lines(applied.err, "reboot_needed")
    assert [s.split("gpu=")[1].split()[0] for s in said] == ["0", "1", "2", "3"], applied.err
    for line in said:
        assert "Fabric Manager" in line and "FABRIC_MANAGER_NOT_RUNNING" in line
        assert f"GPU 4 ({DGX_BUSES[4]})" in line and f"GPU 7 ({DGX_BUSES[7]})" in line
        assert "no rule of the config manages" in line
        assert f"start {FM}" in line
    assert resets(state) == []
    assert all(mig(capsys, state, gpu) == {"current": False, "pending": True} for gpu in range(4))
    fm_untouched(fake)


def test_dgx_group_reset_blocked_by_nvidia_drm_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dgx: tuple[str, FakeSystemctl]
) -> None:
    state, fake = dgx
    fabric_manager(capsys, state, fake, up=False)
    assert sim(capsys, "module", state, "load", "nvidia_drm").code == 0
    cfg = write(tmp_path / "node.yaml", DGX_LAYOUT.format(match="all"))

    applied = run(capsys, "--simulate", state, "-c", cfg, "apply")
    assert applied.code == EXIT_REBOOT, applied.err
    group = lines(applied.err, "group_reset")
    assert len(group) == 1 and "outcome=failed" in group[0], applied.err
    errors = error_lines(applied.err)
    assert len(errors) == 1, applied.err
    assert errors[0].startswith(f"migrestore: error: GPU 0 ({DGX_BUSES[0]}), 1 ({DGX_BUSES[1]})")
    assert "nvidia_drm" in errors[0] and ",".join(DGX_BUSES) in errors[0]
    assert resets(state) == []
    fm_untouched(fake)


# --------------------------------------------------------------------------- the watch

DAEMON = """\
version: 1
clients: [nvidia-dcgm.service]
drift: {policy: restore, interval: 1}
gpus:
  - match: all
    mig: true
    instances:
      - {profile: 3g.40gb, placement: 4}
      - {profile: 2g.20gb, placement: 0}
"""


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[Node]:
    """A VM with one passthrough A100 whose MIG mode is on (enabled before its last
    reboot); the platform refuses its resets."""
    node = Node(tmp_path, "a100-80gb:1")
    node.sim("set-mode", node.state, "--gpu", "0", "on")
    node.sim("reboot", node.state)
    node.sim("passthrough", node.state, "--gpu", "0", "--status", "NVML_ERROR_RESET_REQUIRED")
    yield node
    node.cleanup()


def test_the_daemon_backs_off_a_gpu_that_needs_a_reboot(vm: Node) -> None:
    """Drift only a reboot can restore (MIG mode lost on a passthrough GPU) is tried once:
    the client unit is stopped and started once, not at every tick."""
    vm.write_config(DAEMON)
    vm.units.add("nvidia-dcgm.service")
    vm.start_daemon()
    vm.notify.wait_for("READY=1")
    assert vm.geometry(0) == A100_80_RESTORED
    calls = len(vm.units.calls())
    # behind the daemon's back, under the GPU lock (no tick in between): MIG is turned
    # off and the VM's host resets the GPU; the guest now sees MIG off, pending off
    with vm.gpu_lock():
        vm.sim("passthrough", vm.state, "--gpu", "0", "--off")
        vm.sim("reset", vm.state, "--gpu", "0")  # the instances go
        vm.sim("set-mode", vm.state, "--gpu", "0", "off")
        vm.sim("reset", vm.state, "--gpu", "0")
        vm.sim("passthrough", vm.state, "--gpu", "0", "--status", "NVML_ERROR_RESET_REQUIRED")
    # the first tick's restore needs a reboot; later ticks back off and say so
    failed = vm.notify.wait_for("STATUS=failed:")
    assert ADVICE in failed, failed
    vm.wait_backed_off(3)
    stops = [c for c in vm.units.calls()[calls:] if "stop nvidia-dcgm.service" in c]
    assert len(stops) == 1, vm.units.calls()[calls:]  # bounced once, not every tick
    assert vm.units.state("nvidia-dcgm.service") == "active"
    code, err = vm.stop_daemon()
    assert code == 0, err
    assert len(lines(err, "reboot_needed")) == 1, err
    backed = lines(err, "restore_backed_off")
    assert len(backed) >= 3 and all("gpu=0" in ln and ADVICE in ln for ln in backed), backed
