"""The documentation says what the packages do: docs/INSTALL.md's simulated-GPU drop-in
is the one the system tier installs, and every installed path that INSTALL.md, the
shipped config and the man pages name is in the .deb."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import List

import pytest

from tests.packaging import pkgbuild
from tests.system import node

pytestmark = pytest.mark.packaging

INSTALL = (pkgbuild.REPO / "docs" / "INSTALL.md").read_text()


def directives(text: str) -> List[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def test_the_documented_drop_in_is_the_one_the_system_tests_use() -> None:
    blocks = re.findall(r"```ini\n(.*?)```", INSTALL, re.DOTALL)
    assert len(blocks) == 1
    documented = directives(blocks[0])
    # The system tests run in systemd-nspawn, which the doc covers with one more line.
    assert directives(node.SIM_DROP_IN) == [*documented, "ProtectControlGroups=no"]
    assert "`ProtectControlGroups=no`" in INSTALL
    assert f"migrestore-sim init {node.SIM_STATE} {node.SIM_GPUS}" in INSTALL


@pytest.mark.parametrize(
    "source",
    ["docs/INSTALL.md", "etc/migrestore.yaml", "packaging/migrestore.8"],
)
def test_the_installed_paths_a_document_names_are_in_the_deb(source: str, deb: Path) -> None:
    text = (pkgbuild.REPO / source).read_text()
    listing = subprocess.run(
        ["dpkg-deb", "-c", str(deb)], check=True, capture_output=True, text=True
    ).stdout
    shipped = {line.split(None, 5)[5][1:].rstrip("/") for line in listing.splitlines()}
    named = set(re.findall(r"(/usr/share/(?:doc/)?migrestore\b[\w/.-]*)", text))
    named |= set(
        re.findall(r"(/etc/migrestore\.yaml|/lib/systemd/system/migrestore\.service)", text)
    )
    assert named, f"{source} names no installed path"
    missing = sorted(p for p in named if p.rstrip("/.") not in shipped)
    assert missing == []
