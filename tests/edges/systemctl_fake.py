"""A stateful systemctl stand-in that any test can use (a fake, not a mock).

    from tests.edges.systemctl_fake import FakeSystemctl

    fake = FakeSystemctl(tmp_path / "systemctl")
    fake.add("nvidia-dcgm.service")                 # active
    fake.add("dcgm-exporter.service", state="inactive")
    monkeypatch.setenv(...) for each of fake.env().items()   # or pass fake.path
    ...                                              # code under test runs systemctl
    assert fake.state("nvidia-dcgm.service") == "active"
    assert fake.calls() == ["--no-ask-password is-active nvidia-dcgm.service", ...]

The script it drives is ``tests/edges/fake_systemctl`` (POSIX sh); its header lists
the files of the state directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, List

SCRIPT = Path(__file__).resolve().with_name("fake_systemctl")


class FakeSystemctl:
    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        for sub in ("units", "stops-with", "stop-fail", "stop-hang", "start-fail"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)

    @property
    def path(self) -> str:
        """The executable to use as systemctl."""
        return str(SCRIPT)

    def env(self) -> Dict[str, str]:
        """What the process under test needs in its environment."""
        return {"MIGRESTORE_SYSTEMCTL": str(SCRIPT), "FAKE_SYSTEMCTL_DIR": str(self.dir)}

    def add(self, unit: str, state: str = "active", stops_with: Iterable[str] = ()) -> None:
        """A loaded unit in ``state``; ``stops_with``: units that go down when it stops."""
        (self.dir / "units" / unit).write_text(state + "\n")
        deps = list(stops_with)
        if deps:
            (self.dir / "stops-with" / unit).write_text("".join(d + "\n" for d in deps))

    def state(self, unit: str) -> str:
        """The unit's state now (``missing`` when it is not loaded)."""
        path = self.dir / "units" / unit
        return path.read_text().strip() if path.exists() else "missing"

    def fail_stop(self, unit: str, message: str) -> None:
        (self.dir / "stop-fail" / unit).write_text(message + "\n")

    def hang_stop(self, unit: str) -> None:
        (self.dir / "stop-hang" / unit).write_text("")

    def fail_start(self, unit: str, message: str) -> None:
        (self.dir / "start-fail" / unit).write_text(message + "\n")

    def system_state(self, state: str) -> None:
        """What ``is-system-running`` answers (``starting`` while booting)."""
        (self.dir / "system-state").write_text(state + "\n")

    def down(self) -> None:
        """Every call fails as it does where systemd is not running."""
        (self.dir / "down").write_text("")

    def calls(self) -> List[str]:
        """The arguments of each call so far, one string per call."""
        path = self.dir / "calls"
        return path.read_text().splitlines() if path.exists() else []
