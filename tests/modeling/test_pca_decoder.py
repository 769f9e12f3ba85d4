"""The PCA-subspace decoder: exact on the training prompts when d covers their rank, the
Eckart-Young error below it, frozen, deterministic, starting near the mean prompt."""

import pytest
import torch

from ipt_dist.modeling.pca_decoder import PCADecoder, pca_decoder

T, L, H = 6, 4, 8  # 6 prompts: the centred ones have rank 5


def prompts(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # Anisotropic, off-centre, like trained prompts: distinct singular values, a non-zero mean.
    return torch.randn(T, L, H, generator=g) * torch.linspace(0.1, 2.0, L * H).view(L, H) + 0.3


@pytest.mark.parametrize("d", [T - 1, T, 2 * T])
def test_d_at_least_the_rank_reconstructs_every_training_prompt(d):
    P = prompts()
    dec = pca_decoder(P, d)
    assert dec.rank == T - 1 and dec.d == d
    z = dec.encode(P)  # (T, d)
    assert z.shape == (T, d)
    torch.testing.assert_close(dec(z), P, atol=1e-5, rtol=0)
    # Beyond the rank the directions are zero: those entries of z are inert (and encode to 0).
    assert torch.all(dec.components[T - 1:] == 0) and torch.all(z[:, T - 1:] == 0)
    # Whitened: each direction's codes have unit sample variance over the training tasks.
    torch.testing.assert_close(z[:, : T - 1].var(dim=0), torch.ones(T - 1), atol=1e-4, rtol=0)


@pytest.mark.parametrize("d", [1, 2, 4])
def test_below_the_rank_the_error_is_the_discarded_squared_singular_values(d):
    P = prompts()
    X = P.reshape(T, -1).double()
    s = torch.linalg.svdvals(X - X.mean(0))
    dec = pca_decoder(P, d)
    err = ((dec(dec.encode(P)) - P) ** 2).sum()
    assert float(err) == pytest.approx(float((s[d:] ** 2).sum()), rel=1e-4)
    assert dec.rank == d


def test_z_near_zero_gives_the_mean_prompt_and_nothing_trains():
    P = prompts()
    dec = pca_decoder(P, 3)
    assert list(dec.parameters()) == []  # exactly d free parameters come from z alone
    torch.testing.assert_close(dec(torch.zeros(1, 3))[0], P.mean(0), atol=1e-6, rtol=0)
    z = torch.randn(1, 3) * 0.02  # the IST init: 2% of a standard deviation from the mean
    assert (dec(z)[0] - P.mean(0)).norm() < 0.05 * (P - P.mean(0)).norm(dim=(1, 2)).mean()


def test_deterministic_with_a_fixed_sign_convention():
    P = prompts()
    a, b = pca_decoder(P, 3), pca_decoder(P.clone(), 3)
    for name in ("mean", "components", "scale"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    V = a.components
    assert torch.all(V.gather(1, V.abs().argmax(dim=1, keepdim=True)) > 0)
    # Flipping the prompts' sign flips the mean but not the directions' sign convention.
    c = pca_decoder(-P, 3)
    assert torch.all(c.components.gather(1, c.components.abs().argmax(dim=1, keepdim=True)) > 0)
    torch.testing.assert_close(c.components.abs(), V.abs())


def test_rebuilt_from_its_state_dict_as_the_sweep_ships_it():
    dec = pca_decoder(prompts(), 3)
    again = PCADecoder(**dec.state_dict(), prompt_len=L, hidden=H)
    z = torch.randn(2, 3)
    assert torch.equal(again(z), dec(z))


@pytest.mark.parametrize("d, shape, match", [(0, (T, L, H), "d must be in"), (L * H + 1, (T, L, H), "d must be in"),
                                             (2, (T, L * H), r"shape \(T, L, H\)"), (2, (0, L, H), "T >= 1")])
def test_bad_inputs_are_rejected(d, shape, match):
    with pytest.raises(ValueError, match=match):
        pca_decoder(torch.zeros(shape), d)
