import pytest
import torch

from ipt_dist.modeling.autoencoder import PromptAutoencoder, random_decoder


def test_reference_architecture_shapes():
    ae = PromptAutoencoder(d=5, prompt_len=10, hidden=8, mid_dim=16)
    assert ae.encoder.weight.shape == (5, 80)
    lin1, act, lin2 = ae.decoder.net
    assert lin1.weight.shape == (16, 5) and isinstance(act, torch.nn.Tanh) and lin2.weight.shape == (80, 16)
    assert ae(torch.randn(3, 10, 8)).shape == (3, 10, 8)


@pytest.mark.parametrize("d", [0, -1, 81])
def test_intrinsic_dimension_bounds(d):
    with pytest.raises(ValueError, match="msf.d"):
        PromptAutoencoder(d=d, prompt_len=10, hidden=8)


def test_memorised_prompts_reconstruct_near_exactly():
    torch.manual_seed(0)
    prompts = torch.randn(3, 4, 8) * 0.5
    ae = PromptAutoencoder(d=3, prompt_len=4, hidden=8, mid_dim=64)
    opt = torch.optim.Adam(ae.parameters(), lr=1e-2)
    for _ in range(1500):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(ae(prompts), prompts)
        loss.backward()
        opt.step()
    assert torch.nn.functional.mse_loss(ae(prompts), prompts) < 1e-4


def test_random_decoder_is_seeded():
    a, b = random_decoder(4, 2, 8, 16, seed=1), random_decoder(4, 2, 8, 16, seed=1)
    z = torch.randn(2, 4)
    torch.testing.assert_close(a(z), b(z))
    assert not torch.allclose(a(z), random_decoder(4, 2, 8, 16, seed=2)(z))
