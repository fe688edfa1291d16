import math

import torch

from medzoo.metrics import confusion_matrix, segmentation_metrics


def _logits(pred, num_classes):
    return torch.nn.functional.one_hot(pred, num_classes).permute(0, 3, 1, 2).float()


def test_dice_and_iou_on_hand_made_masks():
    truth = torch.tensor([[[0, 1, 1, 2],
                           [0, 1, 1, 2],
                           [0, 0, 3, 3]]])  # 3 = outside the ROI (ignored)
    pred = torch.tensor([[[0, 1, 0, 2],
                          [1, 1, 1, 2],
                          [0, 0, 2, 1]]])
    cm = confusion_matrix(_logits(pred, 4), truth, 4, ignore_index=3)
    m = segmentation_metrics(cm, ["background", "tumor", "stroma", "outside"], ignore_index=3)
    # tumor: truth 4 px, pred 4 px (incl. one background px), overlap 3 -> Dice 6/8, IoU 3/5
    assert math.isclose(m["dice_tumor"], 0.75) and math.isclose(m["iou_tumor"], 0.6)
    # stroma: truth 2, pred 2, overlap 2 (the ignored pixels predicted as stroma/tumor do not count)
    assert m["dice_stroma"] == 1.0 and m["iou_stroma"] == 1.0
    # background: truth 4, pred 4, overlap 3 -> reported but not in the mean
    assert math.isclose(m["dice_background"], 0.75)
    assert math.isclose(m["dice"], (0.75 + 1.0) / 2) and math.isclose(m["iou"], (0.6 + 1.0) / 2)
    assert "dice_outside" not in m
    assert math.isclose(m["pixel_accuracy"], 8 / 10)


def test_absent_class_is_left_out_of_the_mean_not_counted_perfect():
    truth = torch.zeros(1, 2, 2, dtype=torch.long)
    truth[0, 0, 0] = 1
    pred = truth.clone()
    m = segmentation_metrics(confusion_matrix(_logits(pred, 3), truth, 3), ["background", "lesion", "cyst"])
    assert m["dice"] == 1.0 and math.isnan(m["dice_cyst"])
