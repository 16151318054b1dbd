"""One argument convention: every fastvae likelihood takes the data first (gaussian_nll(x, mean),
bernoulli_nll(x, logits), discretized_logistic_nll(x, ...)); a Bernoulli call in fastvae 0.1's order is recognised
and never runs silently with a wrong value."""
import warnings

import pytest
import torch

import fastvae
from fastvae import reference as ref


def _data(k=None):
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(4, 6, generator=g) < 0.4).float()
    logits = 3 * torch.randn(((k,) if k else ()) + (4, 6), generator=g)
    return x, logits


@pytest.mark.parametrize("k", [None, 2])
def test_bernoulli_nll_takes_the_data_first(k):
    x, logits = _data(k)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = fastvae.bernoulli_nll(x, logits, reduction="none")
    torch.testing.assert_close(out, ref.bernoulli_nll(x.double(), logits.double(), reduction="none").float())
    torch.testing.assert_close(fastvae.bernoulli_nll(x=x, logits=logits), out.mean())


@pytest.mark.parametrize("k", [None, 2])
def test_the_old_order_is_recognised_warned_about_and_run_as_meant(k):
    x, logits = _data(k)
    with pytest.warns(FutureWarning, match=r"takes \(x, logits\)"):
        old = fastvae.bernoulli_nll(logits, x, reduction="none")
    torch.testing.assert_close(old, fastvae.bernoulli_nll(x, logits, reduction="none"))


def test_x_outside_the_unit_interval_is_refused_naming_it():
    x, logits = _data()
    with pytest.raises(ValueError, match=r"fastvae.bernoulli_nll: x must lie in \[0, 1\].*\[-0.5, 1\]"):
        fastvae.bernoulli_nll(torch.where(x > 0, x, -0.5), logits)
    # logits outside [0, 1] in both places: no swap can explain it
    with pytest.raises(ValueError, match="x must lie in"):
        fastvae.bernoulli_nll(logits, logits)


def test_validate_args_false_skips_the_check_and_nan_stays_nan():
    x, logits = _data()
    out = fastvae.bernoulli_nll(x * 2, logits, reduction="none", validate_args=False)
    torch.testing.assert_close(out, ref.bernoulli_nll(x.double() * 2, logits.double(), reduction="none").float())
    x[0, 0] = float("nan")
    assert fastvae.bernoulli_nll(x, logits, reduction="none")[0].isnan()
    with pytest.raises(TypeError, match="validate_args"):
        fastvae.bernoulli_nll(x, logits, validate_args="yes")
