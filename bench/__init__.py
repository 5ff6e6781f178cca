"""Benchmarks of migrestore (issue 7): ``python3 -m bench`` runs all of them.

Rules:

1. Every figure is a median with its spread (min/max and the interquartile range) over
   repeated runs; a ratio is computed per round from runs made side by side in the same
   round, then summarised the same way, because these machines are noisy and absolute
   times alone mean little.
2. Everything runs on simulated GPUs (``migrestore.simulator``); NVML costs come from an
   explicit, configurable latency model (``bench.latency``), never from a hidden sleep.
3. NVML changes are counted by the simulator's change counter for migrestore and for the
   baseline alike; the baseline (``bench.baseline``) is mig-parted's algorithm written
   over pynvml, not migrestore code.
4. Subprocesses run with the interpreter running the bench (``sys.executable``), with
   private lock, state, notify socket and systemctl stand-in, and with bytecode cached
   in a private ``PYTHONPYCACHEPREFIX`` as an installed package has it.
5. ``--smoke`` runs every benchmark with tiny sizes and one repeat: it checks that the
   harness works and produces its report, and is part of the test command. Its figures
   mean nothing.
6. Each goal of the issue is checked and reported as met or missed, with what limits it.
"""
