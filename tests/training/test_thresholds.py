import pytest
import torch

from napari_mousesegment.inference.ct import vote
from napari_mousesegment.models.mosnet import MOSnet, MOSnetConfig
from napari_mousesegment.training.slices import SliceSet
from napari_mousesegment.training.thresholds import (OFFSETS, VoteTrials, _ascend, choose_thresholds, validation_logits,
                                                     vote_dice)


def test_vote_takes_the_organ_most_above_its_own_threshold():
    logits = torch.tensor([2.0, 1.0, -3.0])[None, :, None, None]  # probabilities 0.88, 0.73, 0.05
    assert int(vote(logits, torch.zeros(3))) == 1
    assert int(vote(logits, torch.tensor([2.5, 0.0, 0.0]))) == 2  # organ 0 is now below its threshold
    assert int(vote(logits, torch.tensor([2.5, 1.5, 0.0]))) == 0  # none above


def test_thresholds_recover_those_the_truth_was_made_with():
    torch.manual_seed(0)
    model = MOSnet(MOSnetConfig(organs=["a", "b", "c"], width=4, depth=2, image_size=32)).eval()
    n = 24
    images = torch.rand(n, 1, 32, 32).half()
    with torch.no_grad():  # logits spread over a few units around 1.5, as a trained model's are
        model.seg_head.weight.mul_(1500)
        spread = model.segment(images.float(), torch.zeros(n, dtype=torch.long))
        model.seg_head.bias.add_(torch.tensor([1.5, -1.0, -1.0]) - spread.mean(dim=(0, 2, 3)))
    data = SliceSet(images, torch.zeros(n, 3, 32, 32, dtype=torch.bool),
                    torch.tensor([[True, False, False]]).expand(n, -1).clone(), torch.zeros(n, dtype=torch.long),
                    ["scan"] * n)
    logits = validation_logits(model, data, torch.device("cpu"))
    assert 0.5 < float(logits[:, 0].std()) < 5
    truth = vote(logits, torch.tensor([1.5, 0.0, 0.0])) == 1  # organ a is "really" there only above 0.82
    assert truth.any() and (vote(logits, torch.zeros(3)) == 1).sum() > truth.sum()  # 0.5 over-segments
    data.organ_masks[:, 0] = truth
    thresholds, before, after = choose_thresholds(model, data, torch.device("cpu"))
    assert thresholds["a"] == pytest.approx(float(torch.sigmoid(torch.tensor(1.5))), abs=1e-3)
    assert after == pytest.approx(1.0) and before < 0.99
    assert before == pytest.approx(vote_dice(logits, data, torch.zeros(3)))


def test_tolerance_takes_the_lowest_threshold_on_a_flat_top():
    """One stray background pixel at logit 1 makes 0.73 the best threshold by 0.0005 of Dice; with
    a tolerance the lowest threshold of the plateau is taken instead, and without one the best."""
    logits = torch.full((1, 1, 40, 50), -3.0)
    truth = torch.zeros(1, 1, 40, 50, dtype=torch.bool)
    truth[0, 0, :20] = True
    logits[truth] = 4.0
    logits[0, 0, 39, 49] = 1.0  # background, but above 0.5
    data = SliceSet(torch.zeros(1, 1, 40, 50).half(), truth, torch.ones(1, 1, dtype=torch.bool),
                    torch.zeros(1, dtype=torch.long), ["scan"])
    best, start, top = _ascend(logits, data, torch.zeros(1), [0], passes=2)
    assert float(best[0]) == 1.0 and top == pytest.approx(1.0) and start < 1.0
    low, _, score = _ascend(logits, data, torch.zeros(1), [0], passes=2, tolerance=0.002)
    assert float(low[0]) == float(OFFSETS[0]) < 0 and 1.0 - 0.002 <= score < 1.0


def test_vote_trials_count_what_one_vote_per_value_scores():
    """The histogram that tries every threshold of one organ at once gives vote_dice's score for
    each, with organs annotated on some slices only, one never annotated, and one without truth."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 4, 16, 16, generator=generator) * 3 - 1
    truth = torch.rand(12, 4, 16, 16, generator=generator) > 0.8
    truth[:, 2] = False
    annotated = torch.rand(12, 4, generator=generator) > 0.3
    annotated[:, 3] = False
    data = SliceSet(torch.zeros(12, 1, 16, 16).half(), truth, annotated, torch.zeros(12, dtype=torch.long),
                    ["scan"] * 12)
    trials = VoteTrials(logits, data)
    offsets = torch.tensor([0.5, -0.25, 2.0, 1.0])
    for organ in range(4):
        fast = trials.scores(offsets, organ)
        for t, value in enumerate(OFFSETS):
            tried = offsets.clone()
            tried[organ] = float(value)
            assert float(fast[t]) == pytest.approx(vote_dice(logits, data, tried), abs=1e-12)
    assert len(set(trials.scores(offsets, 0).tolist())) > 5  # the trials do differ
    data.organ_masks[:] = False  # nothing to score: 0 for every value, as vote_dice, not NaN
    empty = VoteTrials(logits, data).scores(offsets, 1).tolist()
    assert empty == [vote_dice(logits, data, offsets)] * len(OFFSETS) == [0.0] * len(OFFSETS)
