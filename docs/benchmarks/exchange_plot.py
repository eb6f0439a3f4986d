#!/usr/bin/env python3
"""Plots exchange-links.sh's JSON lines: per-step exchange time against the number of peers, the
coordinator mode and mesh mode, measured and modelled (the busiest link at the run's rate), log-log.

    python3 docs/benchmarks/exchange_plot.py docs/benchmarks/results/exchange-links-1gbit.jsonl \
        docs/benchmarks/results/exchange-links-10gbit.jsonl > docs/results/exchange-links-1gbit.svg

The optional second file (the same runs on faster links) adds the measurements there: the cost of the
processes sharing the machine's cores, with the links out of the way.
"""
import json
import math
import sys

runs = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
rate = runs[0]["rate"]
gbps = float(rate.replace("gbit", "")) if rate.endswith("gbit") else float(rate.replace("mbit", "")) / 1000
series = []
for mode, colour in (("coordinator", "#c0392b"), ("mesh", "#2471a3")):
    rows = sorted((r for r in runs if r["mode"] == mode), key=lambda r: r["peers"])
    series.append((f"{mode}: measured (median)", colour, False, [(r["peers"], r["median_ms"]) for r in rows]))
    series.append((f"{mode}: model (busiest link)", colour, True, [(r["peers"], r["model_ms_at_1gbps"] / gbps) for r in rows]))

if len(sys.argv) > 2:
    # The same runs on faster links: what the processes sharing this machine's cores cost by themselves.
    fast = [json.loads(line) for line in open(sys.argv[2]) if line.strip()]
    for mode, colour in (("coordinator", "#e6b0aa"), ("mesh", "#a9cce3")):
        rows = sorted((r for r in fast if r["mode"] == mode), key=lambda r: r["peers"])
        series.append((f"{mode}: measured at {fast[0]['rate']}", colour, False, [(r["peers"], r["median_ms"]) for r in rows]))

width, height, left, right, top, bottom = 820, 400, 70, 290, 40, 50
xs = [x for _, _, _, points in series for x, _ in points]
ys = [y for _, _, _, points in series for _, y in points]
x0, x1 = math.log2(min(xs)), math.log2(max(xs))
y0, y1 = math.floor(math.log10(min(ys))), math.ceil(math.log10(max(ys)))
def px(x): return left + (math.log2(x) - x0) / (x1 - x0) * (width - left - right)
def py(y): return height - bottom - (math.log10(y) - y0) / (y1 - y0) * (height - top - bottom)

out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
       f'<rect width="{width}" height="{height}" fill="white"/>',
       f'<text x="{left}" y="22" font-size="14">The exchange per step on emulated {rate} links (synthetic peers, 117 KB of outputs each)</text>']
for n in sorted(set(xs)):
    out.append(f'<line x1="{px(n):.1f}" y1="{top}" x2="{px(n):.1f}" y2="{height - bottom}" stroke="#ddd"/>')
    out.append(f'<text x="{px(n):.1f}" y="{height - bottom + 16}" text-anchor="middle">{n}</text>')
for e in range(y0, y1 + 1):
    out.append(f'<line x1="{left}" y1="{py(10 ** e):.1f}" x2="{width - right}" y2="{py(10 ** e):.1f}" stroke="#ddd"/>')
    out.append(f'<text x="{left - 6}" y="{py(10 ** e) + 4:.1f}" text-anchor="end">{10 ** e:g}</text>')
out.append(f'<text x="{(left + width - right) / 2}" y="{height - 12}" text-anchor="middle">peers N</text>')
out.append(f'<text x="16" y="{(top + height - bottom) / 2}" transform="rotate(-90 16 {(top + height - bottom) / 2})" text-anchor="middle">ms per step (log)</text>')
for i, (name, colour, dashed, points) in enumerate(series):
    path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
    dash = ' stroke-dasharray="5,4"' if dashed else ""
    out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>')
    if not dashed:
        out += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}"/>' for x, y in points]
    ly = top + 10 + i * 20
    out.append(f'<line x1="{width - right + 14}" y1="{ly}" x2="{width - right + 40}" y2="{ly}" stroke="{colour}" stroke-width="2"{dash}/>')
    out.append(f'<text x="{width - right + 46}" y="{ly + 4}">{name}</text>')
out.append("</svg>")
print("\n".join(out))
