"""Pruning against independent computations: top-L1 filters, zeroed-channel equivalence,
closed-form costs, torch's rounding recursion for global magnitude pruning, masks through
SGD and checkpoints."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attrlib.cost import count_macs, count_params, sparsity
from attrlib.engine import load_model, load_state_, make_checkpoint
from attrlib.models import build_model, vgg16_bn_voc
from attrlib.prune import (
    CRITERIA,
    STRUCTURED_CRITERIA,
    UNSTRUCTURED_CRITERIA,
    attach_masks_,
    conv_names,
    global_magnitude_,
    global_prune_,
    has_masks,
    keep_indices,
    make_permanent_,
    num_kept,
    remaining_fraction,
    spec_rates,
    structured_l1,
    structured_prune,
)

NUM_CLASSES = 5
CLASSES = tuple(f"c{i}" for i in range(NUM_CLASSES))
SIZE = 32
POOLS_AFTER_CONV = (2, 4, 7, 10, 13)  # 1-based, VGG16's max-pools written out independently


def _model(seed: int = 0) -> nn.Module:
    """Tiny VGG with random BN statistics and affine terms, so no channel is trivially zero."""
    torch.manual_seed(seed)
    model = vgg16_bn_voc(16, num_classes=NUM_CLASSES, input_size=SIZE)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.5)
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(7)
            elif isinstance(m, nn.Conv2d):
                m.bias.normal_(0.0, 0.1)
        model.classifier[-1].weight.normal_(0.0, 0.2)
    return model


def _images(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _top_l1(conv: nn.Conv2d, n_keep: int) -> torch.Tensor:
    """Independent oracle: indices of the n_keep largest filter L1 norms, ascending."""
    return conv.weight.detach().abs().sum((1, 2, 3)).topk(n_keep).indices.sort().values


@contextmanager
def zero_removed_channels(model: nn.Module, keeps: dict[int, torch.Tensor]) -> Iterator[None]:
    """Zero every channel not kept at the ReLU after conv `features[i]` (hooks always removed)."""
    handles = []
    try:
        for i, keep in keeps.items():
            relu = model.features[i + 2]
            assert isinstance(relu, nn.ReLU)
            channel_mask = torch.zeros(model.features[i].out_channels)
            channel_mask[keep] = 1.0

            def hook(module, inputs, output, channel_mask=channel_mask):
                return output * channel_mask[None, :, None, None]  # (B, C, h, w)

            handles.append(relu.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


# ----------------------------------------------------------------------------- criteria


@pytest.mark.parametrize("criterion", STRUCTURED_CRITERIA.names())
def test_every_criterion_scores_each_filter_and_prunes(criterion: str) -> None:
    model = _model()
    for conv in model.convs:
        scores = STRUCTURED_CRITERIA.get(criterion)(conv.weight.detach())
        assert scores.shape == (conv.out_channels,)
        assert torch.isfinite(scores).all()
    pruned = structured_prune(model, 0.5, criterion=criterion).eval()
    assert torch.isfinite(pruned(_images())).all()


@pytest.mark.parametrize("criterion", UNSTRUCTURED_CRITERIA.names())
def test_every_unstructured_criterion_scores_each_weight_and_prunes(criterion: str) -> None:
    model = _model()
    for conv in model.convs:
        scores = UNSTRUCTURED_CRITERIA.get(criterion)(conv.weight.detach())
        assert scores.shape == conv.weight.shape
        assert torch.isfinite(scores).all() and (scores >= 0).all()
    total = sum(conv.weight.numel() for conv in model.convs)
    global_prune_(model, 0.3, criterion=criterion)
    assert _zeros(model) == round(0.3 * total)
    assert torch.isfinite(model.eval()(_images())).all()


def test_old_names_are_the_general_entry_points_with_default_criteria() -> None:
    assert CRITERIA is STRUCTURED_CRITERIA
    assert structured_l1 is structured_prune
    a, b = global_magnitude_(_model(), 0.4), global_prune_(_model(), 0.4, criterion="magnitude")
    for old, new in zip(a.convs, b.convs, strict=True):
        assert torch.equal(old.weight_mask, new.weight_mask)


def test_l1_criterion_is_filter_l1_norm() -> None:
    conv = nn.Conv2d(2, 3, 3)
    with torch.no_grad():
        conv.weight.copy_(torch.arange(54, dtype=torch.float32).reshape(3, 2, 3, 3) - 20)
    expected = [sum(abs(v) for v in range(18 * o - 20, 18 * o - 2)) for o in range(3)]
    assert STRUCTURED_CRITERIA.get("l1")(conv.weight.detach()).tolist() == expected


def test_unknown_criterion_lists_valid_names() -> None:
    with pytest.raises(KeyError, match="l1"):
        STRUCTURED_CRITERIA.get("l7")
    with pytest.raises(ValueError, match="criterion 'l7'; registered: .*l1"):
        structured_prune(_model(), 0.3, criterion="l7")
    with pytest.raises(ValueError, match="criterion 'l7'; registered: .*l1"):
        keep_indices(_model().convs[0], 0.3, criterion="l7")
    with pytest.raises(ValueError, match="criterion 'l1'; registered: .*magnitude"):
        global_prune_(_model(), 0.2, criterion="l1")  # a structured name is not unstructured


# ----------------------------------------------------------------------------- scoring / schedule


def test_num_kept_rounds_to_nearest_and_keeps_one() -> None:
    assert num_kept(64, 0.3) == 45  # 44.8 (the authors' int() would give 44)
    assert num_kept(512, 0.3) == 358  # 358.4
    assert num_kept(512, 0.7) == 154  # 153.6
    assert num_kept(10, 0.7) == 3  # (1 - 0.7) * 10 = 3.0000000000000004: no ceil jump
    assert num_kept(4, 0.9) == 1  # never an empty layer
    assert num_kept(7, 0.0) == 7


def test_keep_indices_are_top_l1_filters() -> None:
    model = _model()
    for conv in model.convs:
        for rate in (0.0, 0.3, 0.5, 0.7):
            n_keep = num_kept(conv.out_channels, rate)
            keep = keep_indices(conv, rate)
            assert keep.dtype == torch.int64
            assert torch.equal(keep, _top_l1(conv, n_keep))


def test_keep_indices_break_ties_by_lower_index() -> None:
    conv = nn.Conv2d(1, 6, 3)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 2.0, 1.0, 2.0, 1.0, 0.5])[:, None, None, None] / 9)
    # norms 1, 2, 1, 2, 1, 0.5: keep both 2s, then the lowest-index 1
    assert keep_indices(conv, 0.5).tolist() == [0, 1, 3]
    assert keep_indices(conv, 0.5).tolist() == [0, 1, 3]  # deterministic


def test_conv_names_and_spec_rates() -> None:
    model = _model()
    names = conv_names(model)
    assert len(names) == 13
    assert names[:3] == ["features.0", "features.3", "features.7"]
    assert [model.get_submodule(n) for n in names] == model.convs
    rates = spec_rates(model, 0.3)
    assert list(rates) == names
    assert [rates[n] for n in names] == [0.3] + [0.0] * 6 + [0.3] * 6


def test_remaining_fraction() -> None:
    assert remaining_fraction(0) == 1.0
    assert remaining_fraction(16) == pytest.approx(0.8**16)
    assert remaining_fraction(2, fraction=0.5) == 0.25


# ----------------------------------------------------------------------------- structured


def test_structured_copies_the_kept_weights_and_leaves_the_input_alone() -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rates = spec_rates(model, 0.5)
    pruned = structured_l1(model, rates)
    assert type(pruned) is type(model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k

    keep_in = torch.arange(3)
    for name, old, new in zip(conv_names(model), model.convs, pruned.convs, strict=True):
        keep = _top_l1(old, num_kept(old.out_channels, rates[name]))
        assert new.weight.shape == (len(keep), len(keep_in), 3, 3)
        assert torch.equal(new.weight, old.weight[keep][:, keep_in])
        assert torch.equal(new.bias, old.bias[keep])
        i = int(name.split(".")[1])
        old_bn, new_bn = model.features[i + 1], pruned.features[i + 1]
        for attr in ("weight", "bias", "running_mean", "running_var"):
            assert torch.equal(getattr(new_bn, attr), getattr(old_bn, attr)[keep]), attr
        assert new_bn.num_batches_tracked == old_bn.num_batches_tracked == 7
        keep_in = keep

    side = model.config.feature_size
    old_fc, new_fc = model.classifier[-1], pruned.classifier[-1]
    old_cols = old_fc.weight.reshape(NUM_CLASSES, -1, side, side)  # (K, C, s, s)
    new_cols = new_fc.weight.reshape(NUM_CLASSES, -1, side, side)
    assert torch.equal(new_cols, old_cols[:, keep_in])
    assert torch.equal(new_fc.bias, old_fc.bias)
    assert pruned.config.widths == tuple(c.out_channels for c in pruned.convs)
    assert pruned.config.num_classes == NUM_CLASSES and pruned.config.input_size == SIZE


@pytest.mark.parametrize("p", [0.3, 0.7])
def test_structured_equals_original_with_removed_channels_zeroed(p: float) -> None:
    model = _model().eval()
    rates = spec_rates(model, p)
    pruned = structured_l1(model, rates).eval()
    keeps = {
        int(name.split(".")[1]): _top_l1(conv, num_kept(conv.out_channels, rates[name]))
        for name, conv in zip(conv_names(model), model.convs, strict=True)
        if rates[name] > 0
    }
    images = _images()
    with torch.no_grad():
        full = model(images)
        with zero_removed_channels(model, keeps):
            zeroed = model(images)
        ours = pruned(images)
        assert torch.equal(model(images), full)  # hooks removed
    torch.testing.assert_close(ours, zeroed, atol=1e-5, rtol=1e-5)
    assert (ours - full).abs().max() > 1e-3  # the comparison is not vacuous


def _closed_form(widths: tuple[int, ...], num_classes: int, size: int) -> tuple[int, int]:
    """(params, MACs): convs Cin*Cout*9 + Cout, BN 2*Cout, linear in*out + out."""
    params = macs = 0
    c_in, side = 3, size
    for i, c_out in enumerate(widths, start=1):
        params += c_in * c_out * 9 + c_out + 2 * c_out
        macs += side * side * c_in * c_out * 9
        c_in = c_out
        if i in POOLS_AFTER_CONV:
            side //= 2
    linear_in = c_in * side * side
    return params + linear_in * num_classes + num_classes, macs + linear_in * num_classes


def test_structured_cost_shrinks_as_closed_form() -> None:
    model = _model()
    pruned = structured_l1(model, 0.5)
    widths = pruned.config.widths
    assert widths == (2, 4, 8, 8, 16, 16, 16, 16, 16, 16, 16, 16, 16)
    assert (count_params(model), count_macs(model)) == _closed_form(
        model.config.widths, NUM_CLASSES, SIZE
    )
    params, macs = _closed_form(widths, NUM_CLASSES, SIZE)
    assert count_params(pruned) == params < count_params(model)
    assert count_macs(pruned) == macs < count_macs(model)


def test_structured_checkpoint_round_trip(tmp_path) -> None:
    pruned = structured_l1(_model(), {"features.0": 0.5, "features.40": 0.25}).eval()
    assert pruned.config.widths[0] == 2 and pruned.config.widths[-1] == 24
    path = tmp_path / "pruned.pt"
    torch.save(make_checkpoint(pruned, CLASSES), path)
    restored, ckpt = load_model(path, CLASSES)
    restored.eval()
    assert restored.config == pruned.config
    for k, v in pruned.state_dict().items():
        assert torch.equal(restored.state_dict()[k], v), k
    with torch.no_grad():
        torch.testing.assert_close(restored(_images()), pruned(_images()), atol=0, rtol=0)


def test_structured_rejects_bad_rates_and_unknown_layers() -> None:
    model = _model()
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"'features\.37'.*\[0, 1\)"):
            structured_l1(model, {"features.37": bad})
    with pytest.raises(ValueError, match=r"\[0, 1\), got 1\.5"):
        structured_l1(model, 1.5)
    with pytest.raises(ValueError, match=r"features\.1'.*valid names: features\.0, features\.3"):
        structured_l1(model, {"features.1": 0.5, "features.0": 0.5})


def test_structured_rate_zero_is_an_exact_copy() -> None:
    model = _model().eval()
    copy = structured_l1(model, 0.0).eval()
    assert copy.config == model.config
    with torch.no_grad():
        assert torch.equal(copy(_images()), model(_images()))


# ----------------------------------------------------------------------------- unstructured


def _zeros(model: nn.Module) -> int:
    return sum(int((conv.weight_mask == 0).sum()) for conv in model.convs)


def test_global_magnitude_follows_torch_rounding_recursion() -> None:
    model = _model()
    total = sum(conv.weight.numel() for conv in model.convs)
    remaining = total
    for k in range(1, 6):
        global_magnitude_(model, 0.2)
        remaining -= round(0.2 * remaining)  # torch: round(amount * unpruned entries)
        assert total - _zeros(model) == remaining
        assert abs(remaining - total * remaining_fraction(k)) <= k
        assert sparsity(model) == pytest.approx(1 - remaining / total)
    # global threshold: the layers end at clearly different sparsities
    per_layer = [float((conv.weight_mask == 0).float().mean()) for conv in model.convs]
    assert max(per_layer) - min(per_layer) > 0.2
    # no training in between: the kept weights are the largest magnitudes over all convs
    kept = torch.cat([c.weight_orig[c.weight_mask == 1].abs() for c in model.convs])
    dropped = torch.cat([c.weight_orig[c.weight_mask == 0].abs() for c in model.convs])
    assert kept.min() >= dropped.max()


def test_global_magnitude_rejects_bad_amount() -> None:
    with pytest.raises(ValueError, match="1.5"):
        global_magnitude_(_model(), 1.5)


def test_pruned_weights_stay_zero_through_sgd() -> None:
    model = _model()
    for _ in range(3):
        global_magnitude_(model, 0.2)
    masks = [conv.weight_mask.clone() for conv in model.convs]
    orig_before = [conv.weight_orig.detach().clone() for conv in model.convs]
    before = sparsity(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2)
    labels = torch.rand(4, NUM_CLASSES, generator=torch.Generator().manual_seed(2)) > 0.5
    model.train()
    for _ in range(4):
        loss = F.multilabel_soft_margin_loss(model(_images()), labels.float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        model(_images())  # refresh the derived `weight` attributes
    for conv, mask, orig in zip(model.convs, masks, orig_before, strict=True):
        assert torch.equal(conv.weight_mask, mask)
        assert (conv.weight[mask == 0] == 0).all()
        assert not torch.equal(conv.weight_orig[mask == 1], orig[mask == 1])  # it did train
    assert sparsity(model) == before


def test_masked_checkpoint_round_trip_and_resume(tmp_path) -> None:
    model = _model().eval()
    total = sum(conv.weight.numel() for conv in model.convs)
    for _ in range(2):
        global_magnitude_(model, 0.2)
    path = tmp_path / "masked.pt"
    torch.save(make_checkpoint(model, CLASSES), path)
    assert "features.0.weight_mask" in torch.load(path, weights_only=False)["model_state"]

    restored, _ = load_model(path, CLASSES)  # fresh unmasked build: masks re-attached
    restored.eval()
    assert has_masks(restored)
    for old, new in zip(model.convs, restored.convs, strict=True):
        assert torch.equal(new.weight_mask, old.weight_mask)
        assert torch.equal(new.weight_orig, old.weight_orig)
        assert torch.equal(new.weight, old.weight_orig * old.weight_mask)  # current pre-forward
    assert sparsity(restored) == sparsity(model)
    with torch.no_grad():
        torch.testing.assert_close(restored(_images()), model(_images()), atol=0, rtol=0)

    # resume mid-schedule: the next iteration prunes the same weights in both
    global_magnitude_(model, 0.2)
    global_magnitude_(restored, 0.2)
    remaining = total
    for _ in range(3):
        remaining -= round(0.2 * remaining)
    assert total - _zeros(restored) == remaining
    for old, new in zip(model.convs, restored.convs, strict=True):
        assert torch.equal(new.weight_mask, old.weight_mask)


def test_attach_masks_and_load_state_into_fresh_model() -> None:
    model = global_magnitude_(_model(), 0.5)
    state = model.state_dict()
    fresh = build_model(model.config)
    assert not has_masks(fresh)
    load_state_(fresh, state)
    assert has_masks(fresh)
    assert set(fresh.state_dict()) == set(state)
    attach_masks_(fresh, state)  # already masked: a no-op
    assert sum(len(c._forward_pre_hooks) for c in fresh.convs) == 13
    bad = {**state, "features.0.weight_mask": torch.ones(1, 1, 3, 3)}
    with pytest.raises(ValueError, match=r"features\.0\.weight_mask: mask shape"):
        attach_masks_(build_model(model.config), bad)


def test_make_permanent_keeps_outputs_and_drops_reparametrisation() -> None:
    model = _model().eval()
    global_magnitude_(model, 0.5)
    with torch.no_grad():
        expected = model(_images())
    before = sparsity(model)
    make_permanent_(model)
    assert not has_masks(model)
    keys = model.state_dict().keys()
    assert not any(k.endswith(("_orig", "_mask")) for k in keys)
    assert all(isinstance(conv.weight, nn.Parameter) for conv in model.convs)
    assert sparsity(model) == before
    with torch.no_grad():
        assert torch.equal(model(_images()), expected)
    plain = build_model(model.config).eval()
    load_state_(plain, model.state_dict())  # loads into an unmasked model
    with torch.no_grad():
        assert torch.equal(plain(_images()), expected)


def test_structured_after_unstructured_copies_masked_weights_as_zeros() -> None:
    model = global_magnitude_(_model(), 0.5)
    pruned = structured_l1(model, 0.3)
    assert not has_masks(pruned)
    zeros = sum(int((c.weight == 0).sum()) for c in pruned.convs)
    assert zeros > 0
    assert math.isclose(sparsity(pruned), zeros / sum(c.weight.numel() for c in pruned.convs))


def test_optimizer_state_resumes_into_a_fresh_model() -> None:
    """`engine.fit` resumes by building the optimiser on the model it is given, then loading
    the saved optimiser state by position: a fresh model with re-attached masks must match."""
    model = global_magnitude_(_model(), 0.5)
    names = [n for n, _ in model.named_parameters()]
    fresh_names = [n for n, _ in build_model(model.config).named_parameters()]
    conv_weights = {f"{name}.weight" for name in conv_names(model)}
    assert names == [n + "_orig" if n in conv_weights else n for n in fresh_names]  # same order
    labels = torch.ones(4, NUM_CLASSES)

    def step(net: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        torch.manual_seed(3)  # same dropout in both runs
        loss = F.multilabel_soft_margin_loss(net(_images()), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2)
    step(model, optimizer)
    # deep copies stand in for torch.save / torch.load (no tensor shared with the live run)
    saved_model = copy.deepcopy(model.state_dict())
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    fresh = build_model(model.config)
    fresh_optimizer = torch.optim.SGD(fresh.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2)
    load_state_(fresh, saved_model)
    fresh_optimizer.load_state_dict(saved_optimizer)
    step(model, optimizer)
    step(fresh, fresh_optimizer)
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


# ----------------------------------------------------------------------------- default criteria
# The study's numbers must not move: the default criteria against naive re-computations of the
# rules they implement, on weights with ties (structured) and through training (unstructured).


def _reference_structured(model: nn.Module, rates: dict[str, float]) -> dict[str, torch.Tensor]:
    """Naive structured L1 pruning on the state dict: Python sorts, index lists, no registry."""
    state = model.state_dict()

    def current(key: str) -> torch.Tensor:  # what the forward uses (masked entries as zeros)
        if key + "_mask" in state:
            return state[key + "_orig"] * state[key + "_mask"]
        return state[key]

    out: dict[str, torch.Tensor] = {}
    keep_in = [0, 1, 2]
    for name in conv_names(model):
        weight = current(f"{name}.weight")
        c_out = weight.shape[0]
        norms = [float(weight[o].abs().sum()) for o in range(c_out)]
        n_keep = max(1, round((1.0 - rates[name]) * c_out))
        keep = sorted(sorted(range(c_out), key=lambda o: (-norms[o], o))[:n_keep])
        out[f"{name}.weight"] = weight[keep][:, keep_in]
        out[f"{name}.bias"] = current(f"{name}.bias")[keep]
        bn = f"features.{int(name.split('.')[1]) + 1}"
        for attr in ("weight", "bias", "running_mean", "running_var"):
            out[f"{bn}.{attr}"] = current(f"{bn}.{attr}")[keep]
        out[f"{bn}.num_batches_tracked"] = state[f"{bn}.num_batches_tracked"]
        keep_in = keep
    side = model.config.feature_size
    fc = f"classifier.{len(model.classifier) - 1}"
    columns = [c * side * side + j for c in keep_in for j in range(side * side)]
    out[f"{fc}.weight"] = current(f"{fc}.weight")[:, columns]
    out[f"{fc}.bias"] = current(f"{fc}.bias")
    return out


@pytest.mark.parametrize("masked", [False, True])
def test_structured_default_criterion_equals_naive_l1_with_ties(masked: bool) -> None:
    model = _model()
    with torch.no_grad():
        for conv in model.convs:  # coarse weights: many filters share an L1 norm
            conv.weight.copy_((conv.weight * 4).round() / 4)
    ties = 0
    for conv in model.convs:
        norms = conv.weight.detach().abs().sum((1, 2, 3)).sort(descending=True).values
        n_keep = num_kept(conv.out_channels, 0.5)
        ties += bool(norms[n_keep - 1] == norms[n_keep])
    assert ties > 0  # the tie rule decides some filters: the comparison is not vacuous
    if masked:
        global_magnitude_(model, 0.5)
    for rates in (spec_rates(model, 0.5), {name: 0.3 for name in conv_names(model)}):
        expected = _reference_structured(model, rates)
        for pruned in (structured_prune(model, rates), structured_l1(model, rates, "l1")):
            state = pruned.state_dict()
            assert pruned.config.widths == tuple(
                expected[f"{name}.bias"].numel() for name in conv_names(model)
            )
            assert set(state) == set(expected)
            for key, value in expected.items():
                assert state[key].dtype == value.dtype and torch.equal(state[key], value), key


def _sgd_step(model: nn.Module, seed: int) -> None:
    """One training step; afterwards the derived `weight` of a masked conv is stale."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2)
    labels = torch.rand(4, NUM_CLASSES, generator=torch.Generator().manual_seed(seed)) > 0.5
    loss = F.multilabel_soft_margin_loss(model(_images(seed=seed)), labels.float())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_unstructured_default_criterion_equals_naive_global_magnitude() -> None:
    """Each round masks the round(0.2 * remaining) smallest current |w| over all convs."""
    model = _model().train()
    masks = [torch.ones_like(conv.weight) for conv in model.convs]
    for k in range(4):
        weights = [
            conv.weight_orig * conv.weight_mask if has_masks(conv) else conv.weight
            for conv in model.convs
        ]
        flat = torch.cat([w.detach().abs().reshape(-1) for w in weights])  # (N,)
        alive = torch.cat([m.reshape(-1) for m in masks]).bool()  # (N,)
        candidates = alive.nonzero().squeeze(1)  # (R,)
        values = flat[candidates]
        n_prune = round(0.2 * candidates.numel())
        order = values.argsort()  # (R,)
        assert values[order[n_prune - 1]] < values[order[n_prune]]  # no tie at the cut
        expected = alive.clone()
        expected[candidates[order[:n_prune]]] = False

        global_prune_(model, 0.2) if k % 2 else global_magnitude_(model, 0.2)
        got = torch.cat([conv.weight_mask.reshape(-1) for conv in model.convs]).bool()
        assert torch.equal(got, expected), k
        masks = [conv.weight_mask.clone() for conv in model.convs]
        _sgd_step(model, seed=k)


# ----------------------------------------------------------------------------- plugin criteria


@pytest.fixture
def scratch_criteria(monkeypatch: pytest.MonkeyPatch) -> None:
    """Criteria a test registers are gone after it: both registries' dicts are restored."""
    for registry in (STRUCTURED_CRITERIA, UNSTRUCTURED_CRITERIA):
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))


def test_a_registered_structured_criterion_selects_its_filters(scratch_criteria) -> None:
    @STRUCTURED_CRITERIA.register("test_l2")
    def l2_filter_norm(weight: torch.Tensor) -> torch.Tensor:
        return weight.pow(2).sum(dim=(1, 2, 3)).sqrt()  # (C_out,)

    conv = nn.Conv2d(1, 3, 3)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 3.0  # L1 3, L2 3
        conv.weight[1] = 0.5  # L1 4.5, L2 1.5
        conv.weight[2, 0, 0, 0] = 2.0  # L1 2, L2 2
    assert keep_indices(conv, 0.5).tolist() == [0, 1]
    assert keep_indices(conv, 0.5, criterion="test_l2").tolist() == [0, 2]

    model = _model()
    by_l1 = structured_prune(model, 0.5)
    by_l2 = structured_prune(model, 0.5, criterion="test_l2")
    assert by_l2.config.widths == by_l1.config.widths  # the rates set the widths
    keep_in = torch.arange(3)
    changed = 0
    for old, new, other in zip(model.convs, by_l2.convs, by_l1.convs, strict=True):
        norms = old.weight.detach().pow(2).sum((1, 2, 3))
        keep = norms.topk(new.out_channels).indices.sort().values
        assert torch.equal(new.weight, old.weight[keep][:, keep_in])
        changed += not torch.equal(new.weight, other.weight)
        keep_in = keep
    assert changed > 0


def test_a_registered_unstructured_criterion_selects_its_weights(scratch_criteria) -> None:
    @UNSTRUCTURED_CRITERIA.register("test_layer_normalised")
    def layer_normalised(weight: torch.Tensor) -> torch.Tensor:
        return weight.abs() / weight.abs().mean()  # (C_out, C_in, k, k)

    by_magnitude = global_prune_(_model(), 0.5)
    model = global_prune_(_model(), 0.5, criterion="test_layer_normalised")
    scores = torch.cat(
        [
            (c.weight_orig.abs() / c.weight_orig.abs().mean()).detach().reshape(-1)
            for c in model.convs
        ]
    )
    n_prune = round(0.5 * scores.numel())
    order = scores.argsort()  # (N,)
    assert scores[order[n_prune - 1]] < scores[order[n_prune]]  # no tie at the cut
    expected = torch.ones_like(scores)
    expected[order[:n_prune]] = 0.0
    got = torch.cat([conv.weight_mask.reshape(-1) for conv in model.convs])
    assert torch.equal(got, expected)
    other = torch.cat([conv.weight_mask.reshape(-1) for conv in by_magnitude.convs])
    assert (got != other).sum() > 0.01 * got.numel()  # not magnitude under another name


def test_criteria_with_malformed_scores_are_refused_before_any_cut(scratch_criteria) -> None:
    STRUCTURED_CRITERIA.register("test_scalar")(lambda weight: weight.sum())
    UNSTRUCTURED_CRITERIA.register("test_signed")(lambda weight: weight)
    UNSTRUCTURED_CRITERIA.register("test_per_filter")(lambda weight: weight.abs().sum((1, 2, 3)))
    with pytest.raises(ValueError, match=r"'test_scalar' returned shape \(\), expected \(4,\)"):
        structured_prune(_model(), 0.3, criterion="test_scalar")
    for name, message in [("test_signed", "not finite and >= 0"), ("test_per_filter", "shape")]:
        model = _model()
        with pytest.raises(ValueError, match=message):
            global_prune_(model, 0.2, criterion=name)
        assert not has_masks(model)
