"""The fixed seeds and stream keys of the project's stateless RNG: one place, so no two streams
can collide unnoticed.

Training tasks of iteration i use the key (seed, TRAIN_STREAM) folded with i. Validation tasks
use VALIDATION_SEED, independent of the training seed, so every algorithm and seed is validated
on the same tasks and no training seed produces them. Evaluation uses EVAL_SEED, never derived
from the training seed: the same tasks, in the same order, for every run.
"""

from __future__ import annotations

TRAIN_STREAM = 0
VALIDATION_SEED = (20180308, 1)  # fixed; (x, 1) never equals a training key (seed, 0)
EVAL_SEED = 1803_02999  # fixed (the paper's arXiv id); never derived from the training seed
# EVAL_SEED as an int32 component of a stateless seed pair.
EVAL_KEY = EVAL_SEED % (2**31 - 1)
