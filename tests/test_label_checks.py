"""Label-scarce label maps: class ids outside [0, num_classes) (other than the ignore index) are refused when
loaded, naming the file and the values, before any cast (issue 27)."""
import re

import numpy as np
import pytest

NUM = 21  # horse_21


@pytest.fixture()
def horse_root(tmp_path):
    from mmseg_gate.testing.synthetic_data import make_ddpm_segmentation_like
    return make_ddpm_segmentation_like(tmp_path, 'horse_21', num_train=1, num_test=1, size=16)


def _first_item(root, **load_kw):
    from mmseg.registry import DATASETS
    from mmseg.utils import register_all_modules
    import mmseg_gate  # noqa: F401
    register_all_modules()
    ds = DATASETS.build(dict(type='Horse21Dataset', data_root=str(root), split='train',
                             pipeline=[dict(type='LoadNpyAnnotations', **load_kw)]))
    return ds, ds.get_data_info(0)['seg_map_path']


def _write(path, label):
    np.save(path, label)
    return path


def test_id_over_255_in_an_int64_map_is_refused_not_cast_to_uint8(horse_root):
    ds, path = _first_item(horse_root)
    label = np.zeros((16, 16), np.int64)
    label[3, 4] = 260  # uint8 cast: 4, a valid class
    _write(path, label)
    want = rf'{re.escape(path)}: class ids 260 \(1 pixels\) outside \[0, {NUM}\).*255 = ignore'
    with pytest.raises(ValueError, match=want):
        ds[0]


def test_id_past_the_set_is_refused_naming_the_file(horse_root):
    ds, path = _first_item(horse_root)
    label = np.full((16, 16), 3, np.uint8)
    label[:2] = 30
    label[5, 5] = 21
    _write(path, label)
    want = rf'{re.escape(path)}: class ids 21 \(1 pixels\), 30 \(32 pixels\) outside \[0, 21\)'
    with pytest.raises(ValueError, match=want):
        ds[0]


def test_valid_ids_and_the_ignore_index_load_whatever_the_dtype(horse_root):
    ds, path = _first_item(horse_root)
    label = np.arange(256, dtype=np.int64).reshape(16, 16) % NUM
    label[0, :3] = 255
    _write(path, label)
    gt = ds[0]['gt_seg_map']
    assert gt.dtype == np.uint8 and np.array_equal(gt, label.astype(np.uint8))
    _write(path, label.astype(np.float32))  # integral floats are class ids too
    assert np.array_equal(ds[0]['gt_seg_map'], gt)


def test_explicit_num_classes_negative_and_fractional_values(tmp_path):
    from mmseg_gate.datasets.ddpm_segmentation import LoadNpyAnnotations
    path = str(tmp_path / 'x.npy')
    _write(path, np.array([[0, 4], [7, 255]], np.int32))
    with pytest.raises(ValueError, match=r'class ids 7 \(1 pixels\) outside \[0, 5\) \(the set has 5 classes'):
        LoadNpyAnnotations(num_classes=5).transform(dict(seg_map_path=path))
    assert LoadNpyAnnotations(num_classes=8).transform(dict(seg_map_path=path))['gt_seg_map'].max() == 255
    _write(path, np.array([[0, -1]], np.int16))  # uint8 cast: 255, the ignore index
    with pytest.raises(ValueError, match=r'class ids -1 \(1 pixels\) outside \[0, 256\) \(label maps are uint8'):
        LoadNpyAnnotations().transform(dict(seg_map_path=path))
    _write(path, np.array([[0, 2.5]], np.float32))
    with pytest.raises(ValueError, match=r'non-integer values \[2.5\]'):
        LoadNpyAnnotations().transform(dict(seg_map_path=path))
    with pytest.raises(ValueError, match='ignore_index=-1'):
        LoadNpyAnnotations(ignore_index=-1)
