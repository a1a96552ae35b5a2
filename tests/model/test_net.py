import pytest
import torch

from leakstore.model.config import ModelConfig
from leakstore.model.net import ProtoLeakNet, attention_entropy_penalty

SHAPE, T, K = (4, 8, 8), 3, 4
INPUTS = {"latents": ((T,) + SHAPE, True), "spectra": ((T, 4, 4, 4), True)}


def make(inputs=INPUTS, **kw):
    cfg = ModelConfig(width=8, embed_dim=16, protos_per_class=3, **kw)
    return ProtoLeakNet(cfg, inputs, K)


def batch(n, **extra):
    return {"latents": torch.randn(n, T, *SHAPE), "spectra": torch.randn(n, T, 4, 4, 4), **extra}


@pytest.mark.parametrize("backbone", ["cnn", "resnet", "patch-transformer"])
@pytest.mark.parametrize("temporal", ["attention", "transformer"])
def test_shapes_and_gradients(backbone, temporal):
    net = make(backbone=backbone, temporal=temporal)
    b = batch(5)
    tok = net.forward_features(b)
    assert tok.shape == (5, T, 16)
    out = net(b, net.time_dropout_mask(5, "cpu"))
    assert out["logits"].shape == (5, K) and out["z"].shape == (5, 16) and out["a"].shape == (5, T)
    assert ((out["g"] >= 0) & (out["g"] <= 1)).all()
    torch.testing.assert_close(out["a"].sum(1), torch.ones(5))
    out["logits"].logsumexp(1).mean().backward()
    grads = {n: p.grad for n, p in net.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert net.log_tau.grad.abs() > 0 and net.prototypes.grad.abs().sum() > 0


def test_dropped_timesteps_get_no_attention():
    net = make()
    keep = torch.tensor([[True, False, True], [False, False, True]])
    a = net.embed(batch(2), keep)["a"]
    assert (a[~keep] == 0).all() and torch.allclose(a[1, 2], torch.tensor(1.0))
    m = net.time_dropout_mask(1000, "cpu", torch.Generator().manual_seed(0))
    assert m.any(1).all() and 0.76 < m.float().mean() < 0.84  # 0.7 + 0.3 / 3: one step always kept


def test_extra_prototypes_are_off_until_added():
    net = make()
    z, g = torch.randn(2, 16), torch.rand(2, 16)
    before = net.logits(z, g)
    net.prototypes.data[0, 3:] = z[0]  # an extra slot right on z[0]: no effect while masked
    torch.testing.assert_close(net.logits(z, g), before)
    net.add_prototypes(0, z[:1])
    assert net.logits(z, g)[0, 0] > before[0, 0]


def test_entropy_penalty():
    assert attention_entropy_penalty(torch.full((3, 4), 0.25)).abs() < 1e-6
    assert abs(attention_entropy_penalty(torch.tensor([[1.0, 0, 0, 0]])) - 1) < 1e-6


def test_normalisation_is_stored_in_buffers():
    net = make()
    b = batch(20)
    lat = b["latents"] = b["latents"] * 3 + 2
    net.set_normalisation(b)
    assert torch.allclose(net.lat_mean.flatten(), lat.mean((0, 3, 4)).flatten(), atol=1e-5)
    assert "lat_std" in net.state_dict() and "proto_mask" in net.state_dict()


def test_the_residual_branch_gets_gradients_and_is_required():
    net = make({**INPUTS, "residual": ((7,), False)})
    b = batch(5, residual=torch.randn(5, 7))
    res = b["residual"]
    net.set_normalisation(b)
    assert torch.allclose(net.res_mean, res.mean(0)) and "res_std" in net.state_dict()
    out = net(b)
    out["logits"].sum().backward()
    assert net.res[0].weight.grad is not None and net.res[0].weight.grad.abs().sum() > 0
    other = net({**b, "residual": res + 3.0})["z"]
    assert not torch.allclose(other, out["z"])  # the embedding depends on the residual
    with pytest.raises(ValueError, match="'residual' feature"):
        net({k: v for k, v in b.items() if k != "residual"})


def test_a_new_vector_input_gets_its_own_branch_without_code():
    """A feature added to the table needs no network code: per-timestep and per-image vectors get
    their own standardised MLP branch, and the embedding depends on them."""
    net = make({**INPUTS, "extra": ((T, 6), True)})
    b = batch(4, extra=torch.randn(4, T, 6))
    net.set_normalisation(b)
    assert net.inputs == ("latents", "spectra", "extra") and net.in_extra_mean.shape == (T, 6)
    assert not torch.allclose(net(b)["z"], net({**b, "extra": b["extra"] + 2.0})["z"])


def test_the_small_cnn_is_finite_on_latents_too_small_for_a_spread():
    """Side 4 -> 2 -> 1 after the two strides: one position, whose std was NaN and poisoned training."""
    import torch

    from leakstore.model.net import SmallCNN

    net = SmallCNN(4, 8)
    for side in (1, 2, 4, 5):
        out = net(torch.randn(3, 4, side, side))
        assert out.shape == (3, 32) and torch.isfinite(out).all(), side
