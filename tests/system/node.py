"""A GPU node for the system tier: the built .deb in a Debian rootfs, simulated GPUs, and
stand-ins for the units migrestore must come before.

Rules:

1. The node is set up the way docs/INSTALL.md tells an operator to run the packaged
   service on simulated GPUs: ``dpkg -i``, ``migrestore-sim init``, and a drop-in that sets
   ``MIGRESTORE_SIMULATE``. Nothing of the package is patched.
2. The stand-ins do not order themselves after migrestore: the ordering under test is the
   one the shipped unit declares. containerd and kubelet record when they started;
   nvidia-dcgm holds simulated GPU 0 while it runs, so a change to GPU 0 can only
   succeed if migrestore stopped it first.
3. Geometry is read with ``migrestore status --json`` inside the node and compared as
   (MIG mode, [(GI profile, start, size)]) per GPU index.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from tests.system.nspawn import SUITE, Container, copy_rootfs, wait_for

SIM_DIR = "/var/lib/migrestore-sim"
SIM_STATE = f"{SIM_DIR}/gpus.json"
SIM_GPUS = "h100-80gb-hbm3:2"
DROP_IN = "/etc/systemd/system/migrestore.service.d/sim.conf"
CONFIG = "/etc/migrestore.yaml"
PKG_DIR = "/var/tmp/migrestore-packages"
UNIT = "migrestore.service"
RUNTIMES = ("containerd.service", "kubelet.service")
DCGM = "nvidia-dcgm.service"

Geometry = Dict[int, Tuple[bool, Tuple[Tuple[str, int, int], ...]]]

SIM_DROP_IN = f"""\
# Written by the system tests, as docs/INSTALL.md shows: run the packaged service on
# simulated GPUs (a state file made by migrestore-sim init).
[Service]
Environment=MIGRESTORE_SIMULATE={SIM_STATE}
ReadWritePaths={SIM_DIR}
# Inside systemd-nspawn only: the service's own mount namespace for
# ProtectControlGroups= drops nspawn's per-container boot id, so the service would see
# the host's and miss every container reboot that the simulator keys on.
ProtectControlGroups=no
"""

RUNTIME_UNIT = """\
[Unit]
Description=Stand-in for {name}: records when it started

[Service]
ExecStart=/bin/sh -c 'date +%%s.%%N >> /var/log/started-{name}; exec sleep infinity'

[Install]
WantedBy=multi-user.target
"""

DCGM_UNIT = f"""\
[Unit]
Description=Stand-in for DCGM: holds simulated GPU 0 while it runs

[Service]
ExecStartPre=/bin/sh -c 'date +%%s.%%N >> /var/log/started-nvidia-dcgm'
ExecStart=/usr/bin/migrestore-sim hold {SIM_STATE} --gpu 0
ExecStopPost=/bin/sh -c 'date +%%s.%%N >> /var/log/stopped-nvidia-dcgm'

[Install]
WantedBy=multi-user.target
"""


def config(instances: str, clients: str = "[nvidia-dcgm.service]") -> str:
    """A config that gives every GPU ``instances`` (a YAML flow list)."""
    return (
        "version: 1\n"
        f"clients: {clients}\n"
        "gpus:\n"
        "  - match: all\n"
        "    mig: true\n"
        f"    instances: {instances}\n"
    )


# Three layouts of an H100 80GB (memory slices 0-7), each different from the others on
# every GI, so a change between any two of them destroys and creates on both GPUs.
LAYOUT_A = config(
    "[{profile: 3g.40gb, placement: 4}, {profile: 1g.10gb, placement: 0},"
    " {profile: 1g.10gb, placement: 1}]"
)
GEOMETRY_A = (("1g.10gb", 0, 1), ("1g.10gb", 1, 1), ("3g.40gb", 4, 4))
LAYOUT_B = config("[{profile: 4g.40gb, placement: 0}, {profile: 2g.20gb, placement: 4}]")
GEOMETRY_B = (("2g.20gb", 4, 2), ("4g.40gb", 0, 4))
LAYOUT_C = config("[{profile: 7g.80gb}]")
GEOMETRY_C = (("7g.80gb", 0, 8),)


def new_node(workdir: Path, suite: str = SUITE, nspawn_args: Sequence[str] = ()) -> Container:
    """A node on a fresh copy of the pristine rootfs of ``suite`` under ``workdir``."""
    copy_rootfs(workdir / "root", suite)
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    return Container(workdir / "root", logs, nspawn_args)


def lines(node: Container, path: str) -> int:
    """How many lines a stand-in's record file has (0 when it does not exist yet)."""
    return node.read(path).count("\n") if node.exists(path) else 0


def install_package(node: Container, deb: Path, booted: bool) -> str:
    """Copy the .deb into the node and ``dpkg -i`` it; returns dpkg's output."""
    target = node.root / PKG_DIR.lstrip("/") / deb.name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(deb.read_bytes())
    argv = ["dpkg", "-i", f"{PKG_DIR}/{deb.name}"]
    proc = node.run(argv) if booted else node.setup(argv)
    return proc.stdout + proc.stderr


def provision(node: Container, deb: Path, layout: str, gpus: str = SIM_GPUS) -> None:
    """Install the package, simulated ``gpus``, the drop-in, the stand-ins and ``layout``."""
    install_package(node, deb, booted=False)
    node.setup(["mkdir", "-p", SIM_DIR])
    node.setup(["migrestore-sim", "init", SIM_STATE, gpus])
    node.write(DROP_IN, SIM_DROP_IN)
    for name in ("containerd", "kubelet"):
        node.write(f"/etc/systemd/system/{name}.service", RUNTIME_UNIT.format(name=name))
    node.write(f"/etc/systemd/system/{DCGM}", DCGM_UNIT)
    node.setup(["systemctl", "enable", *RUNTIMES, DCGM])
    node.write(CONFIG, layout)


def geometry(node: Container) -> Geometry:
    """MIG mode and GIs of every simulated GPU, as ``migrestore status --json`` reports."""
    out = node.run(
        ["migrestore", "status", "--json"], env={"MIGRESTORE_SIMULATE": SIM_STATE}
    ).stdout
    result: Geometry = {}
    for gpu in json.loads(out)["gpus"]:
        gis = tuple(
            sorted(
                (gi["profile"], gi["placement"][0], gi["placement"][1]) for gi in gpu["instances"]
            )
        )
        result[int(gpu["index"])] = (bool(gpu["mig"]["current"]), gis)
    return result


def declared(gis: Tuple[Tuple[str, int, int], ...]) -> Geometry:
    """What ``geometry`` returns when both simulated GPUs have ``gis`` with MIG on."""
    return {0: (True, tuple(sorted(gis))), 1: (True, tuple(sorted(gis)))}


def wait_geometry(node: Container, expected: Geometry, timeout: float = 60.0) -> Geometry:
    last: List[Geometry] = []

    def probe() -> Optional[Geometry]:
        seen = geometry(node)
        last[:] = [seen]
        return seen if seen == expected else None

    try:
        return wait_for("the declared geometry", probe, timeout)
    except Exception as exc:
        raise AssertionError(
            f"{exc}: expected {expected}, last seen {last[0] if last else 'nothing'}; "
            f"journal:\n{node.journal(UNIT)}"
        ) from exc


def monotonic_usec(node: Container, unit: str, prop: str) -> int:
    value = int(node.show(unit, prop)[prop])
    assert value > 0, f"{unit} has no {prop} (it never got there)"
    return value


def bump(version: str) -> str:
    """The next patch version: 0.1.0 -> 0.1.1 (what an upgrade test installs)."""
    head, _, last = version.rpartition(".")
    return f"{head}.{int(last) + 1}" if head else str(int(last) + 1)
