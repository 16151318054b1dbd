"""The former home of the drop-ins' ops, now fastvae/ops/dropin.py: its public names, re-exported so that
`from fastvae import dropin_ops` keeps working."""
from .ops.dropin import (  # noqa: F401
    HALF_LOG_2PI,
    SPREADS,
    bce_with_logits,
    normal_kl,
    normal_nll,
    normal_rsample,
)
