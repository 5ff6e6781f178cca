"""``csrc/nvml_abi.h`` has nvml.h's layouts: every struct the library reads or writes has
the size and field offsets of pynvml's ctypes copy of it (compiled with the system
compiler); and the C example in docs/SIMULATOR.md builds and runs as shown."""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import pynvml

from migrestore.simulator import cabi
from tests.cabi.conftest import ROOT, Node

MakeNode = Callable[..., Node]

PAIRS: Tuple[Tuple[str, str], ...] = (
    ("nvmlPciInfo_t", "nvmlPciInfo_t"),
    ("nvmlMemory_t", "c_nvmlMemory_t"),
    ("nvmlProcessInfo_t", "c_nvmlProcessInfo_t"),
    ("nvmlProcessInfo_v2_t", "c_nvmlProcessInfo_v2_t"),
    ("nvmlGpuInstancePlacement_t", "c_nvmlGpuInstancePlacement_t"),
    ("nvmlGpuInstanceProfileInfo_t", "c_nvmlGpuInstanceProfileInfo_t"),
    ("nvmlGpuInstanceProfileInfo_v2_t", "c_nvmlGpuInstanceProfileInfo_v2_t"),
    ("nvmlGpuInstanceInfo_t", "c_nvmlGpuInstanceInfo_t"),
    ("nvmlComputeInstancePlacement_t", "c_nvmlComputeInstancePlacement_t"),
    ("nvmlComputeInstanceProfileInfo_t", "c_nvmlComputeInstanceProfileInfo_t"),
    ("nvmlComputeInstanceProfileInfo_v2_t", "c_nvmlComputeInstanceProfileInfo_v2_t"),
    ("nvmlComputeInstanceInfo_t", "c_nvmlComputeInstanceInfo_t"),
)


def _compile_and_run(source: str, out: Path, *, env: Optional[Dict[str, str]] = None) -> str:
    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc
    path = out.with_suffix(".c")
    path.write_text(source)
    subprocess.run(
        [
            cc,
            "-std=c11",
            "-Wall",
            "-Werror",
            f"-I{ROOT / 'csrc'}",
            "-o",
            str(out),
            str(path),
            "-ldl",
        ],
        check=True,
    )
    done = subprocess.run([str(out)], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


# pynvml has no v3 profile structs: the simulator's own (cabi) stand for nvml.h there
V3 = (
    ("nvmlGpuInstanceProfileInfo_v3_t", cabi.GpuInstanceProfileInfoV3),
    ("nvmlComputeInstanceProfileInfo_v3_t", cabi.ComputeInstanceProfileInfoV3),
)


def test_every_struct_has_pynvml_layout(tmp_path: Path) -> None:
    lines: List[str] = ["#include <stdio.h>", '#include "nvml_abi.h"', "int main(void) {"]
    expected: List[str] = []
    classes = [(c, getattr(pynvml, py)) for c, py in PAIRS] + list(V3)
    for c_name, cls in classes:
        lines.append(f'printf("{c_name} %zu\\n", sizeof({c_name}));')
        expected.append(f"{c_name} {ctypes.sizeof(cls)}")
        for field, *_ in cls._fields_:
            lines.append(f'printf("{c_name}.{field} %zu\\n", offsetof({c_name}, {field}));')
            expected.append(f"{c_name}.{field} {getattr(cls, field).offset}")
    lines.append("return 0; }")
    got = _compile_and_run("\n".join(lines), tmp_path / "layout").splitlines()
    assert got == expected


def test_the_c_example_of_the_docs_runs(make_node: MakeNode, tmp_path: Path) -> None:
    text = (ROOT / "docs" / "SIMULATOR.md").read_text()
    match = re.search(r"```c\n(.*?)```", text, re.S)
    assert match
    node = make_node(["a100-sxm4-40gb:2"])
    env = dict(node.env, LD_LIBRARY_PATH=str(node.simlib.parent))
    assert _compile_and_run(match.group(1), tmp_path / "example", env=env) == "GI 2 at 4:4\n"
