"""The real Prometheus programs for the metrics tests: node_exporter on loopback with a
textfile directory, scraped over HTTP, and promtool."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Dict, Optional

import pytest

NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"  # Debian's prometheus-node-exporter
PROMTOOL = "/usr/bin/promtool"  # Debian's prometheus


def need(path: str) -> str:
    """The program, or a skip on a developer machine without it; CI (.ci/run installs
    both packages) fails instead, so a missing install step cannot pass silently."""
    if not Path(path).is_file():
        message = f"{path} is not installed (apt-get install it as .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def key(metric: str, /, **labels: str) -> str:
    """A sample's key with its labels sorted by name, as node_exporter serves them."""
    if not labels:
        return metric
    return metric + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def parse(text: str) -> Dict[str, float]:
    """``key(name, labels)`` -> value for every sample line of an exposition text."""
    out: Dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            sample, value = line.rsplit(" ", 1)
            name, _, rest = sample.partition("{")
            out[key(name, **dict(_LABEL.findall(rest)))] = float(value)
    return out


class NodeExporter:
    """``prometheus-node-exporter`` with only the textfile collector, on 127.0.0.1."""

    def __init__(self, directory: Path) -> None:
        need(NODE_EXPORTER)
        self.directory = directory
        self.proc: Optional[subprocess.Popen[bytes]] = None
        for _attempt in range(5):  # another process may take the free port first
            self.port = _free_port()
            self.proc = subprocess.Popen(
                [
                    NODE_EXPORTER,
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--collector.disable-defaults",
                    "--collector.textfile",
                    f"--collector.textfile.directory={directory}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            if self._wait_up():
                return
            self.close()
        raise AssertionError("node_exporter did not start")

    def _wait_up(self, timeout: float = 30.0) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            with contextlib.suppress(OSError):
                self.fetch()
                return True
            time.sleep(0.1)
        return False

    def fetch(self) -> str:
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            text: str = answer.read().decode()
            return text

    def scrape(self) -> Dict[str, float]:
        """Every sample node_exporter serves now."""
        return parse(self.fetch())

    def wait_for(
        self, check: Callable[[Dict[str, float]], bool], what: str, timeout: float = 60.0
    ) -> Dict[str, float]:
        deadline = time.monotonic() + timeout
        got: Dict[str, float] = {}
        while time.monotonic() < deadline:
            got = self.scrape()
            if check(got):
                return got
            time.sleep(0.2)
        mine = {k: v for k, v in got.items() if k.startswith("migrestore_")}
        raise AssertionError(f"timed out waiting for {what}; scraped {mine}")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def promtool(*args: str, cwd: Optional[Path] = None, stdin: Optional[str] = None) -> str:
    done = subprocess.run(
        [need(PROMTOOL), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )
    assert done.returncode == 0, f"promtool {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout + done.stderr
