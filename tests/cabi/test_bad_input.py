"""Bad input to the simulated libnvidia-ml.so.1 gets NVML's answers, never a crash:
NULL pointers, undersized buffers, handles that are not this process's, calls before
nvmlInit, and no (or a broken) simulator selected."""

from __future__ import annotations

from typing import Callable, Dict

import pytest

from migrestore.simulator import codes
from tests.cabi.conftest import Node

MakeNode = Callable[..., Node]


def _bad(node: Node) -> Dict[str, str]:
    lines = node.c("init", "bad", "0")
    assert lines[0] == "init 0"
    found = {}
    for line in lines[1:]:
        word, check, rest = line.split(" ", 2)
        assert word == "bad"
        found[check] = rest
    return found


def test_null_pointers_short_buffers_and_foreign_handles_get_nvml_answers(
    make_node: MakeNode,
) -> None:
    node = make_node(["h100-80gb-hbm3:1"])
    # two 1g GIs, so a one-element array is too short
    assert node.c("init", "mode", "0", "1", "create-gi", "0", "19", "0", "1",
                  "create-gi", "0", "19", "1", "1")[2:] == ["gi 0 7 0 1", "gi 0 8 1 1"]  # fmt: skip
    bad = _bad(node)
    invalid = str(codes.INVALID_ARGUMENT)
    short = str(codes.INSUFFICIENT_SIZE)
    assert bad == {
        "null-count": invalid,
        "null-handle-out": invalid,
        "null-mode": invalid,
        "null-name": invalid,
        "null-device": invalid,
        "null-placement": invalid,
        "null-count-list": invalid,
        "short-name": short,
        "index-past-end": invalid,
        "short-placements": f"{short} 7",  # 1g.10gb has 7 placements
        "short-gi-list": f"{short} 2",
        "processes-null": "0 0",  # no process: SUCCESS with a count of 0
        "wrong-version": invalid,
        "garbage-handle": invalid,
        "stack-handle": invalid,
        "gi-as-device": invalid,
        "device-as-gi": invalid,
        "error-string": "Insufficient Size",
    }


def test_a_handle_from_another_process_is_refused(make_node: MakeNode) -> None:
    node = make_node(["h100-80gb-hbm3:1"])
    (_, line) = node.c("init", "handle", "0")
    theirs = line.split()[1]
    (_, mine) = node.c("init", "handle", "0")
    assert mine.split()[1] != theirs  # handles are this process's addresses
    assert node.c("init", "use-handle", theirs)[1] == f"use-handle {codes.INVALID_ARGUMENT}"


def test_calls_before_init_and_after_shutdown_are_uninitialized(make_node: MakeNode) -> None:
    node = make_node(["h100-80gb-hbm3:1"])
    u = codes.UNINITIALIZED
    assert node.c("preinit", "init", "shutdown", "preinit", "shutdown") == [
        f"preinit {u} {u}",
        "init 0",
        "shutdown 0",
        f"preinit {u} {u}",
        f"shutdown {u}",
    ]


def test_without_a_simulator_init_says_driver_not_loaded(make_node: MakeNode) -> None:
    node = make_node(["h100-80gb-hbm3:1"])
    del node.env["MIGRESTORE_SIMULATE"]
    done = node.c("init", "preinit")
    assert done == [
        f"init {codes.DRIVER_NOT_LOADED}",
        f"preinit {codes.UNINITIALIZED} {codes.UNINITIALIZED}",
    ]
    node.env["MIGRESTORE_SIMULATE"] = node.path + ".missing"
    assert node.c("init") == [f"init {codes.DRIVER_NOT_LOADED}"]
    with open(node.path, "w", encoding="utf-8") as f:
        f.write("{not json")
    node.env["MIGRESTORE_SIMULATE"] = node.path
    assert node.c("init") == [f"init {codes.DRIVER_NOT_LOADED}"]


def test_a_function_the_simulated_driver_lacks_is_function_not_found(
    make_node: MakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The library's symbols are fixed at build time; when the selected simulator does
    not answer one (a driver generation without it: here its symbol is taken out of the
    fake library, in-process, as such a generation would lack it) the call answers
    NVML_ERROR_FUNCTION_NOT_FOUND instead of crashing or lying."""
    import ctypes

    from migrestore.simulator import clib

    node = make_node(["h100-80gb-hbm3:1"])
    region = ctypes.create_string_buffer(4096)
    clib.start(ctypes.addressof(region), 4096)
    monkeypatch.setenv("MIGRESTORE_SIMULATE", node.path)
    try:
        assert clib.entry("nvmlInit_v2")() == codes.SUCCESS
        count = ctypes.c_uint()
        get_count = clib.entry("nvmlDeviceGetCount_v2")
        assert get_count(ctypes.addressof(count)) == codes.SUCCESS
        assert count.value == 1
        sim = clib.LIBRARY.sim
        assert sim is not None
        del sim.library._symbols["nvmlDeviceGetCount_v2"]
        assert get_count(ctypes.addressof(count)) == codes.FUNCTION_NOT_FOUND
        assert clib.entry("nvmlShutdown")() == codes.SUCCESS
    finally:
        if clib.LIBRARY.sim is not None:
            clib.LIBRARY.sim.close()
        clib.LIBRARY.sim = clib.LIBRARY.spec = None
