import pytest
import torch

from lightning_autoopt.callbacks import DCO, TaskShiftDetector, TaskShiftListener
from lightning_autoopt.continual.dco import direction_penalty, fit_direction_autoencoder
from tests.callbacks.test_task_shift import BATCHES_PER_TASK, ShiftingBlobs
from tests.helpers import TinyClassifier, TinyDataModule, make_trainer


def test_autoencoder_learns_the_top_direction_of_its_inputs():
    g = torch.Generator().manual_seed(0)
    u1, v1 = torch.randn(6, generator=g), torch.randn(4, generator=g)
    u2, v2 = torch.randn(3, generator=g), torch.randn(5, generator=g)
    coef = torch.randn(64, generator=g)
    # Every sample is a multiple of one rank-one direction per layer (plus a little noise).
    layer1 = coef[:, None, None] * torch.outer(u1, v1) + 0.01 * torch.randn(64, 6, 4, generator=g)
    layer2 = coef[:, None, None] * torch.outer(u2, v2) + 0.01 * torch.randn(64, 3, 5, generator=g)
    (ua, va), (ub, vb) = fit_direction_autoencoder([layer1, layer2], 1, steps=300, lr=0.05, seed=0)

    def code(d1, d2):
        return float(torch.einsum("kr,rc,kc->k", ua, d1, va) + torch.einsum("kr,rc,kc->k", ub, d2, vb))

    along = abs(code(torch.outer(u1, v1), torch.outer(u2, v2)))
    orth1 = torch.randn(6, 4, generator=g)
    orth1 -= (orth1 * torch.outer(u1, v1)).sum() / torch.outer(u1, v1).pow(2).sum() * torch.outer(u1, v1)
    across = abs(code(orth1, torch.zeros(3, 5)))
    assert along > 20 * across


def test_penalty_gradient_matches_autograd():
    g = torch.Generator().manual_seed(1)
    weights = [torch.nn.Parameter(torch.randn(4, 3, generator=g)), torch.nn.Parameter(torch.randn(2, 4, generator=g))]
    task = {
        "centre": [torch.randn(4, 3, generator=g), torch.randn(2, 4, generator=g)],
        "u": [torch.randn(5, 4, generator=g), torch.randn(5, 2, generator=g)],
        "v": [torch.randn(5, 3, generator=g), torch.randn(5, 4, generator=g)],
    }
    penalty, grads = direction_penalty([w.detach() for w in weights], [task], strength=3.0)
    z = sum(
        torch.einsum("kr,rc,kc->k", u, w - c, v) for u, w, c, v in zip(task["u"], weights, task["centre"], task["v"])
    )
    ref = 3.0 * z.pow(2).sum()
    ref.backward()
    assert penalty == pytest.approx(float(ref), rel=1e-5)
    for w, gr in zip(weights, grads):
        torch.testing.assert_close(gr, w.grad)


def test_consolidates_at_given_boundaries_and_applies_the_penalty(tmp_path):
    dco = DCO(boundaries=[BATCHES_PER_TASK], ae_steps=50, num_directions=4)
    trainer = make_trainer(tmp_path, [dco])
    model = TinyClassifier(lr=0.1, momentum=0.9)
    trainer.fit(model, datamodule=ShiftingBlobs())
    assert dco.consolidation_steps == [BATCHES_PER_TASK]
    assert len(dco.tasks) == 1 and dco.tasks[0]["u"][0].shape[0] == 4
    assert dco.last_penalty > 0 and trainer.callback_metrics["dco/penalty"] > 0
    # The weights moved less along the forbidden directions than a plain run does.
    plain = TinyClassifier(lr=0.1, momentum=0.9)
    make_trainer(tmp_path, []).fit(plain, datamodule=ShiftingBlobs())
    weights = [p for p in model.parameters() if p.dim() >= 2]
    plain_weights = [p for p in plain.parameters() if p.dim() >= 2]
    dco.strength = 1.0
    assert dco._penalty_and_grads(weights)[0] < dco._penalty_and_grads(plain_weights)[0]
    clone = DCO(boundaries=[BATCHES_PER_TASK], ae_steps=50, num_directions=4)
    clone.load_state_dict(dco.state_dict())
    assert clone.consolidation_steps == dco.consolidation_steps
    assert torch.equal(clone.tasks[0]["u"][0], dco.tasks[0]["u"][0])


def test_consolidates_on_detector_events(tmp_path):
    det = TaskShiftDetector(verbose=False)
    dco = DCO(ae_steps=20, num_directions=2)
    make_trainer(tmp_path, [det, dco]).fit(TinyClassifier(lr=0.1, momentum=0.9), datamodule=ShiftingBlobs())
    assert det.shift_steps and dco.consolidation_steps == det.shift_steps


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"boundaries": [0]}, "boundaries"),
        ({"strength": -1}, "strength"),
        ({"num_directions": 0}, "num_directions"),
        ({"num_gradients": 1}, "num_gradients"),
        ({"skip_recent": 40}, "skip_recent"),
        ({"ae_lr": 0}, "ae_lr"),
        ({"penalty_grad_clip": -1}, "penalty_grad_clip"),
    ],
)
def test_bad_args_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DCO(**kwargs)


def test_dco_is_a_declared_listener_and_keeps_its_old_import_path():
    import lightning_autoopt.continual

    assert isinstance(DCO(), TaskShiftListener)
    assert lightning_autoopt.continual.DCO is DCO  # recipes written for the old place still work
    with pytest.raises(AttributeError):
        lightning_autoopt.continual.NotThere  # noqa: B018


def test_direction_penalty_closed_form():
    u, v = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])  # one direction: z = 2 * delta[0, 1]
    task = {"centre": [torch.zeros(2, 2)], "u": [u], "v": [v]}
    current = [torch.tensor([[0.0, 3.0], [5.0, 7.0]])]
    penalty, grads = direction_penalty(current, [task, task], strength=0.5)
    assert penalty == 2 * 0.5 * 6.0**2
    assert grads[0].tolist() == [[0.0, 2 * (2 * 0.5 * 6.0 * 2.0)], [0.0, 0.0]]


def test_skip_recent_is_derived_from_num_gradients():
    """`DCO(num_gradients=2)` used to fail on a `skip_recent=5` default the user never set."""
    assert DCO().skip_recent == 5
    assert DCO(num_gradients=2).skip_recent == 0
    assert DCO(num_gradients=8).skip_recent == 3
    assert DCO(num_gradients=4, skip_recent=2).skip_recent == 2  # explicit, at the limit
    with pytest.raises(ValueError, match=r"skip_recent.*\[0, 2\].*num_gradients"):
        DCO(num_gradients=4, skip_recent=3)


def test_two_gradients_are_enough_to_consolidate(tmp_path):
    dco = DCO(boundaries=[3], num_gradients=2, ae_steps=5, num_directions=2)
    make_trainer(tmp_path, [dco], max_steps=6).fit(TinyClassifier(), datamodule=TinyDataModule())
    assert dco.consolidation_steps == [3] and len(dco.tasks) == 1
