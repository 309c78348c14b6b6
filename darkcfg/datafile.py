"""Darknet's dataset description: the ``.data`` file, image lists and label files.

Darknet ties a dataset together with three plain-text conventions, reproduced here so that
``darkcfg map``/``valid``/``train`` read exactly what ``darknet detector ...`` reads:

* a ``.data`` file of ``key = value`` lines (``option_list.c read_data_cfg``): ``classes``,
  ``train``, ``valid``, ``names``, ``backup``, ``eval``, ``results``, ``difficult``, ``map``;
* image lists: one image path per line (``data.c get_paths``);
* one label file per image, found by rewriting the image path (``utils.c replace_image_to_label``):
  ``/images/train2017/`` -> ``/labels/train2017/`` (also val2017, train2014, val2014),
  ``/JPEGImages/`` -> ``/labels/``, then the image extension -> ``.txt``. A bare ``/images/`` is
  **not** rewritten (Darknet does not either); each label line is ``class x_center y_center width
  height`` normalised to [0, 1].

Paths inside ``.data`` and list files are relative to Darknet's *working directory*. Since users
rarely run from that exact folder, a relative path is looked up against ``root`` (default: the
current directory, Darknet's rule) and, if nothing is there, against the folder of the file that
names it. This module is torch-free.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np

from .errors import DarkcfgError

PathLike = Union[str, "os.PathLike[str]"]

# replace_image_to_label, in Darknet's order; each replaces the first occurrence only.
_LABEL_DIR_RULES = (
    ("/images/train2017/", "/labels/train2017/"),
    ("/images/val2017/", "/labels/val2017/"),
    ("/JPEGImages/", "/labels/"),
    ("\\images\\train2017\\", "\\labels\\train2017\\"),
    ("\\images\\val2017\\", "\\labels\\val2017\\"),
    ("\\images\\train2014\\", "\\labels\\train2014\\"),
    ("\\images\\val2014\\", "\\labels\\val2014\\"),
    ("/images/train2014/", "/labels/train2014/"),
    ("/images/val2014/", "/labels/val2014/"),
    ("\\JPEGImages\\", "\\labels\\"),
)
# find_replace_extension: only a path that *ends* with one of these gets ".txt".
_IMAGE_EXTENSIONS = (".jpg", ".JPG", ".jpeg", ".JPEG", ".png", ".PNG", ".bmp", ".BMP", ".ppm", ".PPM",
                     ".tiff", ".TIFF")


@dataclass(frozen=True)
class DataFile:
    """A parsed Darknet ``.data`` file.

    Path-valued entries are resolved (see the module docstring) but not checked for existence:
    a training run needs ``train`` and ``backup``, an evaluation ``valid`` and ``names``; the
    caller checks what it uses. ``options`` keeps every key as written (the first occurrence of
    a repeated key, as Darknet's ``option_find`` uses). ``eval`` defaults to ``voc`` like
    ``detector valid``.
    """

    path: Path
    classes: Optional[int]
    train: Optional[Path]
    valid: Optional[Path]
    names: Optional[Path]
    backup: Optional[Path]
    eval: str
    results: Optional[Path]
    difficult: Optional[Path]
    options: dict[str, str] = field(default_factory=dict)

    def read_names(self) -> list[str]:
        """Class names, one per non-empty line of ``names=`` (Darknet's ``get_labels``)."""
        if self.names is None:
            raise DarkcfgError(f"{self.path}: no 'names=' entry (the class names file)")
        return read_names(self.names)


def _resolve(value: str, root: Path, beside: Path) -> Path:
    """``value`` as Darknet would open it from ``root``, else relative to ``beside``."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return p
    first = root / p
    if first.exists():
        return first
    second = beside / p
    return second if second.exists() else first


def parse_data_file(path: PathLike, root: Optional[PathLike] = None) -> DataFile:
    """Read a Darknet ``.data`` file.

    Lines are ``key = value``; blank lines and lines starting with ``#`` or ``;`` are skipped
    (``read_option``). A line without ``=`` is an error naming the file and line (Darknet prints
    "Config file error" and goes on). When a key repeats, the first occurrence wins, as in
    Darknet (``option_find`` walks the list from the front). ``classes`` must be a positive
    integer. Relative paths resolve against ``root`` (default: the current directory), else
    against the ``.data`` file's folder.

    Raises:
        DarkcfgError: file missing/unreadable, bad line, bad ``classes``.
    """
    data_path = Path(path)
    text = _read_text(data_path, ".data file")
    options: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise DarkcfgError(f"{data_path}:{lineno}: expected 'key = value', got {raw.strip()!r}")
        options.setdefault(key.strip(), value.strip())
    base = Path(root) if root is not None else Path.cwd()
    beside = data_path.resolve().parent

    def opt_path(key: str) -> Optional[Path]:
        value = options.get(key)
        return _resolve(value, base, beside) if value else None

    classes: Optional[int] = None
    if "classes" in options:
        try:
            classes = int(options["classes"])
        except ValueError:
            raise DarkcfgError(f"{data_path}: classes={options['classes']!r} is not an integer") from None
        if classes < 1:
            raise DarkcfgError(f"{data_path}: classes={classes} must be at least 1")
    return DataFile(
        path=data_path,
        classes=classes,
        train=opt_path("train"),
        valid=opt_path("valid"),
        names=opt_path("names"),
        backup=opt_path("backup"),
        eval=options.get("eval", "voc"),
        results=opt_path("results"),
        difficult=opt_path("difficult"),
        options=options,
    )


def read_names(path: PathLike) -> list[str]:
    """Class names file: one name per line, surrounding whitespace removed, blank lines skipped."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise DarkcfgError(f"{p}: class names file not found") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def list_images(path: PathLike, root: Optional[PathLike] = None) -> list[Path]:
    """The image paths of a Darknet list file (``train=``/``valid=``), in file order.

    Trailing whitespace (and Windows CR) is removed and blank lines are skipped. Relative
    entries resolve against ``root`` (default: the current directory, Darknet's rule), else
    against the list file's folder. Existence is not checked here (a missing image is reported
    when it is read, naming it).

    Raises:
        DarkcfgError: the list file is missing, unreadable or lists no image.
    """
    list_path = Path(path)
    text = _read_text(list_path, "image list")
    base = Path(root) if root is not None else Path.cwd()
    beside = list_path.resolve().parent
    images = [_resolve(line.strip(), base, beside) for line in text.splitlines() if line.strip()]
    if not images:
        raise DarkcfgError(f"{list_path}: the image list is empty")
    return images


def label_path_for(image_path: PathLike) -> Path:
    """The label file Darknet reads for an image (``replace_image_to_label``).

    Raises:
        DarkcfgError: the extension is not one Darknet rewrites, so the "label" would be the
            image itself.
    """
    s = os.fspath(image_path)
    for old, new in _LABEL_DIR_RULES:
        s = s.replace(old, new, 1)
    s = s.strip()
    for ext in _IMAGE_EXTENSIONS:
        if s.endswith(ext):
            s = s[: -len(ext)] + ".txt"
    if not s.endswith(".txt"):
        raise DarkcfgError(f"{image_path}: cannot infer the label file name (Darknet rewrites only the "
                           f"extensions {', '.join(_IMAGE_EXTENSIONS)})")
    return Path(s)


@dataclass(frozen=True)
class Labels:
    """Ground-truth boxes of one image: ``classes`` (K,) int64, ``boxes`` (K, 4) float32 relative
    centre x, y, w, h -- the precision Darknet reads them with (``fscanf %f``)."""

    classes: np.ndarray
    boxes: np.ndarray

    def __len__(self) -> int:
        return int(self.classes.shape[0])


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def read_labels(path: PathLike, classes: Optional[int] = None, missing_ok: bool = True) -> Labels:
    """Read a Darknet label file (``read_boxes``).

    A missing file gives no boxes when ``missing_ok`` (Darknet logs "Can't open label file" and
    goes on with none). Unlike Darknet, which silently stops at the first line ``fscanf`` cannot
    parse, a malformed line, a class id outside ``[0, classes)`` or a non-finite value is an
    error naming the file and line: a half-read label file would quietly skew every score.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        if missing_ok:
            return Labels(np.zeros(0, np.int64), np.zeros((0, 4), np.float32))
        raise DarkcfgError(f"{p}: label file not found") from None
    ids: list[int] = []
    rows: list[list[float]] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        fields = raw.split()
        if not fields:
            continue
        if len(fields) < 5 or not re.fullmatch(r"[+-]?\d+", fields[0]) or not all(
                _NUMBER.match(f) for f in fields[1:5]):
            raise DarkcfgError(f"{p}:{lineno}: expected 'class x y w h', got {raw.strip()!r}")
        cls = int(fields[0])
        if cls < 0 or (classes is not None and cls >= classes):
            limit = f" (the model has {classes} classes)" if classes is not None else ""
            raise DarkcfgError(f"{p}:{lineno}: class id {cls} out of range{limit}")
        ids.append(cls)
        rows.append([float(f) for f in fields[1:5]])
    return Labels(np.asarray(ids, dtype=np.int64).reshape(-1),
                  np.asarray(rows, dtype=np.float32).reshape(-1, 4))


def image_id_from_path(path: PathLike) -> int:
    """The COCO ``image_id`` Darknet writes: ``atoi(basecfg(path))``.

    The file name without folder, cut at the first ``.``, read like C ``atoi``: optional leading
    whitespace and sign, then digits; anything else gives 0 (``000000000009.jpg`` -> 9,
    ``cat.jpg`` -> 0).
    """
    name = os.fspath(path).rsplit("/", 1)[-1].rsplit("\\", 1)[-1]
    stem = name.split(".", 1)[0]
    m = re.match(r"\s*([+-]?\d+)", stem)
    return int(m.group(1)) if m else 0


def _read_text(path: Path, what: str) -> str:
    """The text of ``path``; a missing or unreadable file is a :class:`DarkcfgError` naming it."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise DarkcfgError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise DarkcfgError(f"{path}: cannot read {what} ({exc})") from exc
