"""Small line plots and labelled image grids drawn with Pillow alone (ComfyUI carries Pillow; the
pack takes no plotting dependency). Used by the lab accuracy node, the benchmarks and the demo.

It lives in samplers/ because that is the pack's ComfyUI-free library; it imports no torch.

    img = line_plot([Series("euler", [5, 10, 20], [0.1, 0.05, 0.02])], xlog=True, ylog=True,
                    title="error vs NFE", xlabel="NFE", ylabel="RMSE")
    img.save("plot.png")
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#7f7f7f", "#bcbd22", "#393b79", "#637939")
SS = 2  # supersampling factor: draw large, downsample once, for smooth lines and text


@dataclass
class Series:
    label: str
    xs: Sequence[float]
    ys: Sequence[float]
    color: str | None = None
    dash: bool = False
    marker: str = "o"   # "o", "s", "^" or "" for none
    width: float = 2.0


def font(size: int):
    """Pillow's built-in scalable font where available (Pillow >= 10.1), else its bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # older Pillow: fixed-size bitmap font only
        return ImageFont.load_default()


def _text_size(draw, text, fnt):
    box = draw.textbbox((0, 0), text, font=fnt)
    return box[2] - box[0], box[3] - box[1]


def fmt_number(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e4 or a < 1e-3:
        m, e = f"{v:.0e}".split("e")
        return f"{m}e{int(e)}"
    if a >= 100:
        return f"{v:.0f}"
    return f"{v:.3g}"


def _nice_step(span, target=6):
    raw = span / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def _ticks(lo, hi, log):
    """Tick positions in data units inside [lo, hi]."""
    if log:
        d0, d1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
        decades = d1 - d0
        mults = (1,) if decades > 3 else (1, 2, 5) if decades > 1 else (1, 2, 3, 5, 7)
        out = [m * 10 ** d for d in range(d0, d1 + 1) for m in mults]
        step_thin = max(1, math.ceil(decades / 8))
        if mults == (1,) and step_thin > 1:
            out = [10 ** d for d in range(d0, d1 + 1, step_thin)]
        return [t for t in out if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]
    step = _nice_step(hi - lo)
    start = math.ceil(lo / step) * step
    out, t = [], start
    while t <= hi + 1e-9 * step:
        out.append(0.0 if abs(t) < 1e-12 * step else t)
        t += step
    return out


def _range(values, log):
    vals = [v for v in values if math.isfinite(v) and (v > 0 or not log)]
    if not vals:
        return (1.0, 10.0) if log else (0.0, 1.0)
    lo, hi = min(vals), max(vals)
    if log:
        llo, lhi = math.log10(lo), math.log10(hi)
        if lhi - llo < 1e-9:
            llo, lhi = llo - 0.5, lhi + 0.5
        pad = 0.05 * (lhi - llo)
        return 10 ** (llo - pad), 10 ** (lhi + pad)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5 * (abs(lo) or 1), hi + 0.5 * (abs(hi) or 1)
    pad = 0.05 * (hi - lo)
    return lo - pad, hi + pad


def _dashed(draw, pts, fill, width, dash=10, gap=7):
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        length = math.hypot(x1 - x0, y1 - y0)
        if length == 0:
            continue
        pos = 0.0
        while pos < length:
            end = min(pos + dash, length)
            a, b = pos / length, end / length
            draw.line([(x0 + (x1 - x0) * a, y0 + (y1 - y0) * a), (x0 + (x1 - x0) * b, y0 + (y1 - y0) * b)],
                      fill=fill, width=width)
            pos = end + gap


def _marker(draw, x, y, kind, r, fill):
    if kind == "o":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif kind == "s":
        draw.rectangle([x - r, y - r, x + r, y + r], fill=fill)
    elif kind == "^":
        draw.polygon([(x, y - r * 1.2), (x - r, y + r * 0.8), (x + r, y + r * 0.8)], fill=fill)


def line_plot(series: Sequence[Series], *, title: str = "", xlabel: str = "", ylabel: str = "",
              xlog: bool = False, ylog: bool = False, size=(720, 440), xlim=None, ylim=None,
              legend: bool = True, note: str = "", xticks=None, yticks=None) -> Image.Image:
    """One panel of line plots. Non-finite points (and non-positive ones on a log axis) are left out."""
    w, h = size[0] * SS, size[1] * SS
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    f_title, f_label, f_tick = font(15 * SS), font(13 * SS), font(11 * SS)

    xs_all = [x for s in series for x in s.xs]
    ys_all = [y for s in series for y in s.ys]
    x0, x1 = xlim or _range(xs_all, xlog)
    y0, y1 = ylim or _range(ys_all, ylog)

    legend_w = 0
    if legend and series:
        legend_w = max(_text_size(draw, s.label, f_tick)[0] for s in series) + 44 * SS
        legend_w = min(legend_w, w // 2)
    left, right = 72 * SS, w - 14 * SS - legend_w
    top, bottom = (34 if title else 14) * SS, h - (46 if xlabel else 30) * SS - (14 * SS if note else 0)

    def px(v):
        a = (math.log10(v) - math.log10(x0)) / (math.log10(x1) - math.log10(x0)) if xlog else (v - x0) / (x1 - x0)
        return left + a * (right - left)

    def py(v):
        a = (math.log10(v) - math.log10(y0)) / (math.log10(y1) - math.log10(y0)) if ylog else (v - y0) / (y1 - y0)
        return bottom - a * (bottom - top)

    for t in xticks if xticks is not None else _ticks(x0, x1, xlog):
        X = px(t)
        draw.line([(X, top), (X, bottom)], fill="#e6e6e6", width=SS)
        label = fmt_number(t)
        tw, _ = _text_size(draw, label, f_tick)
        draw.text((X - tw / 2, bottom + 5 * SS), label, fill="#333333", font=f_tick)
    for t in yticks if yticks is not None else _ticks(y0, y1, ylog):
        Y = py(t)
        draw.line([(left, Y), (right, Y)], fill="#e6e6e6", width=SS)
        label = fmt_number(t)
        tw, th = _text_size(draw, label, f_tick)
        draw.text((left - tw - 6 * SS, Y - th / 2 - 2 * SS), label, fill="#333333", font=f_tick)
    draw.rectangle([left, top, right, bottom], outline="#444444", width=SS)

    for i, s in enumerate(series):
        color = s.color or PALETTE[i % len(PALETTE)]
        pts = [(px(x), py(y)) for x, y in zip(s.xs, s.ys)
               if math.isfinite(x) and math.isfinite(y) and (x > 0 or not xlog) and (y > 0 or not ylog)]
        lw = max(1, int(round(s.width * SS)))
        if len(pts) > 1:
            if s.dash:
                _dashed(draw, pts, color, lw, dash=9 * SS, gap=6 * SS)
            else:
                draw.line(pts, fill=color, width=lw, joint="curve")
        if s.marker:
            for X, Y in pts:
                _marker(draw, X, Y, s.marker, 3.2 * SS, color)

    if title:
        tw, _ = _text_size(draw, title, f_title)
        draw.text(((left + right) / 2 - tw / 2, 9 * SS), title, fill="black", font=f_title)
    if xlabel:
        tw, _ = _text_size(draw, xlabel, f_label)
        draw.text(((left + right) / 2 - tw / 2, bottom + 22 * SS), xlabel, fill="black", font=f_label)
    if note:
        draw.text((left, h - 16 * SS), note, fill="#555555", font=f_tick)
    if ylabel:
        tw, th = _text_size(draw, ylabel, f_label)
        tmp = Image.new("RGB", (tw + 4 * SS, th + 8 * SS), "white")
        ImageDraw.Draw(tmp).text((2 * SS, 0), ylabel, fill="black", font=f_label)
        rot = tmp.rotate(90, expand=True)
        img.paste(rot, (6 * SS, int((top + bottom) / 2 - rot.height / 2)))
    if legend and series:
        lx, ly = right + 12 * SS, top + 4 * SS
        for i, s in enumerate(series):
            color = s.color or PALETTE[i % len(PALETTE)]
            _, th = _text_size(draw, "Ag", f_tick)
            yc = ly + th / 2 + 3 * SS
            if s.dash:
                _dashed(draw, [(lx, yc), (lx + 26 * SS, yc)], color, 2 * SS, dash=6 * SS, gap=4 * SS)
            else:
                draw.line([(lx, yc), (lx + 26 * SS, yc)], fill=color, width=2 * SS)
            if s.marker:
                _marker(draw, lx + 13 * SS, yc, s.marker, 3 * SS, color)
            draw.text((lx + 32 * SS, ly), s.label, fill="black", font=f_tick)
            ly += th + 9 * SS
            if ly > h - 20 * SS:
                break
    return img.resize(size, Image.LANCZOS)


def hstack(images: Sequence[Image.Image], bg="white") -> Image.Image:
    width = sum(im.width for im in images)
    height = max(im.height for im in images)
    out = Image.new("RGB", (width, height), bg)
    x = 0
    for im in images:
        out.paste(im.convert("RGB"), (x, 0))
        x += im.width
    return out


def vstack(images: Sequence[Image.Image], bg="white") -> Image.Image:
    width = max(im.width for im in images)
    out = Image.new("RGB", (width, sum(im.height for im in images)), bg)
    y = 0
    for im in images:
        out.paste(im.convert("RGB"), (0, y))
        y += im.height
    return out


def image_grid(cells: Sequence[Sequence[Image.Image | None]], row_labels: Sequence[str] = (),
               col_labels: Sequence[str] = (), title: str = "", pad: int = 6,
               captions: Sequence[Sequence[str]] | None = None) -> Image.Image:
    """Rows x columns of images with labels on the left and on top, an optional caption under each
    cell; None leaves a cell blank (its caption is still drawn)."""
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    f_label, f_title = font(14), font(16)
    cw = max((im.width for row in cells for im in row if im is not None), default=64)
    ch = max((im.height for row in cells for im in row if im is not None), default=64)
    lw = max((_text_size(probe, t, f_label)[0] for t in row_labels), default=0) + (2 * pad if row_labels else 0)
    th = (_text_size(probe, "Ag", f_title)[1] + 3 * pad) if title else 0
    lh = (_text_size(probe, "Ag", f_label)[1] + 2 * pad) if col_labels else 0
    f_cap = font(12)
    caph = (_text_size(probe, "Ag", f_cap)[1] + pad) if captions else 0
    ncols = max(len(r) for r in cells)
    rowh = ch + caph + pad
    out = Image.new("RGB", (lw + ncols * (cw + pad) + pad, th + lh + len(cells) * rowh + pad), "white")
    draw = ImageDraw.Draw(out)
    if title:
        draw.text((pad, pad), title, fill="black", font=f_title)
    for j, label in enumerate(col_labels):
        tw, _ = _text_size(draw, label, f_label)
        draw.text((lw + pad + j * (cw + pad) + (cw - tw) / 2, th + pad / 2), label, fill="black", font=f_label)
    for i, row in enumerate(cells):
        y = th + lh + pad + i * rowh
        if i < len(row_labels):
            _, lh_i = _text_size(draw, row_labels[i], f_label)
            draw.text((pad, y + (ch - lh_i) / 2), row_labels[i], fill="black", font=f_label)
        for j, im in enumerate(row):
            x = lw + pad + j * (cw + pad)
            if im is not None:
                out.paste(im.convert("RGB"), (x, y))
            if captions and i < len(captions) and j < len(captions[i]) and captions[i][j]:
                tw, _ = _text_size(draw, captions[i][j], f_cap)
                draw.text((x + (cw - tw) / 2, y + ch + 2), captions[i][j], fill="#333333", font=f_cap)
    return out
