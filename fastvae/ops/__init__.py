"""The fused ops, one module per op family, and what the families share: _registry.py (the op namespace, the seed
of a random op, the compute-dtype rule, the autograd registration helpers), _transforms.py (torch.func transforms and
forward-mode AD: routing to composites) and _composites.py (those composites)."""
