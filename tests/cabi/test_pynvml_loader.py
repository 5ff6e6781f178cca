"""pynvml's own loader (``CDLL("libnvidia-ml.so.1")``, found through LD_LIBRARY_PATH in
a fresh process, no ``attach``) runs on the simulated library, and the production NVML
layer (``migrestore.nvml.Nvml``) makes and reads the same geometry on it as on the fake
library beneath pynvml. (tests/sim's GI, CI and mode tests also run on both: their
``NVML_LIBRARIES``.)"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Callable, Dict, List

from tests.cabi.conftest import Node

MakeNode = Callable[..., Node]

SCRIPT = r"""
import ctypes, json, sys
import pynvml
from migrestore import backend
from migrestore.model import Placement
from migrestore.nvml import Nvml

mode, state = sys.argv[1], sys.argv[2]
# the library: the hardware backend (pynvml loads libnvidia-ml.so.1); else the simulator
with Nvml(backend.choose(None if mode == "library" else state)) as nv:
    lib = pynvml.nvmlLib
    loaded = lib._name if isinstance(lib, ctypes.CDLL) else type(lib).__name__
    (gpu, _) = nv.observe()
    assert nv.set_mig_mode(gpu.uuid, True) == "NVML_SUCCESS"
    gi = nv.create_gi(gpu.uuid, 9, Placement(4, 4))
    nv.create_ci(gpu.uuid, gi.gi_id, 0, None)
    nv.create_ci(gpu.uuid, gi.gi_id, 0, Placement(2, 1))
    small = nv.create_gi(gpu.uuid, 19, Placement(1, 1))
    nv.create_ci(gpu.uuid, small.gi_id, 0, None)
    nv.destroy_ci(gpu.uuid, small.gi_id, 0)
    nv.destroy_gi(gpu.uuid, small.gi_id)
    seen = [repr(g) for g in nv.observe()]
print(json.dumps({"loaded": loaded, "gpus": seen}))
"""


def _run(node: Node, mode: str, env: Dict[str, str]) -> Dict[str, List[str]]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode, node.path],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result: Dict[str, List[str]] = json.loads(done.stdout)
    return result


def test_the_nvml_layer_gives_the_same_results_on_the_library_and_the_fake(
    make_node: MakeNode,
) -> None:
    on_fake = make_node(["h100-80gb-hbm3:2"], "fake.json")
    fake = _run(on_fake, "fake", dict(on_fake.env))
    on_lib = make_node(["h100-80gb-hbm3:2"], "library.json")
    env = dict(on_lib.env, LD_LIBRARY_PATH=str(on_lib.simlib.parent))
    library = _run(on_lib, "library", env)
    assert fake["loaded"] == "FakeNvmlLibrary"
    assert library["loaded"] == "libnvidia-ml.so.1"  # pynvml's CDLL, by soname
    assert library["gpus"] == fake["gpus"]
    assert "gi_id=2" in library["gpus"][0]
    with open(on_lib.path, encoding="utf-8") as f:
        assert json.load(f)["change_count"] == 8
