"""Darknet's augmentation: labels follow the pixels; .data/labels layout; the batch plan."""

from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch

from darkcfg.datafile import label_path_for, list_images, parse_data_file
from darkcfg.errors import DarkcfgError
from darkcfg.train.augment import AugParams, augment_image, mosaic, transform_boxes
from darkcfg.train.dataset import BatchPlan, DetectionDataset, collate, random_size, read_labels
from darkcfg.train.settings import TrainSettings

HEAVY = TrainSettings(jitter=0.3, resize=1.5, flip=1, hue=0.1, saturation=1.5, exposure=1.5, classes=3)


def box_image(ow, oh, box, color=(255, 255, 255)):
    """A black image with one filled rectangle at the normalized (x, y, w, h) ``box``."""
    img = np.zeros((oh, ow, 3), np.uint8)
    x, y, w, h = box
    x0, y0 = int(round((x - w / 2) * ow)), int(round((y - h / 2) * oh))
    x1, y1 = int(round((x + w / 2) * ow)), int(round((y + h / 2) * oh))
    img[y0:y1, x0:x1] = color
    return img


def bright_bbox(img, thresh=100):
    ys, xs = np.nonzero(img.max(axis=2) > thresh)
    if len(xs) == 0:
        return None
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def label_bbox(b, w, h):
    x, y, bw, bh = b[:4]
    return (x - bw / 2) * w, (y - bh / 2) * h, (x + bw / 2) * w, (y + bh / 2) * h


@pytest.mark.parametrize("letter_box", [0, 1])
def test_box_follows_pixels_through_crop_resize_flip_colour(letter_box):
    s = replace(HEAVY, letter_box=letter_box)
    src_box = (0.3, 0.6, 0.25, 0.2)
    img = box_image(200, 150, src_box)
    labels = np.array([[*src_box, 1]], np.float32)
    flips = kept = 0
    for seed in range(60):
        rng = np.random.default_rng(seed)
        out, boxes, p = augment_image(img, labels, 96, 64, s, rng)
        assert out.shape == (64, 96, 3) and out.dtype == np.uint8
        flips += p.flip
        seen = bright_bbox(out)
        if len(boxes) == 0:  # cropped away (or thinner than a network pixel): no object left in view
            assert seen is None or (seen[2] - seen[0]) * (seen[3] - seen[1]) <= 4
            continue
        kept += 1
        assert boxes[0, 4] == 1
        lb = label_bbox(boxes[0], 96, 64)
        assert seen is not None
        assert np.allclose(seen, lb, atol=1.6), (seed, p, seen, lb)
    assert kept >= 45 and 10 <= flips <= 50


def test_transform_boxes_hand_values():
    p = AugParams(pleft=10, pright=10, ptop=-25, pbot=25)   # 80 x 100 window of a 100 x 100 image
    b = np.array([[0.5, 0.5, 0.2, 0.2, 2]], np.float32)
    out = transform_boxes(b, p, 100, 100, 64, 64, classes=3, max_boxes=10)
    # x: (40-10)/80 .. (60-10)/80 -> centre 0.5, width 0.25; y: (40+25)/100 .. (60+25)/100
    np.testing.assert_allclose(out, [[0.5, 0.75, 0.25, 0.2, 2]], atol=1e-6)
    out = transform_boxes(b, replace(p, flip=True), 100, 100, 64, 64, classes=3, max_boxes=10)
    np.testing.assert_allclose(out[0, :4], [0.5, 0.75, 0.25, 0.2], atol=1e-6)
    far = np.array([[0.95, 0.5, 0.05, 0.1, 0], [0.5, 0.5, 0.1, 0.1, 7], [0, 0, 0.1, 0.1, 0]], np.float32)
    # first: entirely right of the window (x 92.5..97.5 > 90); second: class 7 >= 3; third: Darknet's "x=y=0"
    assert transform_boxes(far, p, 100, 100, 64, 64, classes=3, max_boxes=10).shape == (0, 5)


def test_blur_background_keeps_boxes_sharp_and_strong_blur_blurs_all():
    from darkcfg.train.augment import blur_image

    img = box_image(64, 64, (0.5, 0.5, 0.25, 0.25))
    img[::2, ::2] = 200  # texture so a blur shows everywhere
    boxes = np.array([[0.5, 0.5, 0.25, 0.25, 0]], np.float32)
    bg = blur_image(img, 1, boxes)
    assert np.array_equal(bg[24:40, 24:40], img[24:40, 24:40]) and not np.array_equal(bg[:16], img[:16])
    full = blur_image(img, 5, boxes)
    assert not np.array_equal(full[24:40, 24:40], img[24:40, 24:40])
    s = replace(HEAVY, blur=9)
    outs = [augment_image(img, boxes, 64, 64, s, np.random.default_rng(k))[2].blur for k in range(30)]
    # none / background / whole image, the whole-image kernel capped at 1/8 of the smallest box (Darknet)
    assert {0, 1} <= set(outs) and max(outs) > 1 and all(b in (0, 1) or 1 < b <= 9 for b in outs)


def test_mosaic_boxes_follow_pixels():
    s = replace(HEAVY, mosaic=1, mosaic_bound=1, blur=0)
    boxes = [(0.5, 0.5, 0.3, 0.3), (0.2, 0.3, 0.2, 0.4), (0.7, 0.7, 0.35, 0.25), (0.4, 0.6, 0.5, 0.3)]
    imgs = [(box_image(160, 120, b), np.array([[*b, i % 3]], np.float32)) for i, b in enumerate(boxes)]
    ious = []
    for seed in range(25):
        rng = np.random.default_rng(seed)
        out, lab = mosaic(lambda i: imgs[i], [0, 1, 2, 3], 96, 96, s, rng)
        bright = out.max(axis=2) > 100
        mask = np.zeros_like(bright)
        for b in lab:
            x0, y0, x1, y1 = (int(round(v)) for v in label_bbox(b, 96, 96))
            mask[y0:y1, x0:x1] = True
        union = (bright | mask).sum()
        if union:
            ious.append((bright & mask).sum() / union)
    assert len(ious) >= 20 and np.median(ious) > 0.9 and min(ious) > 0.7, ious


def write_dataset(root, n=3, size=(80, 60)):
    """Darknet's own layout (AlexeyAB README): images and their .txt labels side by side in obj/."""
    (root / "obj").mkdir()
    lines = []
    for i in range(n):
        box = (0.3 + 0.1 * i, 0.5, 0.3, 0.4)
        path = root / "obj" / f"im{i}.png"
        cv2.imwrite(str(path), box_image(*size, box))
        (root / "obj" / f"im{i}.txt").write_text(f"{i % 2} {box[0]} {box[1]} {box[2]} {box[3]}\n")
        lines.append(f"obj/im{i}.png")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    (root / "obj.names").write_text("a\nb\n")
    (root / "obj.data").write_text(f"classes = 2\ntrain = train.txt\nvalid = train.txt\nnames = obj.names\n"
                                   f"backup = {root / 'backup'}\n")
    return root / "obj.data"


def test_data_file_list_and_labels(tmp_path):
    data = parse_data_file(write_dataset(tmp_path))
    assert data.classes == 2 and data.backup == tmp_path / "backup"
    images = list_images(data.train)
    assert [p.name for p in images] == ["im0.png", "im1.png", "im2.png"] and all(p.exists() for p in images)
    assert label_path_for(images[1]) == tmp_path / "obj" / "im1.txt"
    np.testing.assert_allclose(read_labels(label_path_for(images[1])), [[0.4, 0.5, 0.3, 0.4, 1]], atol=1e-6)
    (tmp_path / "obj" / "im2.txt").write_text("1 0.5 0.5\n")
    with pytest.raises(DarkcfgError, match=r"im2.txt:1: expected"):
        read_labels(tmp_path / "obj" / "im2.txt")


def test_loader_with_worker_is_deterministic_and_shards(tmp_path):
    data = parse_data_file(write_dataset(tmp_path))
    s = TrainSettings(batch=4, subdivisions=2, max_batches=3, jitter=0.2, flip=1, classes=2, hue=0.1,
                      saturation=1.5, exposure=1.5)
    ds = DetectionDataset(list_images(data.train), s)

    def batches(workers, rank=0, world=1):
        plan = BatchPlan(len(ds), s, 64, 48, start_iteration=1, seed=5, rank=rank, world=world)
        loader = torch.utils.data.DataLoader(ds, batch_sampler=plan, num_workers=workers, collate_fn=collate)
        return list(loader)

    a, b = batches(1), batches(0)
    assert len(a) == (3 - 1) * 2 and a[0][0].shape == (2, 3, 48, 64)
    for (xa, ta), (xb, tb) in zip(a, b):
        assert torch.equal(xa, xb) and all(torch.equal(u, v) for u, v in zip(ta, tb))
        assert 0 <= xa.min() and xa.max() <= 1 and all(t.shape[1] == 5 for t in ta)
    r0, r1 = batches(0, 0, 2), batches(0, 1, 2)
    for (x0, _), (x1, _), (x, _) in zip(r0, r1, b):
        assert torch.equal(torch.cat([x0, x1]), x)     # the two ranks' shards are the single process's batch


def test_random_sizes_are_multiples_of_step_in_range():
    s = TrainSettings(random=1.0, resize_step=32)
    rng = np.random.default_rng(0)
    sizes = {random_size(s, 416, 416, rng, largest=False) for _ in range(200)}
    assert all(w % 32 == 0 and h % 32 == 0 for w, h in sizes)
    assert min(w for w, _ in sizes) >= 288 and max(w for w, _ in sizes) <= 608 and len(sizes) > 5
    assert random_size(s, 416, 416, rng, largest=True) == (608, 608)  # round(1.4*416/32 + 1) * 32
