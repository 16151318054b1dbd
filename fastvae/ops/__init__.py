"""The fused ops, one module per op family: its public functions, register_fake and register_autograd side by side.

  gaussian.py      reparameterize, reparameterize_kl, reparameterize_tril, gaussian_nll, kl_normal
  bernoulli.py     bernoulli_nll
  distances.py     mmd, energy_distance, sliced_wasserstein
  logistic.py      discretized_logistic_nll, discretized_logistic_mixture_nll
  dropin.py        the ops behind the torch.distributions / torch.nn.functional drop-ins (dropin_autograd.py: their
                   fake implementations and autograd formulas)
  reference/       the float64-safe plain-PyTorch twins of the public functions, one module per family (and
                   _common.py); fastvae.reference re-exports them

What the families share: _registry.py (the op namespace, the seed of a random op, the compute-dtype rule, the
autograd registration helpers), _operands.py (the layout, reductions and fast path of the likelihood and KL ops),
_transforms.py (torch.func transforms and forward-mode AD: routing to composites) and _composites.py (those
composites). fastvae/__init__.py re-exports the public functions; the modules fastvae.functional, fastvae.distances,
fastvae.logistic, fastvae.dropin_ops and fastvae.reference re-export them under their former paths."""
