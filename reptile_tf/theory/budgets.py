"""How much work each `reptile-tf theory --budget` does (smoke: ~2 min, quick: ~10 min on 2 CPU cores)."""

from __future__ import annotations

from dataclasses import dataclass

from reptile_tf.errors import UserError
from reptile_tf.theory.combinations import CombinationConfig


@dataclass(frozen=True)
class Budget:
    name: str
    # 1. Taylor expansion: the float64 toy network, and the real Omniglot network (float64)
    toy_tasks: int
    toy_alphas: tuple[float, ...]
    omniglot_tasks: int
    omniglot_ks: tuple[int, ...]
    omniglot_variants: tuple[str, ...]
    # Below ~1e-6 no ReLU of the Omniglot network changes sign along the k steps (measured);
    # above, activation-pattern changes dominate the residual (see the README).
    omniglot_alphas: tuple[float, ...]
    # 2. coefficients (toy network; Monte Carlo over tasks)
    coef_tasks: int
    coef_alphas: tuple[float, ...]
    bootstrap: int
    # 3. solution manifolds (linear regression)
    manifold_ks: tuple[int, ...]
    manifold_iterations: int
    # 4. gradient combinations (Omniglot)
    combinations: CombinationConfig


KS = (2, 3, 4)
_TOY_ALPHAS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
_OMNIGLOT_ALPHAS = (1e-8, 3e-8, 1e-7, 3e-7, 1e-6)

BUDGETS = {
    "smoke": Budget(
        "smoke", toy_tasks=2, toy_alphas=_TOY_ALPHAS, omniglot_tasks=1, omniglot_ks=(2,),
        omniglot_variants=("models", "softplus"), omniglot_alphas=(1e-8, 1e-7, 1e-6),
        coef_tasks=8, coef_alphas=(1e-3, 1e-2, 1e-1), bootstrap=200,
        manifold_ks=(1, 2, 4, 8, 16, 32), manifold_iterations=300,
        combinations=CombinationConfig(iterations=10, eval_every=10, eval_tasks=5, eval_inner_steps=3, ks=(2,)),
    ),
    "quick": Budget(
        "quick", toy_tasks=4, toy_alphas=_TOY_ALPHAS, omniglot_tasks=1, omniglot_ks=KS,
        omniglot_variants=("models", "softplus"), omniglot_alphas=_OMNIGLOT_ALPHAS,
        coef_tasks=32, coef_alphas=(1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1), bootstrap=1000,
        manifold_ks=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64), manifold_iterations=500,
        combinations=CombinationConfig(iterations=200, eval_every=50, eval_tasks=50),
    ),
    "paper": Budget(
        "paper", toy_tasks=16, toy_alphas=_TOY_ALPHAS, omniglot_tasks=4, omniglot_ks=KS,
        omniglot_variants=("models", "softplus"), omniglot_alphas=_OMNIGLOT_ALPHAS,
        coef_tasks=256, coef_alphas=(1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1), bootstrap=2000,
        manifold_ks=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128), manifold_iterations=1000,
        combinations=CombinationConfig(iterations=40_000, eval_every=1000, eval_tasks=200),  # the official commands'
    ),
}


def get_budget(name: str) -> Budget:
    if name not in BUDGETS:
        raise UserError(f"unknown budget {name!r}; choose one of {', '.join(BUDGETS)}")
    return BUDGETS[name]
