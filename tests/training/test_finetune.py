import torch

from napari_mousesegment.active import worker
from napari_mousesegment.active.worker import read_loss_weights
from napari_mousesegment.models.mosnet import MOSnet, MOSnetConfig
from napari_mousesegment.organs import CT_ORGANS
from napari_mousesegment.training.finetune import FineTuneSettings, fine_tune_mosnet


def _round(dice_weight: float, exclusion_weight: float = 0.0, annotate_all: bool = True) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = MOSnet(MOSnetConfig(organs=list(CT_ORGANS), width=4, depth=2, image_size=32))
    images = torch.rand(6, 1, 32, 32)
    masks = torch.zeros(6, len(CT_ORGANS), 32, 32)
    masks[:, 0, 8:20, 8:20] = 1
    annotated = torch.ones(6, len(CT_ORGANS), dtype=torch.bool)
    if not annotate_all:  # replayed slices of a dataset that labels the first organ only
        annotated[3:, 1:] = False
    tuned = fine_tune_mosnet(model, images, masks, annotated,
                             torch.zeros(6, dtype=torch.long), torch.ones(len(CT_ORGANS)),
                             FineTuneSettings(epochs=1, steps_per_epoch=2, batch_size=2),
                             dice_weight=dice_weight, exclusion_weight=exclusion_weight)
    return tuned.state_dict()


def test_a_round_trains_with_the_dice_term_the_model_was_trained_with(monkeypatch):
    plain, with_dice = _round(0.0), _round(1.0)
    assert any(not torch.equal(plain[k], with_dice[k]) for k in plain if plain[k].is_floating_point())
    assert all(torch.equal(plain[k], _round(0.0)[k]) for k in plain)  # the difference is the term, not chance

    configs = {"dice": {"training": {"settings": {"dice_weight": 0.5, "exclusion_weight": 2}}},
               "paper": {"training": {"beta": [1.0]}}}
    monkeypatch.setattr(worker, "model_config", configs.__getitem__)
    assert read_loss_weights("dice") == {"dice_weight": 0.5, "exclusion_weight": 2.0}
    assert read_loss_weights("paper") == {"dice_weight": 0.0, "exclusion_weight": 0.0}


def test_a_round_trains_with_the_exclusion_term_on_partly_labelled_replays():
    plain, excluded = _round(0.0, 0.0, annotate_all=False), _round(0.0, 1.0, annotate_all=False)
    assert any(not torch.equal(plain[k], excluded[k]) for k in plain if plain[k].is_floating_point())
    everything = _round(0.0, 0.0), _round(0.0, 1.0)  # with every organ labelled the term is empty
    assert all(torch.equal(everything[0][k], everything[1][k]) for k in everything[0])
