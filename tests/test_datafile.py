"""Darknet .data files, image lists and label paths (darkcfg.datafile)."""

from pathlib import Path

import numpy as np
import pytest

from darkcfg.datafile import (image_id_from_path, label_path_for, list_images, parse_data_file, read_labels,
                              read_names)
from darkcfg.errors import DarkcfgError


def test_parse_data_file_resolves_paths(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "obj.names").write_text("a\nb\n\n")
    (tmp_path / "valid.txt").write_text("x.jpg\n")
    data = tmp_path / "sub" / "obj.data"
    data.write_text("# comment\nclasses = 2\n; also comment\nvalid = valid.txt\nnames=obj.names\n"
                    "backup = /abs/backup/\nclasses=7\n\n")
    monkeypatch.chdir(tmp_path)
    d = parse_data_file(data)
    assert d.classes == 2  # first occurrence wins, like option_find
    assert d.valid == tmp_path / "valid.txt"  # found relative to the working directory
    assert d.names == tmp_path / "sub" / "obj.names"  # not in cwd: beside the .data file
    assert d.backup == Path("/abs/backup")
    assert d.eval == "voc" and d.train is None
    assert d.read_names() == ["a", "b"]


def test_parse_data_file_errors(tmp_path):
    with pytest.raises(DarkcfgError, match="not found"):
        parse_data_file(tmp_path / "nope.data")
    bad = tmp_path / "bad.data"
    bad.write_text("classes=2\nvalid\n")
    with pytest.raises(DarkcfgError, match=r"bad.data:2"):
        parse_data_file(bad)
    bad.write_text("classes=two\n")
    with pytest.raises(DarkcfgError, match="not an integer"):
        parse_data_file(bad)


def test_list_images(tmp_path):
    lst = tmp_path / "list.txt"
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(b"")
    lst.write_text("images/a.jpg\r\n\n/abs/b.png  \n")
    got = list_images(lst, root=tmp_path / "elsewhere")
    assert got == [tmp_path / "images/a.jpg", Path("/abs/b.png")]  # falls back to the list's folder
    lst.write_text("\n\n")
    with pytest.raises(DarkcfgError, match="empty"):
        list_images(lst)


@pytest.mark.parametrize("image,label", [
    ("/d/coco/images/train2017/000000000009.jpg", "/d/coco/labels/train2017/000000000009.txt"),
    ("/d/coco/images/val2014/x.JPEG", "/d/coco/labels/val2014/x.txt"),
    ("/d/VOC2007/JPEGImages/000001.jpg", "/d/VOC2007/labels/000001.txt"),
    ("/d/data/images/x.png", "/d/data/images/x.txt"),  # a bare /images/ is not rewritten
    ("/d/obj/img.jpg.jpg", "/d/obj/img.jpg.txt"),  # only the final extension
])
def test_label_path_for(image, label):
    assert label_path_for(image) == Path(label)


def test_label_path_for_unknown_extension():
    with pytest.raises(DarkcfgError, match="label file"):
        label_path_for("/d/images/train2017/x.gif")


def test_read_labels(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("0 0.5 0.5 0.2 0.3\n\n12 1e-1 .25 0.5 0.5\n")
    lab = read_labels(f, classes=80)
    assert lab.classes.tolist() == [0, 12] and lab.boxes.dtype == np.float32
    np.testing.assert_array_equal(lab.boxes, np.float32([[0.5, 0.5, 0.2, 0.3], [0.1, 0.25, 0.5, 0.5]]))
    assert len(read_labels(tmp_path / "missing.txt")) == 0
    f.write_text("0 0.5 0.5 0.2 0.3\n80 0.5 0.5 0.2 0.3\n")
    with pytest.raises(DarkcfgError, match=r"a.txt:2: class id 80"):
        read_labels(f, classes=80)
    f.write_text("0 0.5 0.5 0.2\n")
    with pytest.raises(DarkcfgError, match=r"a.txt:1"):
        read_labels(f)


def test_read_names_and_image_ids(tmp_path):
    (tmp_path / "n").write_text(" cat \n\ndog\n")
    assert read_names(tmp_path / "n") == ["cat", "dog"]
    assert image_id_from_path("/x/images/000000000009.jpg") == 9
    assert image_id_from_path("C:\\data\\000123.v2.jpg") == 123
    assert image_id_from_path("cat.jpg") == 0
