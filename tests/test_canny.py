import cv2
import pytest
import torch

from mmseg_gate.models.conditions import build_condition, canny


@pytest.mark.parametrize('low, high', [(100, 200), (50, 150)])
def test_canny_matches_opencv(image_uint8, low, high):
    ref = cv2.Canny(image_uint8, low, high) > 0
    ours = canny(torch.from_numpy(image_uint8).permute(2, 0, 1)[None].float(), low, high)
    assert ours.shape == (1, 3, *image_uint8.shape[:2])
    ours = ours[0, 0].numpy() > 0
    assert ref.sum() > 50, 'the picture has too few edges for a meaningful comparison'
    iou = (ref & ours).sum() / (ref | ours).sum()
    assert iou > 0.98, iou


def test_canny_batch_is_per_image(image_uint8):
    x = torch.from_numpy(image_uint8).permute(2, 0, 1)[None].float()
    both = canny(torch.cat([x, x.flip(-1)]))
    torch.testing.assert_close(both[1], canny(x.flip(-1))[0])


def test_unknown_condition_message():
    with pytest.raises(ValueError, match="unknown condition type 'seg'"):
        build_condition('seg', torch.zeros(1, 3, 8, 8))
