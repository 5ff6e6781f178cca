"""The config's `metrics:` key, the config hash, and where the metrics file goes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from migrestore import config as configmod
from migrestore import metrics
from migrestore.errors import ConfigError

BASE = "version: 1\ngpus: []\n"


@pytest.mark.parametrize(
    ("text", "textfile"),
    [
        (BASE, ""),
        (BASE + "metrics: {textfile: /srv/prom/migrestore.prom}\n", "/srv/prom/migrestore.prom"),
        (BASE + "metrics: {textfile: null}\n", None),
        (BASE + "metrics:\n  textfile:\n", None),
        (BASE + "metrics: {}\n", ""),
    ],
)
def test_metrics_key(text: str, textfile: object) -> None:
    assert configmod.parse(text, "/etc/migrestore.yaml").metrics_textfile == textfile


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            BASE + "metrics: {textfile: relative.prom}\n",
            "/etc/migrestore.yaml:3: metrics.textfile: 'relative.prom' is not an absolute path "
            "ending in .prom (write an absolute path ending in .prom, or null to write no metrics)",
        ),
        (
            BASE + "metrics: {textfile: /var/lib/node-exporter/migrestore.txt}\n",
            "/etc/migrestore.yaml:3: metrics.textfile: '/var/lib/node-exporter/migrestore.txt' is "
            "not an absolute path ending in .prom",
        ),
        (
            BASE + "metrics: {textfile: false}\n",
            "/etc/migrestore.yaml:3: metrics.textfile: expected a file path or null",
        ),
        (
            BASE + "metrics: {text-file: /a.prom}\n",
            "/etc/migrestore.yaml:3: metrics.text-file: unknown key",
        ),
        (
            BASE + "metrics: /a.prom\n",
            "/etc/migrestore.yaml:3: metrics: expected a mapping such as {textfile: null}",
        ),
    ],
)
def test_bad_metrics_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        configmod.parse(text, "/etc/migrestore.yaml")
    assert str(err.value).startswith(message), str(err.value)


def test_sha256_is_the_file_bytes_and_changes_with_them(tmp_path: Path) -> None:
    path = tmp_path / "migrestore.yaml"
    path.write_text(BASE)
    first = configmod.load(str(path), require_secure=False)
    assert first.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    path.write_text(BASE + "# a comment\n")
    assert configmod.load(str(path), require_secure=False).sha256 != first.sha256


def test_sha256_covers_a_referenced_mig_parted_file(tmp_path: Path) -> None:
    ref = tmp_path / "mig-parted.yaml"
    ref.write_text(
        "version: v1\nmig-configs:\n  all-disabled:\n    - devices: all\n      mig-enabled: false\n"
    )
    path = tmp_path / "migrestore.yaml"
    path.write_text(f"version: 1\nmig-parted: {{file: {ref}}}\n")
    first = configmod.load(str(path), require_secure=False).sha256
    expected = hashlib.sha256(path.read_bytes() + ref.read_bytes()).hexdigest()
    assert first == expected
    ref.write_text(ref.read_text() + "# edited\n")
    assert configmod.load(str(path), require_secure=False).sha256 != first


def test_textfile_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert metrics.textfile_path(None, None) is None
    assert metrics.textfile_path("/x/m.prom", "h100-80gb-hbm3:1") == "/x/m.prom"
    # simulated GPUs never write the real node's file
    assert metrics.textfile_path("", "h100-80gb-hbm3:1") is None
    default_dir = tmp_path / "node-exporter"
    monkeypatch.setattr(metrics, "DEFAULT_TEXTFILE", str(default_dir / "migrestore.prom"))
    monkeypatch.delenv("MIGRESTORE_STATE", raising=False)
    assert metrics.textfile_path("", None) is None  # no node_exporter directory
    default_dir.mkdir()
    assert metrics.textfile_path("", None) == str(default_dir / "migrestore.prom")
    # a run with a state file of its own (a test, a private run) is not the node's
    monkeypatch.setenv("MIGRESTORE_STATE", str(tmp_path / "state.json"))
    assert metrics.textfile_path("", None) is None
    assert metrics.textfile_path("/x/m.prom", None) == "/x/m.prom"


def test_write_textfile_is_atomic_and_0644(tmp_path: Path) -> None:
    target = tmp_path / "migrestore.prom"
    metrics.write_textfile(str(target), "a 1\n")
    assert target.read_text() == "a 1\n"
    assert os.stat(target).st_mode & 0o777 == 0o644
    metrics.write_textfile(str(target), "a 2\n")
    assert target.read_text() == "a 2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["migrestore.prom"]


def test_write_textfile_replaces_a_symlink_instead_of_following_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    target = tmp_path / "migrestore.prom"
    target.symlink_to(victim)
    metrics.write_textfile(str(target), "a 1\n")
    assert victim.read_text() == "precious\n"
    assert not target.is_symlink() and target.read_text() == "a 1\n"


def test_write_textfile_missing_directory_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(metrics.MetricsError) as err:
        metrics.write_textfile(str(tmp_path / "nope" / "migrestore.prom"), "a 1\n")
    assert "install prometheus-node-exporter" in str(err.value)
    assert not (tmp_path / "nope").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="the ownership check applies to root")
def test_root_refuses_a_directory_others_can_write(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(metrics.MetricsError) as err:
        metrics.write_textfile(str(shared / "migrestore.prom"), "a 1\n")
    assert "writable by a user other than root" in str(err.value)
    assert not (shared / "migrestore.prom").exists()
    os.chmod(shared, 0o755)
    os.chown(shared, 65534, 65534)
    with pytest.raises(metrics.MetricsError):
        metrics.write_textfile(str(shared / "migrestore.prom"), "a 1\n")
