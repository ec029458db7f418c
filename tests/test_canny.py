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


def test_canny_follows_a_long_winding_weak_edge():
    """A weak spiral band (gradients between the thresholds) fed by one strong end: OpenCV keeps all
    of it; growing edges must not stop after H + W steps (the old bound kept a quarter of it)."""
    import numpy as np
    img = np.full((96, 96), 100, np.uint8)
    pts, r, a = [], 44.0, 0.0
    while r > 6:  # ~3 turns, 14 px apart
        pts.append((48 + r * np.cos(a), 48 + r * np.sin(a)))
        a += 0.02
        r -= 0.02 * 14 / (2 * np.pi)
    cv2.polylines(img, [np.round(pts).astype(np.int32)], False, 130, 5)
    x0, y0 = np.round(pts[0]).astype(int)
    cv2.circle(img, (int(x0), int(y0)), 4, 255, -1)  # the strong seed at the outer end
    img = np.ascontiguousarray(np.stack([img] * 3, -1))
    ref = cv2.Canny(img, 100, 200) > 0
    assert ref.sum() > 4 * (96 + 96), 'the spiral must be far longer than the old H + W step bound'
    assert (cv2.Canny(img, 199, 200) > 0).sum() < 50, 'the spiral must be weak: only hysteresis keeps it'
    ours = canny(torch.from_numpy(img).permute(2, 0, 1)[None].float(), 100, 200)[0, 0].numpy() > 0
    iou = (ref & ours).sum() / (ref | ours).sum()
    assert iou > 0.98, iou
