"""logs: the exact line formats, key order, quoting, levels, and format detection."""

from __future__ import annotations

import io
import json
import os
import pty
import re
from pathlib import Path
from typing import Iterator

import pytest
import structlog

from migrestore import logs
from migrestore.model import Placement


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def capture(fmt: str, level: str = "debug") -> io.StringIO:
    buf = io.StringIO()
    logs.configure(fmt, level, buf)
    return buf


def test_journal_line_has_priority_prefix_event_first_and_fixed_key_order() -> None:
    buf = capture("journal")
    log = logs.get_logger(gpu="GPU-8f0c")
    log.info(
        "gi_created",
        zeta=1,
        unit="nvidia-dcgm.service",
        outcome="ok",
        alpha="a",
        placement=Placement(4, 4),
        profile="3g.40gb",
    )
    assert buf.getvalue() == (
        "<6>gi_created gpu=GPU-8f0c profile=3g.40gb placement=4:4 outcome=ok "
        "unit=nvidia-dcgm.service alpha=a zeta=1\n"
    )


@pytest.mark.parametrize(
    ("method", "prefix"),
    [("debug", "<7>"), ("info", "<6>"), ("warning", "<4>"), ("error", "<3>")],
)
def test_journal_priorities(method: str, prefix: str) -> None:
    buf = capture("journal")
    getattr(logs.get_logger(), method)("something_happened")
    assert buf.getvalue() == f"{prefix}something_happened\n"


def test_values_with_spaces_quotes_and_newlines_are_quoted_and_escaped() -> None:
    buf = capture("journal")
    logs.get_logger().warning(
        "drift_detected",
        message='GPU 0: "3g.40gb" at 0:4 is gone\nand more',
        empty="",
        path="C:\\x",
        eq="a=b",
    )
    assert buf.getvalue() == (
        '<4>drift_detected empty="" eq="a=b" '
        'message="GPU 0: \\"3g.40gb\\" at 0:4 is gone\\nand more" path="C:\\\\x"\n'
    )


def test_value_types_render_plainly() -> None:
    buf = capture("journal")
    logs.get_logger().info(
        "units_listed",
        units=("a.service", "b.service"),
        ok=True,
        missing=None,
        seconds=1.5,
        count=3,
        names={"b", "a"},
    )
    assert buf.getvalue() == (
        "<6>units_listed count=3 missing=null names=a,b ok=true seconds=1.5 "
        "units=a.service,b.service\n"
    )


def test_an_exception_stays_on_one_line() -> None:
    buf = capture("journal")
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        logs.get_logger().exception("bug")
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith('<3>bug exception="Traceback (most recent call last):\\n')
    assert lines[0].endswith('RuntimeError: boom\\nsecond line"')


def test_secrets_are_redacted() -> None:
    buf = capture("journal")
    logs.get_logger(token="s3cret").info(
        "hook_started", env={"API_KEY": "abc"}, Password="hunter2", hook="/bin/x"
    )
    text = buf.getvalue()
    assert "s3cret" not in text and "abc" not in text and "hunter2" not in text
    assert text == (
        "<6>hook_started Password=<redacted> env=<redacted> hook=/bin/x token=<redacted>\n"
    )


def test_level_filters_lower_levels() -> None:
    buf = capture("journal", level="warning")
    log = logs.get_logger()
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    assert buf.getvalue() == "<4>w\n<3>e\n"


def test_console_format() -> None:
    buf = capture("console")
    log = logs.get_logger()
    log.info("unit_stopped", unit="nvidia-dcgm.service")
    log.warning("drift_detected", gpu="GPU-1", detail="GI 1 gone")
    assert buf.getvalue() == (
        "info    unit_stopped unit=nvidia-dcgm.service\n"
        'warning drift_detected gpu=GPU-1 detail="GI 1 gone"\n'
    )


def test_json_format_is_one_object_per_line_in_key_order() -> None:
    buf = capture("json")
    logs.get_logger(gpu="GPU-1").error(
        "action_failed", zeta=2, placement=Placement(0, 4), nvml_error="NVML_ERROR_IN_USE"
    )
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1
    obj = json.loads(lines[0])
    assert list(obj) == ["event", "level", "timestamp", "gpu", "placement", "nvml_error", "zeta"]
    assert obj["event"] == "action_failed"
    assert obj["level"] == "error"
    assert obj["placement"] == "0:4"
    assert obj["nvml_error"] == "NVML_ERROR_IN_USE"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", obj["timestamp"])


def test_journald_is_another_name_for_journal() -> None:
    buf = capture("journald")
    logs.get_logger().info("x", a=1)
    assert buf.getvalue() == "<6>x a=1\n"


def test_unknown_format_or_level_is_refused() -> None:
    with pytest.raises(ValueError, match="log format 'xml' is not one of"):
        logs.configure("xml")
    with pytest.raises(ValueError, match="log level 'loud' is not one of"):
        logs.configure("journal", "loud")


def test_loggers_made_before_configure_follow_it() -> None:
    log = logs.get_logger(unit="a.service")
    buf = capture("journal")
    log.info("unit_stopped")
    assert buf.getvalue() == "<6>unit_stopped unit=a.service\n"


# --------------------------------------------------------------------------- detection


def test_auto_is_journal_when_journal_stream_names_our_stream(tmp_path: Path) -> None:
    with open(tmp_path / "stream", "w") as f:
        st = os.fstat(f.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert logs.detect_format(f, env) == "journal"


def test_auto_is_console_on_a_terminal_even_when_journal_stream_is_inherited(
    tmp_path: Path,
) -> None:
    other = os.stat(tmp_path)
    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as tty:
            env = {"JOURNAL_STREAM": f"{other.st_dev}:{other.st_ino}"}
            assert logs.detect_format(tty, env) == "console"
            assert logs.detect_format(tty, {}) == "console"
    finally:
        os.close(master)
        os.close(slave)


def test_auto_is_journal_style_for_a_pipe_or_file(tmp_path: Path) -> None:
    read_fd, write_fd = os.pipe()
    try:
        with os.fdopen(write_fd, "w", closefd=False) as pipe:
            assert logs.detect_format(pipe, {}) == "journal"
            assert logs.detect_format(pipe, {"JOURNAL_STREAM": "garbage"}) == "journal"
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert logs.detect_format(io.StringIO(), {}) == "journal"


def test_auto_configure_writes_journal_lines_to_a_non_terminal_stream() -> None:
    buf = capture("auto", "info")
    logs.get_logger().info("converged", gpus=2)
    assert buf.getvalue() == "<6>converged gpus=2\n"
