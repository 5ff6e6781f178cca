"""Nodes for the Ansible tests: booted Debian containers with the .deb, simulated GPUs and
Debian's openssh-server, each in a network namespace of its own, reached over SSH.

Rules:

1. Each node is a network namespace made here (``ip netns add``) joined to this machine by
   a veth pair on a private subnet (10.231.N.0/24) that nothing else uses; the node's
   container (systemd-nspawn, ``--network-namespace-path=``) sees only that link. No other
   address is ever targeted.
2. Each node runs the packaged service under a real systemd (tests/system/node.py: the
   .deb, the simulated-GPU drop-in, the DCGM stand-in) and Debian's sshd with a config
   written here: its own host key made here, key-only auth as root, the one client key.
   The controller trusts exactly those host keys (StrictHostKeyChecking=yes).
3. Ansible is the real ``ansible-playbook`` (ansible-core from PyPI) with a private,
   fixed environment: no user config, no color, its own temp and control-socket dirs.
4. ``Fleet`` is a context manager: containers are powered off, then the namespaces and
   links deleted, also when a test fails; only what this module made is touched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Dict, List, Mapping, Optional, Sequence, Type

from tests.system import node as n
from tests.system import nspawn
from tests.system.nspawn import Container

REPO = Path(__file__).resolve().parents[2]
ROLES = REPO / "contrib" / "ansible" / "roles"
SITE = REPO / "contrib" / "ansible" / "site.yml"
SUBNET = "10.231"
SHIPPED_CONFIG = (REPO / "etc" / "migrestore.yaml").read_text()
SSHD_CONFIG = """\
# Written by tests/fleet: key-only root login for the test controller.
ListenAddress {address}
HostKey /etc/ssh/test_host_ed25519_key
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile /etc/ssh/test_authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
X11Forwarding no
Subsystem sftp internal-sftp
"""
RECAP = re.compile(
    r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+"
    r"unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)",
    re.MULTILINE,
)


def missing_prerequisite() -> Optional[str]:
    """Why the fleet tests cannot run here, or None."""
    reason = nspawn.missing_prerequisite()
    if reason:
        return reason
    for tool, package in (
        ("ip", "iproute2"),
        ("ssh", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
    ):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install {package})"
    if not ansible_playbook().is_file():
        return "ansible-playbook is not installed (pip install ansible-core)"
    return None


def ansible_playbook() -> Path:
    """The ansible-playbook installed for this Python (pip install ansible-core)."""
    beside = Path(sys.executable).parent / "ansible-playbook"
    if beside.is_file():
        return beside
    found = shutil.which("ansible-playbook")
    return Path(found) if found else beside


def host(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, env=nspawn.ENV)
    if proc.returncode != 0:
        raise nspawn.SystemTestError(
            f"{' '.join(argv)} exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()}"
        )
    return proc


@dataclass
class Node:
    name: str
    index: int
    gpus: str
    container: Container
    netns: str = ""
    link: str = ""
    host_key: str = field(default="", repr=False)

    @property
    def address(self) -> str:
        return f"{SUBNET}.{self.index}.2"


@dataclass
class Run:
    """One ansible-playbook run: exit status, output, and the PLAY RECAP per host."""

    returncode: int
    output: str
    recap: Dict[str, Dict[str, int]]

    def host_lines(self, name: str) -> List[str]:
        return [ln for ln in self.output.splitlines() if f"[{name}]" in ln]


class Fleet:
    """Nodes booted and reachable over SSH; everything made here is removed on exit."""

    def __init__(self, workdir: Path, deb: Path, gpus: Mapping[str, str]) -> None:
        self.workdir = workdir
        self.deb = deb
        self.tag = f"mrf{os.getpid() % 100000}"
        self.nodes: List[Node] = []
        self.stack = ExitStack()
        self.key = workdir / "id_ed25519"
        self.known_hosts = workdir / "known_hosts"
        # ssh's ControlPath must stay short (a unix socket path): not under pytest's tmp.
        self.control_dir = Path(f"/tmp/{self.tag}-cp")
        try:
            self.make_nodes(gpus)
        except BaseException:
            self.stack.close()
            raise

    def make_nodes(self, gpus: Mapping[str, str]) -> None:
        for index, (name, spec) in enumerate(gpus.items(), 1):
            node_dir = self.workdir / name
            node_dir.mkdir(parents=True, exist_ok=True)
            self.stack.callback(self.timed, f"{name} rootfs removed")
            self.stack.callback(shutil.rmtree, node_dir / "root", True)
            netns = f"{self.tag}n{index}"
            container = n.new_node(
                node_dir,
                nspawn_args=(f"--network-namespace-path=/run/netns/{netns}",),
            )
            self.nodes.append(Node(name, index, spec, container, netns, f"{self.tag}h{index}"))

    # -- set up

    def __enter__(self) -> Fleet:
        try:
            self.start()
        except BaseException:
            self.stack.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.stack.close()

    def start(self) -> None:
        host(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "migrestore-fleet-test",
                "-f",
                str(self.key),
            ]
        )
        client_key = (self.key.with_suffix(".pub")).read_text()
        self.control_dir.mkdir(mode=0o700, exist_ok=True)
        self.stack.callback(shutil.rmtree, self.control_dir, True)
        # Registered before the containers: runs after they are powered off.
        known: List[str] = []
        for node in self.nodes:
            self.network(node)
            c = node.container
            n.provision(c, self.deb, SHIPPED_CONFIG, node.gpus)
            key = node.container.root / "etc/ssh/test_host_ed25519_key"
            key.unlink(missing_ok=True)
            host(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", node.name, "-f", str(key)])
            node.host_key = key.with_suffix(".pub").read_text().split()[1]
            c.write("/etc/ssh/test_authorized_keys", client_key, 0o600)
            c.write("/etc/ssh/sshd_config", SSHD_CONFIG.format(address=node.address))
            known.append(f"{node.address} ssh-ed25519 {node.host_key}\n")
            c.setup(["systemctl", "enable", "ssh.service"])
            self.stack.callback(self.timed, f"{node.name} powered off")
            self.stack.enter_context(c)
            # Generous: three nodes boot on a machine that may be busy with other tests.
            c.boot(timeout=240)
            c.wait_unit("ssh.service", ("active",))
            c.wait_unit(n.UNIT, ("active",))
        self.known_hosts.write_text("".join(known))
        # At exit, after the control masters are closed: every node is asked to power
        # off before the first is waited for, so the three shut down side by side.
        self.stack.callback(self.request_poweroff)
        # Runs first at exit: Ansible's SSH control masters (ControlPersist) hold a
        # session open on every node; end them before the nodes power off.
        self.stack.callback(self.close_connections)
        self.stack.callback(self.timed, "teardown started")

    def timed(self, what: str) -> None:
        with open(self.workdir / "teardown.log", "a") as log:
            log.write(f"{time.monotonic():.1f} {what}\n")

    def request_poweroff(self) -> None:
        for node in self.nodes:
            node.container.request_poweroff()
        self.timed("power off asked of every node")

    def close_connections(self) -> None:
        for socket in self.control_dir.iterdir():
            subprocess.run(
                ["ssh", "-O", "exit", "-S", str(socket), "migrestore-fleet-node"],
                capture_output=True,
                timeout=30,
                check=False,
            )
        self.timed("ssh control masters closed")

    def network(self, node: Node) -> None:
        """The node's namespace and veth pair; deleted at exit (after its container)."""
        subnet = f"{SUBNET}.{node.index}.0/24"
        routes = host(["ip", "-4", "route", "show", subnet]).stdout.strip()
        if routes:
            raise nspawn.SystemTestError(
                f"{subnet} is already routed here ({routes}); not touching it"
            )
        peer = f"{self.tag}p{node.index}"
        host(["ip", "netns", "add", node.netns])
        self.stack.callback(subprocess.run, ["ip", "netns", "delete", node.netns], check=False)
        host(["ip", "link", "add", node.link, "type", "veth", "peer", "name", peer])
        self.stack.callback(
            subprocess.run, ["ip", "link", "delete", node.link], check=False, capture_output=True
        )
        host(["ip", "link", "set", peer, "netns", node.netns])
        host(["ip", "addr", "add", f"{SUBNET}.{node.index}.1/24", "dev", node.link])
        host(["ip", "link", "set", node.link, "up"])
        inside = ["ip", "netns", "exec", node.netns]
        host([*inside, "ip", "addr", "add", f"{node.address}/24", "dev", peer])
        host([*inside, "ip", "link", "set", peer, "up"])
        host([*inside, "ip", "link", "set", "lo", "up"])

    # -- Ansible

    def inventory(self, configs: Mapping[str, Any]) -> Path:
        """An inventory of every node, each with its config (``migrestore_config``)."""
        hosts = {
            node.name: {"ansible_host": node.address, "migrestore_config": configs[node.name]}
            for node in self.nodes
        }
        data = {
            "all": {
                "children": {"gpu_nodes": {"hosts": hosts}},
                "vars": {
                    "ansible_user": "root",
                    # Root logs in directly: no sudo on the nodes.
                    "ansible_become": False,
                    "ansible_python_interpreter": "/usr/bin/python3",
                    "ansible_ssh_private_key_file": str(self.key),
                    "ansible_ssh_common_args": (
                        f"-o UserKnownHostsFile={self.known_hosts} -o GlobalKnownHostsFile=/dev/null "
                        "-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes -o BatchMode=yes"
                    ),
                    # The one thing that differs from a real node: the CLI the role runs
                    # drives this node's simulated GPUs (the service has the drop-in).
                    "migrestore_environment": {"MIGRESTORE_SIMULATE": n.SIM_STATE},
                },
            }
        }
        path = self.workdir / "inventory.yml"
        path.write_text(json.dumps(data, indent=2))
        return path

    def playbook(self, configs: Mapping[str, Any], playbook: Path, *args: str) -> Run:
        inventory = self.inventory(configs)
        home = self.workdir / "ansible-home"
        home.mkdir(exist_ok=True)
        (self.workdir / "ansible.cfg").write_text("# no settings: the environment has them\n")
        env = {
            **nspawn.ENV,
            "HOME": str(home),
            "ANSIBLE_CONFIG": str(self.workdir / "ansible.cfg"),
            "ANSIBLE_HOME": str(home),
            "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
            "ANSIBLE_ROLES_PATH": str(ROLES),
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(self.control_dir),
            "ANSIBLE_PIPELINING": "True",
            "ANSIBLE_HOST_KEY_CHECKING": "True",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_STDOUT_CALLBACK": "default",
            "ANSIBLE_FORKS": "5",
        }
        if "PYTHONPATH" in os.environ:
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        proc = subprocess.run(
            [str(ansible_playbook()), "-i", str(inventory), str(playbook), *args],
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        output = proc.stdout + proc.stderr
        (self.workdir / "ansible.log").open("a").write(output + "\n" + "=" * 70 + "\n")
        recap = {
            m["host"]: {k: int(m[k]) for k in ("ok", "changed", "unreachable", "failed")}
            for m in RECAP.finditer(output)
        }
        return Run(proc.returncode, output, recap)
