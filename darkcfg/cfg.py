"""Read Darknet ``.cfg`` text into sections, exactly as Darknet's ``read_cfg`` does.

Darknet's reader is simple but has sharp edges that every port has tripped over
(see ``darknet-format.md`` §1 and §9): *all* whitespace inside a line is deleted,
the first duplicate key wins, numeric values may carry an ``#...`` tail that
``atoi`` ignores, and section names have aliases.  We reproduce those rules and,
unlike Darknet, refuse malformed input with a :class:`~darkcfg.errors.CfgError`
that names the file, the line and the section.

Typed access goes through :class:`Section` getters (``get_int``, ``get_float``,
``get_ints``...).  Every getter records the key as *used*, so that after the
graph is built the leftover keys can be reported the way Darknet prints
"Unused field" -- as warnings, never as a crash.

>>> cfg = parse_cfg_text("[net]\\nwidth = 32\\nheight=32\\nchannels=3\\n[conv]\\nfilters=8\\n")
>>> [s.type for s in cfg.sections], cfg.layers[0].get_int("filters", 1)
(['net', 'convolutional'], 8)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from .errors import CfgError
from .fileio import read_regular_file
from .limits import Limits

#: Every spelling Darknet's ``string_to_layer_type`` accepts, mapped to the
#: canonical name used throughout darkcfg.  ``deconvolutional`` is pjreddie's
#: (the AlexeyAB fork does not know it).
SECTION_ALIASES: dict[str, str] = {
    "net": "net",
    "network": "net",
    "convolutional": "convolutional",
    "conv": "convolutional",
    "deconvolutional": "deconvolutional",
    "deconv": "deconvolutional",
    "connected": "connected",
    "conn": "connected",
    "local": "local",
    "maxpool": "maxpool",
    "max": "maxpool",
    "local_avgpool": "local_avgpool",
    "local_avg": "local_avgpool",
    "avgpool": "avgpool",
    "avg": "avgpool",
    "softmax": "softmax",
    "soft": "softmax",
    "dropout": "dropout",
    "route": "route",
    "shortcut": "shortcut",
    "scale_channels": "scale_channels",
    "sam": "sam",
    "upsample": "upsample",
    "reorg3d": "reorg3d",
    "reorg": "reorg",
    "yolo": "yolo",
    "Gaussian_yolo": "Gaussian_yolo",
    "region": "region",
    "detection": "detection",
    "batchnorm": "batchnorm",
    "activation": "activation",
    "lrn": "lrn",
    "normalization": "lrn",
    "crop": "crop",
    "cost": "cost",
    "contrastive": "contrastive",
    "implicit": "implicit",
    "empty": "empty",
    "silence": "empty",
    "rnn": "rnn",
    "gru": "gru",
    "lstm": "lstm",
    "conv_lstm": "conv_lstm",
    "crnn": "crnn",
    "history": "history",
}

_INT_RE = re.compile(r"[+-]?\d+")
_INT_MAX = 2**31 - 1
_FLOAT_RE = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


@dataclass
class Option:
    """One ``key=value`` line, kept with its line number for error messages."""

    key: str
    value: str
    line: int


@dataclass
class Section:
    """One ``[type]`` block of a cfg file.

    ``index`` is the Darknet layer index (sections after ``[net]`` count from 0;
    ``[net]`` itself is -1).  ``options`` keeps the *first* occurrence of each key,
    as Darknet's ``option_find`` does; later duplicates go to ``duplicates``.
    """

    type: str
    raw_type: str
    line: int
    index: int
    file: str
    options: dict[str, Option] = field(default_factory=dict)
    duplicates: list[Option] = field(default_factory=list)
    used: set[str] = field(default_factory=set)

    # ------------------------------------------------------------------ errors
    def where(self, key: str | None = None) -> str:
        """``file:line: [type] (layer i)`` prefix naming this section (or one key's line)."""
        line = self.options[key].line if key is not None and key in self.options else self.line
        layer = "net section" if self.index < 0 else f"layer {self.index}"
        return f"{self.file}:{line}: [{self.raw_type}] ({layer})"

    def error(self, message: str, key: str | None = None) -> CfgError:
        """A :class:`CfgError` located at this section, or at ``key``'s line."""
        if key is not None and key in self.options:
            opt = self.options[key]
            return CfgError(f"{self.where(key)}: {message} (in '{opt.key}={_short(opt.value)}')")
        return CfgError(f"{self.where()}: {message}")

    # ----------------------------------------------------------------- getters
    def has(self, key: str) -> bool:
        return key in self.options

    def mark_used(self, *keys: str) -> None:
        """Record keys Darknet reads but that do not matter at inference (training knobs)."""
        self.used.update(keys)

    def raw(self, key: str) -> str | None:
        self.used.add(key)
        opt = self.options.get(key)
        return None if opt is None else opt.value

    def get_str(self, key: str, default: str | None = None) -> str | None:
        """A string value (compared with ``strcmp`` in Darknet, so a ``#`` tail stays)."""
        value = self.raw(key)
        return default if value is None else value

    def get_int(self, key: str, default: int | None = None) -> int:
        """An integer, parsed like ``atoi`` but strictly: a numeric prefix is required.

        ``filters=40#32`` is 40 (Darknet's inline-comment idiom); ``filters=abc`` is an
        error rather than Darknet's silent 0.
        """
        value = self.raw(key)
        if value is None:
            if default is None:
                raise self.error(f"missing required key '{key}'")
            return default
        return self._int(key, value)

    def get_float(self, key: str, default: float | None = None) -> float:
        value = self.raw(key)
        if value is None:
            if default is None:
                raise self.error(f"missing required key '{key}'")
            return default
        return self._float(key, value)

    def get_ints(self, key: str, default: Sequence[int] | None = None) -> list[int]:
        """A comma list of integers (``layers``, ``from``, ``mask``...)."""
        return [self._int(key, item) for item in self._items(key, default)]

    def get_floats(self, key: str, default: Sequence[float] | None = None) -> list[float]:
        return [self._float(key, item) for item in self._items(key, default)]

    def _items(self, key: str, default: Sequence | None) -> list[str]:
        value = self.raw(key)
        if value is None:
            if default is None:
                raise self.error(f"missing required key '{key}'")
            return [str(v) for v in default]
        # A '#' starts a trailing comment for numeric lists (`layers=-1,271###S4`).
        value = value.split("#", 1)[0]
        items = value.split(",")
        if any(item == "" for item in items):
            raise self.error(f"empty item in list '{key}' (Darknet would read it as 0)", key)
        return items

    def _int(self, key: str, text: str) -> int:
        if text.isdecimal() and len(text) < 10:  # the common case, what the checks below accept as is
            return int(text)
        m = _INT_RE.match(text)
        rest = text[m.end():] if m else text
        if m is None or (rest and not rest.startswith("#")):
            # Darknet's atoi also accepts "1.9" as 1; so do we, but only if it is a number.
            fm = _FLOAT_RE.fullmatch(text.split("#", 1)[0])
            if fm is None:
                raise self.error(f"'{key}' expects an integer, got '{_short(text)}'", key)
            value = float(fm.group(0))
            if value != value or abs(value) > _INT_MAX:
                raise self.error(f"'{key}' expects an integer in Darknet's 32-bit int range, got '{_short(text)}'", key)
            return int(value)
        digits = m.group(0).lstrip("+-").lstrip("0")
        # Checked on the text first: int() of a million digits is slow and refused by Python.
        if len(digits) > 10 or int(m.group(0)) > _INT_MAX or int(m.group(0)) < -_INT_MAX - 1:
            raise self.error(f"'{key}' expects an integer in Darknet's 32-bit int range, got '{_short(text)}'", key)
        return int(m.group(0))

    def _float(self, key: str, text: str) -> float:
        head = text.split("#", 1)[0]
        if _FLOAT_RE.fullmatch(head) is None:
            raise self.error(f"'{key}' expects a number, got '{_short(text)}'", key)
        value = float(head)
        if value in (float("inf"), float("-inf")):
            # atof gives inf here and the layer computes NaN (scale_x_y=1e309): refuse it.
            raise self.error(f"'{key}' overflows a float: '{_short(text)}'", key)
        return value

    def unused(self) -> list[Option]:
        """Options never looked up (Darknet's "Unused field"), plus ignored duplicates."""
        return [o for k, o in self.options.items() if k not in self.used] + list(self.duplicates)


@dataclass
class Cfg:
    """A parsed cfg: the ``[net]`` section and the layer sections, in file order."""

    path: str
    sections: list[Section]

    @property
    def net(self) -> Section:
        return self.sections[0]

    @property
    def layers(self) -> list[Section]:
        return self.sections[1:]


def _strip(line: str) -> str:
    """Darknet's ``strip``: delete every space, tab, CR and LF anywhere in the line.

    Only those four: a vertical tab or form feed stays in the line (and then makes a
    numeric value malformed), as it does in Darknet.
    """
    return line.translate(_WHITESPACE)


_WHITESPACE = str.maketrans("", "", " \t\r\n")


def _short(text: str, limit: int = 60) -> str:
    """A value for an error message: control characters escaped, long values cut."""
    shown = text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"
    return shown.encode("unicode_escape").decode("ascii") if not shown.isprintable() else shown


def parse_cfg_text(text: str, path: str = "<string>") -> Cfg:
    """Parse cfg text.  ``path`` is only used in error messages.

    Lines end at LF only, as Darknet's ``fgetl`` reads them; ``str.splitlines`` would
    also split at VT, FF, \\x1c-\\x1e, NEL and U+2028 and so read keys Darknet never sees.
    """
    if text.startswith("\ufeff"):
        text = text[1:]
    sections: list[Section] = []
    for lineno, line in enumerate(text.split("\n"), 1):
        if "\x00" in line:
            raise CfgError(f"{path}:{lineno}: NUL character in the cfg text: a binary file, or a UTF-16/UTF-32 "
                           "encoding? Darknet reads cfg files as ASCII/UTF-8")
        s = _strip(line)
        if not s or s[0] in "#;":
            continue
        if s[0] == "[":
            sections.append(_new_section(s, lineno, len(sections) - 1, path))
            continue
        if not sections:
            raise CfgError(f"{path}:{lineno}: option '{s}' appears before any [section] header")
        sec = sections[-1]
        if "=" not in s:
            raise CfgError(f"{_at(path, lineno, sec)}: line '{s}' is not 'key=value'")
        key, value = s.split("=", 1)
        if not key:
            raise CfgError(f"{_at(path, lineno, sec)}: option '{s}' has no key")
        if value == "":
            raise CfgError(f"{_at(path, lineno, sec)}: option '{key}' has an empty value")
        opt = Option(key, value, lineno)
        if key in sec.options:
            sec.duplicates.append(opt)
        else:
            sec.options[key] = opt
    if not sections:
        raise CfgError(f"{path}: no sections: a Darknet cfg starts with [net]")
    if sections[0].type != "net":
        raise CfgError(f"{path}:{sections[0].line}: the first section must be [net] or [network], "
                       f"found [{sections[0].raw_type}]")
    for sec in sections[1:]:
        if sec.type == "net":
            raise CfgError(f"{sec.where()}: [net] may only appear once, as the first section")
    if len(sections) == 1:
        raise CfgError(f"{path}:{sections[0].line}: the cfg has a [net] section but no layers")
    return Cfg(path=path, sections=sections)


def _at(path: str, lineno: int, sec: Section) -> str:
    layer = "net section" if sec.index < 0 else f"layer {sec.index}"
    return f"{path}:{lineno}: [{sec.raw_type}] ({layer})"


def _new_section(stripped: str, lineno: int, index: int, path: str) -> Section:
    if not stripped.endswith("]"):
        raise CfgError(f"{path}:{lineno}: malformed section header '{stripped}' (expected [type])")
    raw = stripped[1:-1]
    kind = SECTION_ALIASES.get(raw)
    if kind is None:
        hint = ""
        lowered = {k.lower(): k for k in SECTION_ALIASES}
        if raw.lower() in lowered:
            hint = f" (section names are case-sensitive: did you mean [{lowered[raw.lower()]}]?)"
        raise CfgError(f"{path}:{lineno}: unknown section type [{raw}] (layer {index}){hint}")
    return Section(type=kind, raw_type=raw, line=lineno, index=index, file=path)


_UNICODE_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
                 (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"))


def read_cfg(path: str | os.PathLike) -> Cfg:
    """Read and parse a cfg file (UTF-8; a BOM and CRLF line ends are accepted)."""
    p = Path(path)
    data = read_regular_file(p, Limits.from_env().cfg_bytes, "cfg file", CfgError, "DARKCFG_MAX_CFG_BYTES")
    for bom, name in _UNICODE_BOMS:
        if data.startswith(bom):
            raise CfgError(f"{p}: the cfg file is {name} encoded; Darknet reads cfg files as ASCII/UTF-8 "
                           "(re-save it with UTF-8 encoding)")
    if b"\x00" in data:
        raise CfgError(f"{p}: the cfg file contains NUL bytes: a binary file, or UTF-16/UTF-32 encoding "
                       "without a byte-order mark? Darknet reads cfg files as ASCII/UTF-8")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return parse_cfg_text(text, str(p))


def iter_unused(cfg: Cfg) -> Iterable[tuple[Section, Option]]:
    """(section, option) for every option of a layer section that nothing read.

    ``[net]`` is skipped, as in Darknet (it carries many training-only keys).
    """
    for sec in cfg.layers:
        for opt in sec.unused():
            yield sec, opt
