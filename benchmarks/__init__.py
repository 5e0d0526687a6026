"""nattrav's benchmarks: nattrav measured side by side with its peers and the machine's floor.

Absolute speed on shared machines drifts by up to +-40 % between runs, so every claim here is a
ratio measured in the same run: contenders run in interleaved rounds (A, B, A, B...), each
round gives one ratio, and the median ratio is compared with the target. ``harness`` holds
the machinery; each other module is one benchmark, runnable as ``python -m benchmarks.<name>``;
``python -m benchmarks.run_all`` (``make bench``) runs them all. See ``docs/benchmarks.md``.
"""
