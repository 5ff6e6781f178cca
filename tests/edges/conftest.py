"""Fixtures for the edge tests: log lines captured in the journal format."""

from __future__ import annotations

import io
from typing import Iterator, List

import pytest
import structlog

from migrestore import logs


class Journal:
    """The lines logged while a test runs, in the journal format, at debug level."""

    def __init__(self) -> None:
        self.buffer = io.StringIO()
        logs.configure("journal", "debug", self.buffer)
        self.log = logs.get_logger()

    def lines(self) -> List[str]:
        return self.buffer.getvalue().splitlines()


@pytest.fixture
def journal() -> Iterator[Journal]:
    yield Journal()
    structlog.reset_defaults()
