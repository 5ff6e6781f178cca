"""Device nodes and the CDI spec after a change (issue 12 item 7), on simulated GPUs.

``migrestore apply`` runs in-process on a simulated 2-GPU H100 node; nvidia-smi and
nvidia-ctk are stand-in scripts named by ``MIGRESTORE_NVIDIA_SMI`` and
``MIGRESTORE_NVIDIA_CTK`` (``cdi`` rule 6), each recording its argv and environment.
The stand-in nvidia-smi "creates the device nodes" (a marker file, as nvidia-modprobe
would create /dev/nvidia-caps/*); the stand-in nvidia-ctk records whether they were
there and copies the simulated GPUs' state at the moment it generates the spec.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from migrestore.errors import EXIT_OK, EXIT_REBOOT
from tests.edges.systemctl_fake import FakeSystemctl
from tests.integration.cli_util import layout_of, run, sim, write

CONFIG = """\
version: 1
clients: []
gpus:
  - match: all
    mig: true
    instances:
      - {profile: 3g.40gb, placement: 4}
      - {profile: 2g.20gb, placement: 0}
"""

ENV_FILE = """\
# operator's overrides of nvidia-ctk cdi generate
NVIDIA_CTK_CDI_OUTPUT_FILE_PATH=/etc/cdi/nvidia.yaml
  NVIDIA_CTK_CDI_DEVICE_NAME_STRATEGY = "uuid"
; another comment
NVIDIA_CTK_DRIVER_ROOT='/run/nvidia/driver'
not a variable line
"""


class Stand:
    """The stand-ins, their records and the simulated node."""

    def __init__(self, tmp_path: Path, node: str) -> None:
        self.dir = tmp_path / "tools"
        self.dir.mkdir(mode=0o755)
        self.records = tmp_path / "records"
        self.records.mkdir()
        self.nodes = tmp_path / "dev-nvidia-caps-created"
        self.node = node
        self.smi = self._script(
            "nvidia-smi",
            f'touch "{self.nodes}"\necho "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-x)"\n',
        )
        self.ctk = self._script(
            "nvidia-ctk",
            'if [ "$1" = cdi ]; then\n'
            f'  if [ -e "{self.nodes}" ]; then echo yes > "$d/nodes-$n"; '
            f'else echo no > "$d/nodes-$n"; fi\n'
            f'  cp "{node}" "$d/gpus-$n.json"\n'
            "fi\n"
            'if [ -e "$d/ctk-fails" ]; then echo "ERROR failed to generate spec" >&2; exit 2; fi\n',
        )

    def _script(self, name: str, body: str) -> str:
        path = self.dir / name
        path.write_text(
            "#!/bin/sh\n"
            f'd="{self.records}"\n'
            'n=$(ls "$d" | grep -c "^call-")\n'
            f'printf "%s\\n" "{name} $*" > "$d/call-$n"\n'
            'env | sort > "$d/env-$n"\n' + body
        )
        path.chmod(0o755)
        return str(path)

    def calls(self) -> List[str]:
        found = sorted(self.records.glob("call-*"), key=lambda p: int(p.name.split("-")[1]))
        return [p.read_text().strip() for p in found]

    def env(self, n: int) -> Dict[str, str]:
        lines = (self.records / f"env-{n}").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line)


@pytest.fixture
def node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    state = str(tmp_path / "gpus.json")
    assert sim(capsys, "init", state, "h100-80gb-hbm3:2").code == 0
    return state


@pytest.fixture
def stand(tmp_path: Path, node: str, monkeypatch: pytest.MonkeyPatch) -> Stand:
    tools = Stand(tmp_path, node)
    env_file = tmp_path / "nvidia-cdi-refresh.env"
    env_file.write_text(ENV_FILE)
    env_file.chmod(0o644)
    monkeypatch.setenv("MIGRESTORE_NVIDIA_SMI", tools.smi)
    monkeypatch.setenv("MIGRESTORE_NVIDIA_CTK", tools.ctk)
    monkeypatch.setenv("MIGRESTORE_CDI_ENV", str(env_file))
    monkeypatch.delenv("MIGRESTORE_SYSTEMCTL", raising=False)
    # whatever the test process has must not leak into the programs
    monkeypatch.setenv("MIGRESTORE_TEST_SECRET", "s3cret")
    return tools


def status(capsys: pytest.CaptureFixture[str], node: str) -> Dict[str, Any]:
    data: Dict[str, Any] = run(capsys, "--simulate", node, "status", "--json").json()
    return data


def apply(capsys: pytest.CaptureFixture[str], node: str, cfg: str) -> Tuple[int, str]:
    result = run(
        capsys, "--simulate", node, "-c", cfg, "--log-format", "journal", "apply", "--no-clients"
    )
    return result.code, result.err


def test_nodes_are_created_then_the_spec_regenerated_with_the_operators_env_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], node: str, stand: Stand
) -> None:
    cfg = write(tmp_path / "m.yaml", CONFIG)
    code, _err = apply(capsys, node, cfg)
    assert code == EXIT_OK
    assert stand.calls() == [
        "nvidia-smi -L",
        "nvidia-ctk system create-device-nodes --control-devices",
        "nvidia-ctk cdi generate",
    ]
    # the spec is generated after the nodes exist, on the verified new geometry
    assert (stand.records / "nodes-2").read_text().strip() == "yes"
    seen = status(capsys, str(stand.records / "gpus-2.json"))
    for index in (0, 1):
        assert layout_of(seen, index) == [("2g.20gb", (0, 2)), ("3g.40gb", (4, 4))]
    env = stand.env(2)
    assert env["NVIDIA_CTK_CDI_OUTPUT_FILE_PATH"] == "/etc/cdi/nvidia.yaml"
    assert env["NVIDIA_CTK_CDI_DEVICE_NAME_STRATEGY"] == "uuid"
    assert env["NVIDIA_CTK_DRIVER_ROOT"] == "/run/nvidia/driver"
    assert env["PATH"] == "/usr/sbin:/usr/bin:/sbin:/bin"
    assert "MIGRESTORE_TEST_SECRET" not in env and "MIGRESTORE_TEST_SECRET" not in stand.env(0)


def test_without_an_env_file_the_units_default_output_is_used(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    node: str,
    stand: Stand,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MIGRESTORE_CDI_ENV", str(tmp_path / "absent.env"))
    cfg = write(tmp_path / "m.yaml", CONFIG)
    assert apply(capsys, node, cfg)[0] == EXIT_OK
    assert stand.env(2)["NVIDIA_CTK_CDI_OUTPUT_FILE_PATH"] == "/var/run/cdi/nvidia.yaml"


def test_a_converged_pass_refreshes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], node: str, stand: Stand
) -> None:
    cfg = write(tmp_path / "m.yaml", CONFIG)
    assert apply(capsys, node, cfg)[0] == EXIT_OK
    assert len(stand.calls()) == 3
    code, err = apply(capsys, node, cfg)
    assert code == EXIT_OK
    assert len(stand.calls()) == 3
    assert "cdi" not in err


def test_cdi_refresh_never_in_the_config_runs_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], node: str, stand: Stand
) -> None:
    cfg = write(tmp_path / "m.yaml", CONFIG + "cdi: {refresh: never}\n")
    assert apply(capsys, node, cfg)[0] == EXIT_OK
    assert stand.calls() == []
    assert layout_of(status(capsys, node), 1) == [("2g.20gb", (0, 2)), ("3g.40gb", (4, 4))]


def test_a_failing_nvidia_ctk_only_warns_and_the_gpus_are_restored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], node: str, stand: Stand
) -> None:
    (stand.records / "ctk-fails").write_text("")
    cfg = write(tmp_path / "m.yaml", CONFIG)
    code, err = apply(capsys, node, cfg)
    assert code == EXIT_OK
    for index in (0, 1):
        assert layout_of(status(capsys, node), index) == [
            ("2g.20gb", (0, 2)),
            ("3g.40gb", (4, 4)),
        ]
    warnings = [line for line in err.splitlines() if line.startswith("<4>cdi_refresh_failed")]
    assert len(warnings) == 2  # create-device-nodes and cdi generate, one line each
    assert (
        f"{stand.ctk} cdi generate exited with status 2: ERROR failed to generate spec"
        in (warnings[1])
    )
    assert not [line for line in err.splitlines() if line.startswith("<3>")]
    state = json.loads(Path(os.environ["MIGRESTORE_STATE"]).read_text())
    assert state["result"] == "applied"
    assert "CDI refresh failed" in state["message"]
    assert any("cdi generate exited with status 2" in line for line in state["hooks_failed"])


def test_a_program_in_a_user_writable_directory_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], node: str, stand: Stand
) -> None:
    stand.dir.chmod(0o777)  # anyone could replace the program between two runs
    cfg = write(tmp_path / "m.yaml", CONFIG)
    code, err = apply(capsys, node, cfg)
    assert code == EXIT_OK
    assert stand.calls() == []  # nothing from there ran
    refused = [line for line in err.splitlines() if "refused to run" in line]
    assert refused and all(line.startswith("<4>cdi_refresh_failed") for line in refused)
    assert "writable by others (mode 0777)" in refused[0]
    assert layout_of(status(capsys, node), 0) == [("2g.20gb", (0, 2)), ("3g.40gb", (4, 4))]


def test_an_env_file_others_can_write_is_not_read_and_no_spec_is_generated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], node: str, stand: Stand
) -> None:
    env_file = Path(os.environ["MIGRESTORE_CDI_ENV"])
    env_file.chmod(0o666)
    cfg = write(tmp_path / "m.yaml", CONFIG)
    code, err = apply(capsys, node, cfg)
    assert code == EXIT_OK
    assert stand.calls() == [
        "nvidia-smi -L",
        "nvidia-ctk system create-device-nodes --control-devices",
    ]
    assert f"refused to read {env_file}" in err
    assert "s3cret" not in err


def test_the_installed_refresh_service_is_restarted_and_waited_for(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    node: str,
    stand: Stand,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeSystemctl(tmp_path / "systemctl")
    fake.add("nvidia-cdi-refresh.service", state="active")
    for key, value in fake.env().items():
        monkeypatch.setenv(key, value)
    cfg = write(tmp_path / "m.yaml", CONFIG)
    assert apply(capsys, node, cfg)[0] == EXIT_OK
    # nodes first, by us; then NVIDIA's unit regenerates the spec (not nvidia-ctk directly)
    assert stand.calls() == [
        "nvidia-smi -L",
        "nvidia-ctk system create-device-nodes --control-devices",
    ]
    assert fake.calls()[-1] == "--no-ask-password restart nvidia-cdi-refresh.service"


@pytest.mark.parametrize("why", ["the system boots", "migrestore.service is starting"])
def test_while_booting_the_refresh_service_is_only_queued(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    node: str,
    stand: Stand,
    monkeypatch: pytest.MonkeyPatch,
    why: str,
) -> None:
    # nvidia-cdi-refresh.service is ordered after us: waiting for it would wait for us
    fake = FakeSystemctl(tmp_path / "systemctl")
    fake.add("nvidia-cdi-refresh.service", state="inactive")
    if why == "the system boots":
        fake.system_state("starting")
    else:
        fake.add("migrestore.service", state="activating")  # our own start job
    for key, value in fake.env().items():
        monkeypatch.setenv(key, value)
    cfg = write(tmp_path / "m.yaml", CONFIG)
    assert apply(capsys, node, cfg)[0] == EXIT_OK
    assert fake.calls()[-1] == "--no-ask-password restart --no-block nvidia-cdi-refresh.service"


def test_a_failing_refresh_service_only_warns(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    node: str,
    stand: Stand,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeSystemctl(tmp_path / "systemctl")
    fake.add("nvidia-cdi-refresh.service", state="active")
    fake.fail_start(
        "nvidia-cdi-refresh.service",
        "Job for nvidia-cdi-refresh.service failed because the control process exited "
        "with error code.",
    )
    for key, value in fake.env().items():
        monkeypatch.setenv(key, value)
    cfg = write(tmp_path / "m.yaml", CONFIG)
    code, err = apply(capsys, node, cfg)
    assert code == EXIT_OK
    warnings = [line for line in err.splitlines() if line.startswith("<4>cdi_refresh_failed")]
    assert len(warnings) == 1
    assert "restart nvidia-cdi-refresh.service exited with status 1: Job for" in warnings[0]
    assert layout_of(status(capsys, node), 0) == [("2g.20gb", (0, 2)), ("3g.40gb", (4, 4))]


def test_a_gpu_that_needs_a_reboot_still_gets_the_others_refreshed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A VM with two passthrough A100s: GPU 0's first MIG enable needs a reboot (exit 77),
    GPU 1 is restored; its new MIG devices get their nodes and a CDI spec (engine rule
    8), so containers see what exists."""
    vm = str(tmp_path / "vm.json")
    assert sim(capsys, "init", vm, "a100-80gb:2", "--passthrough").code == 0
    assert sim(capsys, "passthrough", vm, "--gpu", "0").code == 0
    assert sim(capsys, "set-mode", vm, "--gpu", "1", "on").code == 0
    assert sim(capsys, "reboot", vm).code == 0
    stand = Stand(tmp_path, vm)
    monkeypatch.setenv("MIGRESTORE_NVIDIA_SMI", stand.smi)
    monkeypatch.setenv("MIGRESTORE_NVIDIA_CTK", stand.ctk)
    monkeypatch.setenv("MIGRESTORE_CDI_ENV", str(tmp_path / "absent.env"))
    monkeypatch.delenv("MIGRESTORE_SYSTEMCTL", raising=False)
    cfg = write(tmp_path / "m.yaml", CONFIG)
    code, err = apply(capsys, vm, cfg)
    assert code == EXIT_REBOOT, err
    assert stand.calls() == [
        "nvidia-smi -L",
        "nvidia-ctk system create-device-nodes --control-devices",
        "nvidia-ctk cdi generate",
    ]
    seen = status(capsys, str(stand.records / "gpus-2.json"))
    assert layout_of(seen, 1) == [("2g.20gb", (0, 2)), ("3g.40gb", (4, 4))]
    assert layout_of(seen, 0) == []
