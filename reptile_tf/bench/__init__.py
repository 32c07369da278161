"""`reptile-tf bench`: throughput of the meta-learning core, against the measured matmul peak.

For Reptile, FOMAML, MAML (second order) and MAML first order at the paper's hyperparameters
(`settings.paper_settings`, 1-shot) on Omniglot 5-way, Omniglot 20-way and Mini-ImageNet 5-way:
meta-iterations per second (compiled meta-step, XLA off and on), achieved GFLOP/s from the hand
FLOP count (`reptile_tf.flops`) as a fraction of a float32 matmul peak measured in the same
run, the speed-up over a per-task Python loop (`benchmarks/reference_loop.py`), evaluation
tasks per second, and the process RSS high-water mark. Every time is the median of repeated
measurements after warm-up (tracing/compilation excluded). The meta-step runs on a fixed
random batch (uint8 images scaled to [0, 1]), so no data is needed and sampling is excluded.

Writes `throughput.csv`, `profile.csv` and `README.md` (tables, targets, GPU projection) into
`--out` (default results/benchmarks/).

- `plan`: the cases, the plan of each part (`--quick`, `--cases`, `--skip`, `--tiny`).
- `measure`: median timing, RSS high-water mark, the matmul peak, the machine's facts.
- `workloads`: the timed callables (compiled meta-step, evaluation chunk, per-task reference loop).
- `profile`: per-op timing of one inner step of the batched network.
- `runner`: every measurement of a plan -> rows.
- `targets`: the issue's targets and the published times the rows are judged against.
- `report`: throughput.csv, profile.csv, README.md.
- `peers`: learn2learn timed on the same workloads, in its own environment (a subprocess).
- `cli`: the flags and `main` (`reptile_tf/cli.py` loads it for `reptile-tf bench`).
  `plan`, `peers`, `targets` and `report` need no TensorFlow.
"""
