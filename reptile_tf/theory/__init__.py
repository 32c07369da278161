"""Executable theory: numerical checks of the Reptile paper's analysis (sections 5 and 6.2).

- `autodiff`: exact k-step SGD meta-gradients (MAML through the inner loop) and their
  leading-order terms from gradients and Hessian-vector products (forward-over-backward).
- `taylor`: residual of the expansion vs alpha and its log-log slope (2 if right, 1 if a term is off).
- `coefficients`: E[g] = a AvgGrad + b AvgGradInner by Monte Carlo + least squares + bootstrap.
- `manifold`: linear-regression solution manifolds; Reptile's fixed point vs the closed-form minimiser.
- `combinations`: Omniglot learning curves for g_1, g_k, sum and mean outer updates.
- `problems`: the toy float64 network and the real Omniglot network as losses of a flat vector.
- `cli` (`reptile-tf theory`), `budgets`, `report`: the command, its presets and its outputs.
"""
