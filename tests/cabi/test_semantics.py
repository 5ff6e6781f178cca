"""Faults, holders, latency and reboots set on a state file act on a C program through
the simulated libnvidia-ml.so.1 exactly as on migrestore (they live in the state)."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Callable

from migrestore.simulator import codes
from tests.cabi.conftest import Node

MakeNode = Callable[..., Node]


def test_an_injected_fault_fires_in_the_c_program(make_node: MakeNode) -> None:
    node = make_node(["h100-80gb-hbm3:1"])
    node.sim("fail", "--call", "nvmlDeviceCreateGpuInstanceWithPlacement", "--nth", "2",
             "--error", "NVML_ERROR_INSUFFICIENT_RESOURCES")  # fmt: skip
    out = node.c("init", "mode", "0", "1", "create-gi", "0", "19", "0", "1",
                 "create-gi", "0", "19", "1", "1", "create-gi", "0", "19", "1", "1")  # fmt: skip
    assert out[2:] == ["gi 0 7 0 1", f"gi {codes.INSUFFICIENT_RESOURCES} 0 0 0", "gi 0 8 1 1"]


def test_a_holder_keeps_an_ampere_mode_change_pending(make_node: MakeNode) -> None:
    node = make_node(["a100-sxm4-40gb:1"])
    holder = subprocess.Popen(
        [sys.executable, "-m", "migrestore.simulator", "hold", node.path, "--gpu", "0"],
        env=node.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        holder.stdout.readline()  # it says when it holds the GPU
        assert node.c("init", "mode", "0", "1")[1] == f"mode 0 {codes.IN_USE}"
        assert '"current": false, "pending": true' in node.c("init", "read")[1]
    finally:
        holder.terminate()
        holder.wait(timeout=30)
    node.sim("reset", "--gpu", "0")
    assert '"current": true, "pending": true' in node.c("init", "read")[1]


def test_a_reboot_clears_what_the_c_program_made(make_node: MakeNode) -> None:
    node = make_node(["h100-80gb-hbm3:1"])
    node.c("init", "mode", "0", "1", "create-gi", "0", "9", "4", "4")
    assert '"gi_id": 2' in node.c("init", "read")[1]
    node.boot_file.write_text("boot-2\n")  # the next access sees a new boot
    read = node.c("init", "read")[1]
    assert '"mig": {"current": false, "pending": false}, "instances": []' in read


def test_latency_is_slept_per_call_in_the_c_program(make_node: MakeNode) -> None:
    node = make_node(["h100-80gb-hbm3:1"])
    node.sim("latency", "--call", "nvmlDeviceSetMigMode", "--us", "300000")
    began = time.monotonic()
    node.c("init", "mode", "0", "1")
    assert time.monotonic() - began >= 0.3


def test_threads_of_a_c_program_call_at_once(make_node: MakeNode) -> None:
    """Eight threads of a C client read two GPUs at once through the embedded
    interpreter (each call takes the GIL for the simulator only): no deadlock, no
    error."""
    node = make_node(["h100-80gb-hbm3:2"])
    assert node.c("init", "threads", "8", "50") == ["init 0", "threads OK 400"]


def test_a_driver_branch_acts_on_the_c_program_as_on_migrestore(make_node: MakeNode) -> None:
    """The driver generation is part of the state file: on a simulated R535 an H100 refuses
    profile queries while MIG is off (NOT_SUPPORTED) and answers them once it is on; on the
    default branch it answers with MIG off too (as the real 580 probe did). Only the GI
    profile lines are read: with no GI yet the client's CI part stops at its GI lookup."""
    old = make_node(["h100-80gb-hbm3:1@535"], name="r535.json")
    off = old.c("init", "profile-v3", "0", "0", "0", "0", check=False)
    assert off[1].split()[2] == str(codes.NOT_SUPPORTED)
    on = old.c("init", "mode", "0", "1", "profile-v3", "0", "0", "0", "0", check=False)
    assert on[1] == "mode 0 0"
    assert on[2].split()[2] == str(codes.SUCCESS) and on[2].endswith("MIG 1g.10gb")
    new = make_node(["h100-80gb-hbm3:1"], name="r580.json")
    first = new.c("init", "profile-v3", "0", "0", "0", "0", check=False)[1]
    assert first.split()[2] == str(codes.SUCCESS) and first.endswith("MIG 1g.10gb")
