"""The cfg reader (``darkcfg.cfg``) and the graph's refusal of malformed cfgs.

Darknet's own reader rules (darknet-format.md §1, §9): every whitespace character
inside a line is deleted, ``#``/``;`` lines are comments, the first duplicate key
wins, numeric values may carry a ``#`` tail, section names have aliases.  Where
Darknet would silently misread or crash, darkcfg raises :class:`CfgError` whose
message names the file and the line; a hypothesis test checks that random one-line
edits of the project's own cfgs never produce any other exception.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import darkcfg
from darkcfg.cfg import SECTION_ALIASES, parse_cfg_text, read_cfg
from darkcfg.errors import CfgError, DarkcfgError
from darkcfg.graph import build_graph

REPO = Path(__file__).resolve().parents[1]
OWN_CFGS = sorted((REPO / "cfgs").glob("*.cfg"))

NET = "[net]\nwidth=32\nheight=32\nchannels=3\n"


def graph(text: str, path: str = "t.cfg", size=None):
    return build_graph(parse_cfg_text(text, path), size=size)


# ------------------------------------------------------------------------------ reader rules
def test_whitespace_is_deleted_everywhere():
    cfg = parse_cfg_text("[ net ]\n width = 32 \nhei ght\t=\t32\nchannels=3\n"
                         "[ yolo ]\nanchors = 10,13,  16,30\nmask = 0 , 1\n")
    assert [s.type for s in cfg.sections] == ["net", "yolo"]
    yolo = cfg.layers[0]
    assert yolo.get_str("anchors") == "10,13,16,30"
    assert yolo.get_floats("anchors") == [10, 13, 16, 30]
    assert yolo.get_ints("mask") == [0, 1]
    assert cfg.net.get_int("height") == 32 and cfg.net.get_int("width") == 32


def test_comments_blank_lines_crlf_tabs():
    text = ("# a comment\r\n; another\r\n\r\n[net]\r\n\twidth=16\r\nheight=16 \r\n   # indented comment\r\n"
            "channels=3\r\n\r\n[convolutional]\r\n;filters=99\r\nfilters=4\t\r\nsize=1\r\n\r\n")
    g = graph(text)
    assert g.layers[0].out_shape == (4, 16, 16)
    # line numbers count the comment and blank lines
    assert g.cfg.layers[0].line == 10 and g.cfg.layers[0].options["filters"].line == 12


def test_utf8_bom_and_crlf_from_a_file(tmp_path):
    p = tmp_path / "bom.cfg"
    p.write_bytes(("\ufeff" + NET + "[conv]\nfilters=2\n").replace("\n", "\r\n").encode("utf-8"))
    g = build_graph(read_cfg(p))
    assert g.layers[0].out_shape == (2, 32, 32)
    assert g.path == str(p)
    # and from text
    assert graph("\ufeff" + NET + "[conv]\nfilters=2\n").layers[0].out_shape == (2, 32, 32)


def test_unreadable_file_is_a_cfg_error(tmp_path):
    missing = tmp_path / "missing.cfg"
    with pytest.raises(CfgError, match=re.escape(str(missing))):
        read_cfg(missing)


@pytest.mark.parametrize("alias", sorted(SECTION_ALIASES))
def test_every_section_alias(alias):
    if SECTION_ALIASES[alias] == "net":
        cfg = parse_cfg_text(f"[{alias}]\nwidth=8\nheight=8\nchannels=1\n[conv]\nfilters=1\n")
        assert cfg.net.type == "net" and cfg.net.raw_type == alias
    else:
        cfg = parse_cfg_text(f"{NET}[{alias}]\n")
        assert cfg.layers[0].type == SECTION_ALIASES[alias]
        assert cfg.layers[0].raw_type == alias


def test_first_duplicate_wins_and_later_ones_are_reported():
    text = NET + "[convolutional]\nfilters=8\nsize=1\nfilters=16\n"
    g = graph(text, "dup.cfg")
    assert g.layers[0].out_shape == (8, 32, 32)
    unused = g.unused_options()
    assert unused == ["dup.cfg:8: [convolutional] (layer 0): unused field 'filters=16'"]


def test_inline_hash_tail_on_numbers():
    g = graph(NET + "[convolutional]\nfilters=40#32\nsize=3#5\npad=1\n[route]\nlayers=-1,0###S4\n")
    assert g.layers[0].out_shape == (40, 32, 32)
    assert g.layers[1].out_shape == (80, 32, 32)
    # a numeric prefix with a float tail is read like atoi
    assert graph(NET + "[convolutional]\nfilters=4.9\n").layers[0].out_shape == (4, 32, 32)


def test_unknown_keys_are_warnings_naming_file_and_line(tmp_path):
    p = tmp_path / "extra.cfg"
    p.write_text(NET + "foo_net_key=1\n[convolutional]\nfilters=2\nfoo=1\nsize=1\n[maxpool]\nsize=2\nstride=2\nbar=x\n")
    g = build_graph(read_cfg(p))  # no exception
    assert g.unused_options() == [
        f"{p}:8: [convolutional] (layer 0): unused field 'foo=1'",
        f"{p}:13: [maxpool] (layer 1): unused field 'bar=x'",
    ]  # [net] keys are never reported, as in Darknet
    # training-only keys Darknet reads are not "unused"
    g = graph(NET + "[convolutional]\nfilters=6\nlearning_rate=0.1\nstopbackward=1\n"
              "[yolo]\nmask=0\nanchors=1,2\nclasses=1\nnum=1\njitter=.3\nignore_thresh=.7\nrandom=1\n")
    assert g.unused_options() == []


def test_graph_warnings_for_tolerated_problems():
    g = graph(NET + "[convolutional]\nfilters=6\nsize=1\n[yolo]\nmask=0\nanchors=1,2,3\nclasses=1\nnum=1\n")
    assert any("odd number" in w and "t.cfg:10" in w for w in g.warnings)


# ------------------------------------------------------------------------------ malformed inputs
MARK = "  <<<"

# (id, cfg text with the offending line marked by MARK, regex the message must match)
BAD: list[tuple[str, str, str]] = [
    ("key-outside-section", "width=32" + MARK + "\n" + NET + "[conv]\nfilters=1\n", "before any"),
    ("line-without-equals", NET + "[conv]\nfilters 8" + MARK + "\n", "not 'key=value'"),
    ("empty-value", NET + "[conv]\nfilters =" + MARK + "\n", "empty value"),
    ("no-key", NET + "[conv]\n=8" + MARK + "\n", "no key"),
    ("unknown-section", NET + "[convolution]" + MARK + "\nfilters=1\n", r"unknown section type \[convolution\]"),
    ("wrong-case-section", NET + "[gaussian_yolo]" + MARK + "\n", r"case-sensitive.*\[Gaussian_yolo\]"),
    ("missing-net", "[convolutional]" + MARK + "\nfilters=1\n", r"first section must be \[net\]"),
    ("net-not-first", "[conv]" + MARK + "\nfilters=1\n" + NET, r"first section must be \[net\]"),
    ("second-net", NET + "[conv]\nfilters=1\n[net]" + MARK + "\nwidth=3\n", "only appear once"),
    ("no-layers", "[net]" + MARK + "\nwidth=32\nheight=32\nchannels=3\n", "no layers"),
    ("malformed-header", NET + "[conv" + MARK + "\nfilters=1\n", "malformed section header"),
    ("non-numeric-int", NET + "[conv]\nfilters=abc" + MARK + "\n", "expects an integer"),
    ("infinite-int", NET + "[conv]\nfilters=1e999" + MARK + "\n", "expects an integer"),
    ("non-numeric-float", NET + "[conv]\nfilters=4\n[softmax]\ntemperature=hot" + MARK + "\n", "expects a number"),
    ("zero-filters", NET + "[conv]\nfilters=0" + MARK + "\n", "must be positive"),
    ("negative-filters", NET + "[conv]\nfilters=-4" + MARK + "\n", "must be positive"),
    ("size-0", NET + "[conv]\nfilters=4\nsize=0" + MARK + "\n", "'size' must be positive"),
    ("stride-0", NET + "[conv]\nfilters=4\nstride=0" + MARK + "\n", "'stride' must be positive"),
    ("maxpool-stride-0", NET + "[maxpool]\nsize=2\nstride=0" + MARK + "\n", "'stride' must be positive"),
    ("negative-padding", NET + "[conv]\nfilters=4\nsize=3\npadding=-1" + MARK + "\n", "must not be negative"),
    ("zero-width", "[net]" + MARK + "\nwidth=0\nheight=32\nchannels=3\n[conv]\nfilters=1\n", "greater than 0"),
    ("negative-height", "[net]\nwidth=32\nheight=-3" + MARK + "\nchannels=3\n[conv]\nfilters=1\n", "must not be negative"),
    ("route-out-of-range", NET + "[conv]\nfilters=4\n[route]\nlayers=-5" + MARK + "\n", "before the first layer"),
    ("route-forward", NET + "[conv]\nfilters=4\n[route]\nlayers=3" + MARK + "\n[conv]\nfilters=1\n", "forward"),
    ("route-to-itself", NET + "[conv]\nfilters=4\n[route]\nlayers=1" + MARK + "\n", "to itself"),
    ("shortcut-forward", NET + "[conv]\nfilters=4\n[shortcut]\nfrom=2" + MARK + "\n[conv]\nfilters=4\n", "forward"),
    ("conv-groups", NET + "[conv]\nfilters=4\ngroups=2" + MARK + "\n", "must divide"),
    ("route-groups", NET + "[conv]\nfilters=8\n[route]\nlayers=-1\ngroups=3" + MARK + "\n", "does not divide"),
    ("route-group-id", NET + "[conv]\nfilters=8\n[route]\nlayers=-1\ngroups=2\ngroup_id=2" + MARK + "\n", "group_id"),
    ("route-sizes", NET + "[conv]\nfilters=4\n[maxpool]\nsize=2\nstride=2\n[route]\nlayers=-1,0" + MARK + "\n",
     "different sizes"),
    ("yolo-filters", NET + "[conv]\nfilters=21\n[yolo]\nmask=0,1\nanchors=1,2,3,4\nclasses=5" + MARK + "\nnum=2\n",
     "filters=20"),
    ("unknown-activation", NET + "[conv]\nfilters=4\nactivation=leakyy" + MARK + "\n", "unknown activation 'leakyy'"),
    ("empty-list-item", NET + "[conv]\nfilters=4\n[route]\nlayers=-1,,0" + MARK + "\n", "empty item"),
    ("input-too-small", "[net]\nwidth=4\nheight=4\nchannels=3\n[conv]" + MARK + "\nfilters=4\nsize=7\n", "too small"),
    ("share-index-not-conv", NET + "[maxpool]\nsize=2\nstride=1\n[conv]\nfilters=3\nshare_index=0" + MARK + "\n",
     "not a convolutional"),
    ("share-index-shape", NET + "[conv]\nfilters=3\nsize=3\npad=1\n[conv]\nfilters=3\nsize=1\nshare_index=0" + MARK
     + "\n", "share_index layer 0"),
    ("reorg-stride", NET + "[reorg3d]\nstride=3" + MARK + "\n", "must divide"),
    ("reorg-old-channels", NET + "[reorg]\nstride=2" + MARK + "\n", "divisible by stride"),
    ("reorg3d-reverse-channels", NET + "[conv]\nfilters=4\n[reorg3d]\nstride=2" + MARK + "\nreverse=1\n", "stride\\^4"),
    ("mask-negative", NET + "[conv]\nfilters=6\n[yolo]\nmask=-1" + MARK + "\nanchors=1,2\nclasses=1\nnum=1\n",
     "negative"),
    ("crop-too-large", NET + "[crop]" + MARK + "\ncrop_height=40\ncrop_width=8\n", "larger than its input"),
    ("upsample-stride-0", NET + "[upsample]\nstride=0" + MARK + "\n", "must not be 0"),
    ("upsample-negative-divide", NET + "[upsample]\nstride=-3" + MARK + "\n", "divisible by 3"),
    ("dilation-padding", NET + "[conv]\nfilters=4\nsize=3\npadding=2\ndilation=2" + MARK + "\n", "dilation=2"),
    ("antialiasing-3", NET + "[conv]\nfilters=4\nantialiasing=3" + MARK + "\n", "antialiasing"),
    ("missing-route-layers", NET + "[conv]\nfilters=4\n[route]" + MARK + "\n", "missing required key 'layers'"),
    ("bad-weights-type", NET + "[conv]\nfilters=3\n[shortcut]\nfrom=-1\nweights_type=per_pixel" + MARK + "\n",
     "weights_type"),
    ("shortcut-flat-source", NET + "[conv]\nfilters=3\n[softmax]\n[route]\nlayers=0\n[shortcut]\nfrom=1" + MARK
     + "\n", "flat"),
    ("conv-after-flat", NET + "[softmax]\n[conv]" + MARK + "\nfilters=3\n", "needs an image input"),
    ("softmax-groups", NET + "[softmax]\ngroups=5" + MARK + "\n", "does not divide"),
    ("scale-channels-shape", NET + "[conv]\nfilters=4\n[conv]\nfilters=3\n[scale_channels]\nfrom=0" + MARK + "\n",
     "scale_channels"),
    ("sam-shape", NET + "[conv]\nfilters=4\n[conv]\nfilters=3\n[sam]\nfrom=0" + MARK + "\n", "sam"),
    ("region-filters", NET + "[conv]\nfilters=30\n[region]\nclasses=2" + MARK + "\nnum=5\n", "num=5"),
    ("detection-outputs", NET + "[connected]\noutput=50\n[detection]\ncoords=4\nclasses=1\nside=2" + MARK + "\nnum=2\n", "= 44 are needed"),
    ("connected-zero-output", NET + "[connected]\noutput=0" + MARK + "\n", "must be positive"),
    ("yolo-classes-0", NET + "[conv]\nfilters=5\n[yolo]\nmask=0\nanchors=1,2\nclasses=0" + MARK + "\nnum=1\n",
     "'classes' must be positive"),
]


def _unmark(text: str) -> tuple[str, int]:
    lines = text.split("\n")
    marked = [i for i, line in enumerate(lines) if line.endswith(MARK)]
    assert len(marked) == 1, text
    lines[marked[0]] = lines[marked[0]][: -len(MARK)]
    return "\n".join(lines), marked[0] + 1


def test_enough_malformed_cases():
    assert len({case for case, _, _ in BAD}) == len(BAD) >= 20


@pytest.mark.parametrize("case,text,pattern", BAD, ids=[b[0] for b in BAD])
def test_malformed_cfg_is_a_located_cfg_error(case, text, pattern, tmp_path):
    text, line = _unmark(text)
    p = tmp_path / f"{case}.cfg"
    p.write_text(text)
    with pytest.raises(CfgError) as info:
        build_graph(read_cfg(p))
    err = info.value
    assert isinstance(err, ValueError) and isinstance(err, DarkcfgError)
    msg = str(err)
    assert msg.startswith(f"{p}:{line}:"), f"expected the message to name {p.name} line {line}: {msg}"
    assert re.search(pattern, msg), msg
    # darkcfg.load fails the same way, before any tensor is allocated
    with pytest.raises(CfgError):
        darkcfg.load(p)


def test_empty_file_names_the_file(tmp_path):
    p = tmp_path / "empty.cfg"
    p.write_text("# only a comment\n\n")
    with pytest.raises(CfgError, match=re.escape(f"{p}: no sections")):
        read_cfg(p)


@pytest.mark.parametrize("size", [(-32, 32), (32, 0)])
def test_bad_size_override(size):
    text = "# header\n[net]\nwidth=32\nheight=32\nchannels=3\n[conv]\nfilters=1\n"
    with pytest.raises(CfgError, match=r"^s\.cfg:2: .*requested size") as info:
        graph(text, "s.cfg", size=size)
    assert isinstance(info.value, DarkcfgError)
    with pytest.raises(CfgError):
        graph(NET + "[conv]\nfilters=1\nsize=3\n", size=(2, 2))  # too small for a 3x3 kernel


def test_size_override_applies():
    g = graph(NET + "[conv]\nfilters=1\nsize=3\npad=1\nstride=2\n", size=(48, 20))
    assert (g.net.width, g.net.height) == (48, 20) and g.layers[0].out_shape == (1, 10, 24)


# ------------------------------------------------------------------------------ property test
_VALUES = ["0", "-1", "1", "2", "3", "-2", "100", "999999999", "-999999999", "1e999", "1.5", "-0.5", "abc", "",
           "#", "1#2", "1,2", "1,,2", ",", "-1,-2,-3", "nan", "inf", "leaky", "linear", "per_channel", "softmax",
           "[", "]", "=", "1e-9", "0x10"]
_KEYS = ["filters", "size", "stride", "pad", "padding", "groups", "layers", "from", "mask", "num", "classes",
         "anchors", "activation", "width", "height", "channels", "stride_x", "stride_y", "dilation", "group_id",
         "share_index", "antialiasing", "output", "side", "coords", "crop_height", "crop_width", "atoms",
         "out_channels", "maxpool_depth", "reverse", "weights_type", "weights_normalization", "scale_wh", "hidden",
         "temperature", "scale_x_y", "new_coords", "inputs", "batch_normalize", "flipped"]
_LINES = ["[net]", "[convolutional]", "[route]", "[shortcut]", "[yolo]", "[maxpool]", "[upsample]", "[reorg]",
          "[softmax]", "[connected]", "[crop]", "[sam]", "[scale_channels]", "[implicit]", "[region]", "[detection]",
          "[avgpool]", "[crnn]", "[local]", "[deconvolutional]", "[rnn]", "[lstm]", "[gru]", "[history]",
          "[conv_lstm]", "[Gaussian_yolo]", "[reorg3d]", "[local_avgpool]", "[batchnorm]", "[bogus]", "[", "x", ""]


@st.composite
def mutated_cfg(draw):
    path = draw(st.sampled_from(OWN_CFGS))
    lines = path.read_text().split("\n")
    i = draw(st.integers(0, len(lines) - 1))
    op = draw(st.sampled_from(["value", "key", "delete", "duplicate", "insert", "text"]))
    line = lines[i]
    if op == "value":
        key = line.split("=", 1)[0] if "=" in line else draw(st.sampled_from(_KEYS))
        lines[i] = f"{key}={draw(st.sampled_from(_VALUES) | st.text(max_size=6))}"
    elif op == "key":
        lines.insert(i, f"{draw(st.sampled_from(_KEYS))}={draw(st.sampled_from(_VALUES))}")
    elif op == "delete":
        del lines[i]
    elif op == "duplicate":
        lines.insert(i, line)
    elif op == "insert":
        lines.insert(i, draw(st.sampled_from(_LINES)))
    else:
        lines[i] = draw(st.text(max_size=20))
    return path.name, "\n".join(lines)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_cfg())
def test_mutated_own_cfgs_raise_only_darkcfg_errors(case):
    name, text = case
    try:
        g = build_graph(parse_cfg_text(text, name))
    except DarkcfgError as e:
        assert str(e).startswith(name), str(e)
    else:
        # whatever built has consistent, positive shapes
        for s in g.layers:
            assert s.outputs > 0 or s.kind in ("cost", "contrastive"), (s.index, s.kind, s.outputs)


@pytest.mark.parametrize("text, expected", [
    ("0", 0), ("007", 7), ("123456789", 123456789), ("999999999", 999999999), ("2147483647", 2147483647),
    ("\u0663", 3), ("40#32", 40), ("-1", -1), ("+5", 5), ("1.9", 1), ("0000000000000012", 12),
    ("2147483648", None), ("-2147483649", None), ("\u00b2", None), ("12a", None), ("99999999999", None),
])
def test_integer_values_fast_and_slow_paths_agree(text: str, expected: "int | None") -> None:
    """Plain digit strings take a short path in the parser; it must accept exactly what the full
    check accepts (Unicode decimal digits included, as ``\\d`` and ``int`` do; 10+ digits checked)."""
    section = parse_cfg_text(f"[net]\nwidth=8\nheight=8\n[convolutional]\nfilters={text}\n").layers[0]
    if expected is None:
        with pytest.raises(CfgError, match="'filters' expects an integer"):
            section.get_int("filters")
    else:
        assert section.get_int("filters") == expected
