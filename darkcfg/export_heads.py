"""Box decoding and NMS as traceable modules, appended to an exported graph (``convert --decode/--nms``).

The decoding is :func:`darkcfg.detect.decode` (Darknet's ``get_network_boxes``) for a network-size
input: every candidate of every head, in Darknet's emission order (head, cell row-major, anchor),
as ``x1, y1, x2, y2`` in network-input pixels, objectness, and the per-class probabilities
(``obj * cls``, ungated: the caller picks the threshold).  Everything shape-dependent is a Python
constant taken from the graph (grid sizes, anchors), so exporters record no shape arithmetic;
in a dynamic-size export (``--dynamic-size``) the grid and the network size are computed from the
traced tensors instead.
Differences from the eager decoder: ``exp`` is float32 (Darknet: double, rounded to float; about
1 ulp) and there is no letterbox correction (boxes are in network-input pixels; undo the
letterbox with the metadata's input size).

NMS uses ONNX ``NonMaxSuppression`` (per class, IoU, ``score > thresh``), which is Darknet's
``do_nms_sort``; DIoU-based kinds (``diounms``, ``greedynms``) cannot be expressed with it and are
exported as IoU NMS (the metadata says so; see the README).
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor, nn

from .detect import (GREEDY_DIOU_EXPONENT, Head, RegionHead, YoloHead, _shift_yolo_point, head_classes,
                     nms_params)
from .errors import DarkcfgError
from .graph import LayerSpec
from .layers.tracing import traced_sizes, untraced


def _grid(h: int, w: int, n: int) -> tuple[Tensor, Tensor]:
    """Column and row of every record in (row, col, anchor) order, float32, shape (h*w*n,)."""
    rows = torch.arange(h, dtype=torch.float32).view(h, 1, 1).expand(h, w, n).reshape(-1)
    cols = torch.arange(w, dtype=torch.float32).view(1, w, 1).expand(h, w, n).reshape(-1)
    return cols, rows


def _traced_grid(out: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """For a dynamic-size export: column (1, w, 1) and row (h, 1, 1) indices of a head's N x C x h x w
    output and its w and h as 0-dim floats, all computed from the traced tensor (no constants)."""
    ones_w, ones_h = _ones_along(out)
    cols, rows = torch.cumsum(ones_w, 0) - 1, torch.cumsum(ones_h, 0) - 1
    return cols.view(1, -1, 1), rows.view(-1, 1, 1), ones_w.sum(), ones_h.sum()


def _ones_along(t: Tensor) -> tuple[Tensor, Tensor]:
    """Ones of length W and H derived from ``t``'s (finite) values: ``ones_like`` would be exported
    with the trace-time size wherever the exporter's shape inference knows one, so it is avoided."""
    plane = t[0, 0]
    return plane[0] * 0.0 + 1.0, plane[:, 0] * 0.0 + 1.0


def _input_size(x: Tensor) -> tuple[Tensor, Tensor]:
    """The network input's width and height as 0-dim floats traced from ``x`` (N x C x H x W)."""
    ones_w, ones_h = _ones_along(x)
    return ones_w.sum(), ones_h.sum()


class _HeadDecoder(nn.Module):
    """Shared constants of one head: grid and per-record anchors (network pixels / grid units)."""

    cols: Tensor
    rows: Tensor
    aw: Tensor
    ah: Tensor

    def __init__(self, h: int, w: int, anchors: Sequence[tuple[float, float]]):
        super().__init__()
        n = len(anchors)
        cols, rows = _grid(h, w, n)
        a = torch.tensor([list(p) for p in anchors], dtype=torch.float32)
        self.register_buffer("cols", cols, persistent=False)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("aw", a[:, 0].repeat(h * w), persistent=False)
        self.register_buffer("ah", a[:, 1].repeat(h * w), persistent=False)
        self.h, self.w, self.n = h, w, n
        self.net_w, self.net_h = 0, 0  # set by each decoder

    def _geometry(self, out: Tensor, size: Optional[tuple[Tensor, Tensor]]) -> tuple:
        """(cols, rows, grid w, grid h, net w, net h, anchor w, anchor h) for decoding ``out``:
        the constants of the built size, or, in a dynamic-size export (``size`` = the traced input
        width and height), a grid computed from ``out``'s traced shape and one anchor per slot."""
        if size is None:
            return self.cols, self.rows, self.w, self.h, self.net_w, self.net_h, self.aw, self.ah
        cols, rows, gw, gh = _traced_grid(out)
        return cols, rows, gw, gh, size[0], size[1], self.aw[:self.n], self.ah[:self.n]


class YoloDecoder(_HeadDecoder):
    """``get_yolo_detections`` / ``get_gaussian_yolo_detections`` for one head."""

    def __init__(self, head: YoloHead, h: int, w: int, net_w: int, net_h: int):
        super().__init__(h, w, head.masked_anchors)
        self.head, self.net_w, self.net_h = head, net_w, net_h

    def forward(self, out: Tensor, size: Optional[tuple[Tensor, Tensor]] = None) -> Tensor:
        """Decode one head; ``size`` (the traced input width and height) in a dynamic-size export."""
        hd = self.head
        rec = out.unflatten(1, (self.n, hd.entries)).permute(0, 3, 4, 1, 2)  # (N, h, w, n, E)
        if size is None:
            rec = rec.flatten(1, 3)  # (N, h*w*n, E)
        cols, rows, gw, gh, net_w, net_h, aw, ah = self._geometry(out, size)
        if hd.gaussian:
            tx, ty, tw, th, obj, cls = rec[..., 0], rec[..., 2], rec[..., 4], rec[..., 6], rec[..., 8], rec[..., 9:]
        else:
            tx, ty, tw, th, obj, cls = rec[..., 0], rec[..., 1], rec[..., 2], rec[..., 3], rec[..., 4], rec[..., 5:]
        x = (cols + tx) / gw
        y = (rows + ty) / gh
        if hd.new_coords:
            bw = tw * tw * 4 * aw / net_w
            bh = th * th * 4 * ah / net_h
        else:
            bw = torch.exp(tw) * aw / net_w
            bh = torch.exp(th) * ah / net_h
        if hd.gaussian:
            x, y = _shift_yolo_point(x, y, bw, bh, hd.yolo_point)
            uc = (rec[..., 1] + rec[..., 3] + rec[..., 5] + rec[..., 7]) / 4.0
            probs = obj.unsqueeze(-1) * cls * (1.0 - uc).unsqueeze(-1)
        else:
            probs = obj.unsqueeze(-1) * cls
        rows_out = _rows(x, y, bw, bh, obj, probs, net_w, net_h)
        return rows_out.flatten(1, 3) if size is not None else rows_out


class RegionDecoder(_HeadDecoder):
    """``get_region_boxes`` for a plain (tree-less) ``[region]``; objectness is 1 as in Darknet."""

    def __init__(self, head: RegionHead, h: int, w: int, net_w: int, net_h: int):
        super().__init__(h, w, head.anchors[:head.num])
        self.head, self.net_w, self.net_h = head, net_w, net_h
        self.size = head.coords + 1 + head.classes

    def forward(self, out: Tensor, size: Optional[tuple[Tensor, Tensor]] = None) -> Tensor:
        """Decode the head; ``size`` (the traced input width and height) in a dynamic-size export."""
        hd = self.head
        if size is not None:  # records [h][w][n][size]
            rec = out.flatten(1).reshape(-1, out.shape[2], out.shape[3], self.n, self.size)
        else:
            rec = out.flatten(1).unflatten(1, (self.h * self.w * self.n, self.size))
        cols, rows, gw, gh, net_w, net_h, aw, ah = self._geometry(out, size)
        x = (cols + torch.sigmoid(rec[..., 0])) / gw
        y = (rows + torch.sigmoid(rec[..., 1])) / gh
        bw = torch.exp(rec[..., 2]) * aw / gw
        bh = torch.exp(rec[..., 3]) * ah / gh
        scale = rec[..., 4]
        if hd.classfix == -1:
            scale = torch.where(scale < 0.5, torch.zeros_like(scale), scale)
        probs = scale.unsqueeze(-1) * rec[..., 5:5 + hd.classes]
        rows_out = _rows(x, y, bw, bh, torch.ones_like(scale), probs, net_w, net_h)
        return rows_out.flatten(1, 3) if size is not None else rows_out


def _rows(x: Tensor, y: Tensor, w: Tensor, h: Tensor, obj: Tensor, probs: Tensor, net_w: "int | Tensor",
          net_h: "int | Tensor") -> Tensor:
    """(N, ..., 4+1+C): corners in network-input pixels (relative box times the network size)."""
    corners = torch.stack(((x - w / 2) * net_w, (y - h / 2) * net_h, (x + w / 2) * net_w, (y + h / 2) * net_h), -1)
    return torch.cat((corners, obj.unsqueeze(-1), probs), -1)


def make_decoders(heads: Sequence[Head], specs: Sequence[LayerSpec], net_w: int, net_h: int) -> nn.ModuleList:
    """One decoder per head; a tree [region] (YOLO9000) and [detection] (YOLOv1) are refused."""
    if len({head_classes(h) for h in heads}) != 1:
        raise DarkcfgError("--decode needs every detection head to have the same number of classes")
    decoders: List[nn.Module] = []
    for head, spec in zip(heads, specs):
        _, h, w = spec.out_shape
        if isinstance(head, YoloHead):
            decoders.append(YoloDecoder(head, h, w, net_w, net_h))
        elif isinstance(head, RegionHead) and head.tree is None:
            decoders.append(RegionDecoder(head, h, w, net_w, net_h))
        else:
            raise DarkcfgError(f"{spec.where}: --decode supports [yolo], [Gaussian_yolo] and tree-less [region] "
                               f"heads, not this [{spec.kind}]{' with a tree' if spec.kind == 'region' else ''}")
    return nn.ModuleList(decoders)


@torch.jit.script
def script_nms(boxes: Tensor, scores: Tensor, max_per_class: int, iou: float, score: float,
               beta: float) -> Tensor:
    """Darknet's per-class greedy NMS as TorchScript (what a ``--to torchscript --nms`` file runs).

    Same result layout as ONNX ``NonMaxSuppression``: (M, 3) rows of (image, class, box index)
    for ``boxes`` (N, K, 4 corners) and ``scores`` (N, C, K).  Candidates are ``score > score``,
    sorted by score (stable), and each kept box suppresses the later ones whose metric exceeds
    ``iou``: IoU for ``beta < 0``, else Darknet's DIoU ``IoU - (d^2/c^2)^beta`` (box.c
    ``box_diounms``; ``greedynms`` is beta 0.6), the power taken in double as C's ``pow``.
    A scripted loop, so unlike ONNX's operator it can express the DIoU kinds exactly.
    """
    selected: List[Tensor] = []
    for b in range(boxes.size(0)):
        for c in range(scores.size(1)):
            s = scores[b, c]
            cand = torch.nonzero(s > score).flatten()
            if cand.numel() == 0:
                continue
            order = cand[torch.sort(s[cand], descending=True, stable=True)[1]]
            x = boxes[b, order]
            left, top, right, bottom = x[:, 0], x[:, 1], x[:, 2], x[:, 3]
            ow = torch.minimum(right[:, None], right[None, :]) - torch.maximum(left[:, None], left[None, :])
            oh = torch.minimum(bottom[:, None], bottom[None, :]) - torch.maximum(top[:, None], top[None, :])
            inter = torch.where((ow < 0) | (oh < 0), torch.zeros_like(ow), ow * oh)
            area = (right - left) * (bottom - top)
            union = area[:, None] + area[None, :] - inter
            ok = (inter != 0) & (union != 0)
            metric = torch.where(ok, inter / torch.where(ok, union, torch.ones_like(union)), torch.zeros_like(inter))
            if beta >= 0:
                cw = torch.maximum(right[:, None], right[None, :]) - torch.minimum(left[:, None], left[None, :])
                ch = torch.maximum(bottom[:, None], bottom[None, :]) - torch.minimum(top[:, None], top[None, :])
                c2 = cw * cw + ch * ch
                cx, cy = (left + right) / 2, (top + bottom) / 2
                dx, dy = cx[:, None] - cx[None, :], cy[:, None] - cy[None, :]
                d2 = dx * dx + dy * dy
                safe = torch.where(c2 == 0, torch.ones_like(c2), c2)
                term = torch.pow((d2 / safe).double(), beta).float()
                metric = torch.where(c2 == 0, metric, metric - term)
            over = metric > iou
            alive = torch.ones(order.numel(), dtype=torch.bool)
            kept = 0
            for i in range(order.numel()):
                if bool(alive[i]):
                    if kept >= max_per_class:
                        alive[i:] = False
                        break
                    kept += 1
                    # (an augmented ``&=`` on a slice is silently dropped by TorchScript)
                    alive[i + 1:] = alive[i + 1:] & ~over[i, i + 1:]
            keep = order[alive]
            col = torch.full_like(keep, b)
            selected.append(torch.stack([col, torch.full_like(keep, c), keep], 1))
    if len(selected) == 0:
        return torch.zeros((0, 3), dtype=torch.int64)
    return torch.cat(selected, 0)


class _OnnxNms(torch.autograd.Function):
    """ONNX ``NonMaxSuppression`` when exported; an equivalent greedy per-class loop when run eagerly."""

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, max_per_class: int, iou: float,  # type: ignore[override]
                score: float) -> Tensor:
        with untraced():  # its trace is the symbolic NonMaxSuppression; eagerly the same greedy IoU pass
            return script_nms(boxes, scores, max_per_class, iou, score, -1.0)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class, iou, score):  # type: ignore[no-untyped-def]
        return g.op("NonMaxSuppression", boxes, scores,
                    g.op("Constant", value_t=torch.tensor([max_per_class], dtype=torch.int64)),
                    g.op("Constant", value_t=torch.tensor([iou], dtype=torch.float32)),
                    g.op("Constant", value_t=torch.tensor([score], dtype=torch.float32)), center_point_box_i=0)


class DecodeModel(nn.Module):
    """The network followed by decoding (and optionally NMS): what ``convert --decode/--nms`` exports.

    Outputs: ``boxes`` (N, K, 4+1+C); with NMS ``detections`` (N, max_det, 6: x1, y1, x2, y2, prob,
    class) zero-padded, best first, and ``count`` (N,) valid rows.  One row per (box, class) pair
    above ``thresh`` that survives per-class NMS, as ``darknet detector test`` prints them.
    """

    def __init__(self, model: nn.Module, heads: Sequence[Head], specs: Sequence[LayerSpec], net_w: int, net_h: int,
                 nms: bool = False, thresh: float = 0.25, nms_thresh: float = 0.45, max_det: int = 100,
                 scripted_nms: bool = False):
        super().__init__()
        self.model = model
        self.decoders = make_decoders(heads, specs, net_w, net_h)
        self.nms, self.thresh, self.nms_thresh, self.max_det = nms, thresh, nms_thresh, max_det
        self.nms_kind, beta = nms_params(heads)
        # scripted_nms (TorchScript files): Darknet's own NMS kind, DIoU ones included (script_nms)
        self.scripted_nms = scripted_nms
        self.diou_beta = {"diounms": beta, "greedynms": GREEDY_DIOU_EXPONENT}.get(self.nms_kind, -1.0)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        outs = self.model(x)
        size = _input_size(x) if traced_sizes() else None
        boxes = torch.cat([d(o, size) for d, o in zip(self.decoders, outs)], 1)
        if not self.nms:
            return (boxes,)
        return self._nms(boxes)

    def _nms(self, boxes: Tensor) -> tuple[Tensor, Tensor]:
        corners, probs = boxes[..., :4], boxes[..., 5:]
        scores = probs.transpose(1, 2).contiguous()  # (N, C, K)
        if self.scripted_nms:
            sel = script_nms(corners, scores, self.max_det, self.nms_thresh, self.thresh, self.diou_beta)
        else:
            sel = _OnnxNms.apply(corners, scores, self.max_det, self.nms_thresh, self.thresh)
        b, c, i = sel[:, 0], sel[:, 1], sel[:, 2]
        score = scores[b, c, i]
        order = torch.argsort(score, descending=True)
        b, c, i, score = b[order], c[order], i[order], score[order]
        rows = torch.cat((corners[b, i], score.unsqueeze(1), c.to(boxes.dtype).unsqueeze(1)), 1)
        first = boxes[:, 0, 0]  # (N,): the batch size as data flow, never a traced constant
        images = torch.cumsum(torch.ones_like(first, dtype=torch.int64), 0) - 1
        onehot = (b.unsqueeze(1) == images.unsqueeze(0)).to(torch.int64)  # (M, N)
        rank = (torch.cumsum(onehot, 0) * onehot).sum(1) - 1
        keep = rank < self.max_det
        out = torch.zeros_like(first).view(-1, 1, 1).expand(-1, self.max_det, 6).contiguous()
        out = out.index_put((b[keep], rank[keep]), rows[keep])
        count = torch.clamp(onehot.sum(0), max=self.max_det)
        return out, count
