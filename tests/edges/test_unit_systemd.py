"""The unit under a real systemd (Debian 12, systemd-nspawn): the hardening leaves
migrestore what it needs, and the ordering and consumer recipes of docs/SYSTEMD.md
behave as written.

ExecStart is a stand-in that probes its sandbox (files, sockets, ctypes, systemctl),
writes what it found as JSON and sends READY=1; the real daemon under this unit is the
system tier's business (tests/system). Needs root; the rootfs is the system tier's
cached one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Iterator

import pytest

from tests.system import nspawn

pytestmark = pytest.mark.system

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "migrestore.service"

PROBE = r"""#!/usr/bin/python3
# Stand-in for "migrestore daemon": probe the sandbox, report, READY=1, then idle.
import ctypes, json, mmap, os, signal, socket, subprocess, sys, time

found = {}

def probe(name, fn):
    try:
        found[name] = ["ok", fn()]
    except Exception as exc:
        found[name] = [type(exc).__name__, getattr(exc, "errno", None)]

def write(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("x")

for path in ("/run/migrestore.lock", "/run/migrestore/state.json",
             "/var/run/cdi/nvidia.yaml", "/var/lib/migrestore/probe",
             "/dev/nvidia-caps/probe", "/tmp/probe", "/etc/probe", "/usr/probe"):
    probe("write " + path, lambda path=path: write(path))

def callback():
    libc = ctypes.CDLL("libc.so.6")
    cmp = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int))
    values = (ctypes.c_int * 4)(3, 1, 2, 0)
    libc.qsort(values, 4, ctypes.sizeof(ctypes.c_int), cmp(lambda a, b: a[0] - b[0]))
    return list(values)

probe("ctypes callback", callback)
probe("mmap write+exec", lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC) and None)
for family, kind in (("AF_UNIX", socket.SOCK_DGRAM), ("AF_INET", socket.SOCK_DGRAM),
                     ("AF_INET6", socket.SOCK_DGRAM), ("AF_NETLINK", socket.SOCK_RAW)):
    probe("socket " + family, lambda f=family, k=kind: socket.socket(getattr(socket, f), k).close())

def systemctl(*args):
    return subprocess.run(["systemctl", "--no-ask-password", *args], capture_output=True,
                          text=True, timeout=30).stdout.strip()

probe("stop client", lambda: systemctl("stop", "gpu-client.service") or systemctl("is-active", "gpu-client.service"))
probe("start client", lambda: systemctl("start", "--no-block", "gpu-client.service"))
probe("read /proc/driver", lambda: os.path.isdir("/proc/driver"))
found["WATCHDOG_USEC"] = os.environ.get("WATCHDOG_USEC")
with open("/run/probe.json", "w") as f:
    json.dump(found, f)

address = os.environ["NOTIFY_SOCKET"]
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.connect("\0" + address[1:] if address.startswith("@") else address)
sock.send(b"READY=1\nSTATUS=probe done")
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    time.sleep(60)
    sock.send(b"WATCHDOG=1")
"""

SIMPLE = """[Unit]
Description={description}
{deps}
[Service]
ExecStart=/bin/sleep infinity
[Install]
WantedBy=multi-user.target
"""

UNITS = {
    # Listed in migrestore's Before=: ordered after it without doing anything itself.
    "nvidia-dcgm.service": "",
    # Not ordered against migrestore; migrestore stops and starts it.
    "gpu-client.service": "",
    "strict-consumer.service": "Requires=migrestore.service\nAfter=migrestore.service",
    "lenient-consumer.service": "Wants=migrestore.service\nAfter=migrestore.service",
}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[nspawn.Container]:
    reason = nspawn.missing_prerequisite()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("unit-systemd")
    root = nspawn.copy_rootfs(work / "root")
    container = nspawn.Container(root, work)
    container.write("/usr/bin/migrestore", PROBE, mode=0o755)
    container.write("/etc/systemd/system/migrestore.service", UNIT.read_text())
    # Restart sooner than the shipped 30 s so the restart checks stay short.
    container.write(
        "/etc/systemd/system/migrestore.service.d/test.conf", "[Service]\nRestartSec=1\n"
    )
    wants = ["migrestore.service", *UNITS]
    for name, deps in UNITS.items():
        container.write(f"/etc/systemd/system/{name}", SIMPLE.format(description=name, deps=deps))
    for name in wants:
        link = container.root / "etc/systemd/system/multi-user.target.wants" / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(f"/etc/systemd/system/{name}")
    with container:
        container.boot()
        container.wait_unit("migrestore.service", ["active"])
        yield container


def probe_results(node: nspawn.Container) -> Dict[str, list]:  # type: ignore[type-arg]
    # /run is the container's tmpfs: read it from inside.
    return json.loads(node.run(["cat", "/run/probe.json"]).stdout)  # type: ignore[no-any-return]


def test_ready_and_status(node: nspawn.Container) -> None:
    info = node.show("migrestore.service", "ActiveState", "StatusText", "NotifyAccess")
    assert info == {"ActiveState": "active", "StatusText": "probe done", "NotifyAccess": "main"}


def test_the_sandbox_leaves_what_migrestore_needs(node: nspawn.Container) -> None:
    found = probe_results(node)
    for path in (
        "/run/migrestore.lock",
        "/run/migrestore/state.json",
        "/var/run/cdi/nvidia.yaml",
        "/var/lib/migrestore/probe",
        "/dev/nvidia-caps/probe",
        "/tmp/probe",
    ):
        assert found[f"write {path}"][0] == "ok", (path, found[f"write {path}"])
    assert found["ctypes callback"] == ["ok", [0, 1, 2, 3]]
    assert found["socket AF_UNIX"][0] == "ok"
    assert found["stop client"] == ["ok", "inactive"]
    assert found["start client"][0] == "ok"
    assert found["read /proc/driver"] == ["ok", True]
    assert found["WATCHDOG_USEC"] == "300000000"
    # No device filter at all: /dev/nvidia* majors appear only after modules load.
    devices = node.show("migrestore.service", "DevicePolicy", "DeviceAllow")
    assert devices["DevicePolicy"] == "auto"
    assert devices.get("DeviceAllow", "") == ""  # systemctl show omits an empty list


def test_the_sandbox_refuses_the_rest(node: nspawn.Container) -> None:
    found = probe_results(node)
    assert found["write /etc/probe"] == ["OSError", 30]  # EROFS
    assert found["write /usr/probe"] == ["OSError", 30]
    assert found["mmap write+exec"] == ["PermissionError", 1]
    for family in ("AF_INET", "AF_INET6", "AF_NETLINK"):
        assert found[f"socket {family}"] == ["OSError", 97], family  # EAFNOSUPPORT


def test_consumers_start_after_ready(node: nspawn.Container) -> None:
    ready = int(
        node.show("migrestore.service", "ActiveEnterTimestampMonotonic")[
            "ActiveEnterTimestampMonotonic"
        ]
    )
    for unit in ("nvidia-dcgm.service", "strict-consumer.service", "lenient-consumer.service"):
        started = int(
            node.show(unit, "InactiveExitTimestampMonotonic")["InactiveExitTimestampMonotonic"]
        )
        assert started >= ready, f"{unit} started before migrestore was ready"


def test_a_drop_in_adds_address_families(node: nspawn.Container) -> None:
    node.write(
        "/etc/systemd/system/migrestore.service.d/net.conf",
        "[Service]\nRestrictAddressFamilies=AF_INET AF_INET6\n",
    )
    try:
        node.run(["systemctl", "daemon-reload"])
        families = node.show("migrestore.service", "RestrictAddressFamilies")
        assert families == {"RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX"}
    finally:
        node.run(["rm", "/etc/systemd/system/migrestore.service.d/net.conf"])
        node.run(["systemctl", "daemon-reload"])


def test_a_crash_restarts_migrestore_and_its_strict_consumers(node: nspawn.Container) -> None:
    before = {
        u: node.show(u, "InvocationID")["InvocationID"]
        for u in ("strict-consumer.service", "lenient-consumer.service")
    }
    restarts = int(node.show("migrestore.service", "NRestarts")["NRestarts"])
    node.run(["systemctl", "kill", "-s", "KILL", "migrestore.service"])

    def restarted() -> object:
        info = node.show("migrestore.service", "NRestarts", "ActiveState")
        return (
            True if int(info["NRestarts"]) > restarts and info["ActiveState"] == "active" else None
        )

    nspawn.wait_for("migrestore to restart", restarted, 60)
    node.wait_unit("strict-consumer.service", ["active"])
    after = {u: node.show(u, "InvocationID")["InvocationID"] for u in before}
    # Requires= propagates the automatic restart; Wants= does not.
    assert after["strict-consumer.service"] != before["strict-consumer.service"]
    assert after["lenient-consumer.service"] == before["lenient-consumer.service"]


def test_the_kill_switch_skips_without_failing_strict_consumers(node: nspawn.Container) -> None:
    node.run(["systemctl", "stop", "strict-consumer.service", "migrestore.service"])
    node.write("/etc/migrestore.disabled", "")
    try:
        node.run(["systemctl", "start", "strict-consumer.service"])
        info = node.show("migrestore.service", "ActiveState", "ConditionResult")
        assert info == {"ActiveState": "inactive", "ConditionResult": "no"}
        assert node.show("strict-consumer.service", "ActiveState")["ActiveState"] == "active"
    finally:
        node.run(["rm", "-f", "/etc/migrestore.disabled"])


def test_exit_78_does_not_restart_and_holds_strict_consumers(node: nspawn.Container) -> None:
    node.run(["systemctl", "stop", "strict-consumer.service", "migrestore.service"])
    node.write(
        "/etc/systemd/system/migrestore.service.d/fail.conf",
        '[Service]\nExecStart=\nExecStart=/bin/sh -c "exit 78"\n',
    )
    try:
        node.run(["systemctl", "daemon-reload"])
        node.run(["systemctl", "reset-failed", "migrestore.service"])
        proc = node.run(["systemctl", "start", "strict-consumer.service"], check=False)
        assert proc.returncode != 0
        info = node.show("migrestore.service", "ActiveState", "ExecMainStatus", "NRestarts")
        assert info == {"ActiveState": "failed", "ExecMainStatus": "78", "NRestarts": "0"}
        assert node.show("strict-consumer.service", "ActiveState")["ActiveState"] == "inactive"
    finally:
        node.run(["rm", "/etc/systemd/system/migrestore.service.d/fail.conf"])
        node.run(["systemctl", "daemon-reload"])
