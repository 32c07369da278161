"""Executable theory: numerical checks of the Reptile paper's analysis (sections 5 and 6.2).

- `meta_gradients`: the exact k-step SGD meta-gradients, read off the training code's own outer
  step (`reptile_tf.meta`: the shared inner loop, each algorithm's outer update; float64), so a
  bug in the trained code fails the checks.
- `autodiff`: what production lacks: the leading-order terms from gradients and Hessian-vector
  products at phi (forward-over-backward), and the AvgGrad / AvgGradInner Monte Carlo terms.
- `taylor`: residual of the expansion vs alpha and its log-log slope (2 if right, 1 if a term is off).
- `coefficients`: E[g] = a AvgGrad + b AvgGradInner by Monte Carlo + least squares + bootstrap.
- `manifold`: linear-regression solution manifolds; Reptile's fixed point vs the closed-form minimiser.
- `combinations`: Omniglot learning curves for g_1, g_k, sum and mean outer updates.
- `problems`: the toy float64 network and the real Omniglot network in the production `Model`
  interface, plus their loss as a function of one flat vector.
- `cli` (`reptile-tf theory`), `budgets`, `report`: the command, its presets and its outputs.
"""
