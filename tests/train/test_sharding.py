"""The pieces of sharded training that need no second process: filler rows, the float64
gradient clipping every strategy uses, the optimizer state keyed by names."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from trainer.train import sharding, step  # noqa: E402
from trainer.train.examples import IGNORE  # noqa: E402
from trainer.train.packing import Row  # noqa: E402
from trainer.train.world import World  # noqa: E402


def _row(length: int, targets: int) -> Row:
    labels = [7] * targets + [IGNORE] * (length - targets)
    return Row(list(range(length)), labels, list(range(length)))


def test_a_short_share_is_padded_with_rows_that_train_nothing():
    mine = [_row(16, 5), _row(16, 3)]
    rows = sharding.padded(mine, 4, pad_id=0)
    assert rows[:2] == mine and len(rows) == 4
    for filler in rows[2:]:
        assert len(filler) == 16 and filler.target_count == 0 and filler.content_length == 0
    empty = sharding.padded([], 2, pad_id=3)  # a rank with no rows at all still runs the micro-batches
    assert len(empty) == 2 and all(r.input_ids == [3] and r.labels == [IGNORE] for r in empty)
    assert sharding.padded(mine, 2, pad_id=0) == mine


def test_filler_rows_add_no_loss_and_no_gradient():
    from trainer.train.loss import summed_loss

    logits = torch.randn(1, 8, 11, requires_grad=True)
    filler = sharding.padded([_row(8, 8)], 2, pad_id=0)[1]
    labels = torch.tensor([filler.labels])
    loss = summed_loss(logits, labels)
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(logits.grad) == 0


@pytest.mark.parametrize("max_norm", [0.05, 1e6])
def test_clipping_matches_torch_and_reports_the_norm(max_norm):
    torch.manual_seed(0)
    params = {f"p{i}": torch.nn.Parameter(torch.randn(shape)) for i, shape in enumerate([(7, 5), (13,), (3, 3, 3)])}
    for p in params.values():
        p.grad = torch.randn_like(p)
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params.values()]
    for copy, p in zip(copies, params.values()):
        copy.grad = p.grad.clone()
    engine = SimpleNamespace(params=params, sharded=False, world=World())
    norm = step.clip_gradients(engine, max_norm)
    expected = torch.nn.utils.clip_grad_norm_(copies, max_norm).item()
    assert norm == pytest.approx(expected, rel=1e-6)
    for copy, p in zip(copies, params.values()):
        assert torch.allclose(copy.grad, p.grad, rtol=1e-6, atol=0)
    if max_norm > expected:
        assert all(torch.equal(copy.grad, p.grad) for copy, p in zip(copies, params.values())), "no clipping: untouched"


def test_an_optimizer_state_is_keyed_by_parameter_names():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    names = [name for name, _ in model.named_parameters()]
    keyed = sharding._by_name(optimizer.state_dict(), names)
    assert list(keyed["state"]) == names
    assert keyed["param_groups"][0]["params"] == names
    assert torch.equal(keyed["state"]["1.bias"]["exp_avg"], optimizer.state[model[1].bias]["exp_avg"])
    assert sharding._by_name({}, names) == {}
