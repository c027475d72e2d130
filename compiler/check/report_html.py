"""HTML form of the placement report: one standalone page (no network), the op graph drawn as SVG.

Layout is computed here (deterministic): ops are placed in rows by longest-path depth
(networkx ``topological_generations``), edges run top to bottom. The page's script draws the SVG
from the embedded JSON, one ``<g class="segment" data-segment="i">`` per segment holding that
segment's ops (``<rect class="op" data-op="name">``), coloured by target; hovering an op shows its
op, segment, reason and source line. The tables below the drawing need no script.
"""
from __future__ import annotations

import html
import json

import networkx as nx

COLORS = {"ane": ("#2e7d32", "#c8e6c9"), "gpu": ("#ef6c00", "#ffe0b2"), "cpu": ("#1565c0", "#bbdefb")}
BOX_W, BOX_H, GAP_X, GAP_Y = 132, 22, 14, 18


def layout(ops: list[dict]) -> dict[str, tuple[int, int]]:
    """``{op name: (x, y)}`` pixel positions: row = topological generation, column = order in it."""
    g = nx.DiGraph()
    g.add_nodes_from(o["name"] for o in ops)
    g.add_edges_from((src, o["name"]) for o in ops for src in o["inputs"] if src in g)
    order = {o["name"]: i for i, o in enumerate(ops)}
    pos = {}
    for row, gen in enumerate(nx.topological_generations(g)):
        for col, name in enumerate(sorted(gen, key=order.__getitem__)):
            pos[name] = (GAP_X + col * (BOX_W + GAP_X), GAP_Y + row * (BOX_H + GAP_Y))
    return pos


_SCRIPT = """
const R = JSON.parse(document.getElementById('tlc-data').textContent);
const NS = 'http://www.w3.org/2000/svg';
const svg = document.getElementById('graph');
const tip = document.getElementById('tip');
function el(tag, attrs, parent) {
  const e = document.createElementNS(NS, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  parent.appendChild(e); return e;
}
let W = 0, H = 0;
for (const o of R.ops) { W = Math.max(W, o.x + R.box[0]); H = Math.max(H, o.y + R.box[1]); }
svg.setAttribute('width', W + R.gap[0]); svg.setAttribute('height', H + R.gap[1]);
const at = {}; for (const o of R.ops) at[o.name] = o;
const edges = el('g', {'class': 'edges'}, svg);
for (const o of R.ops) for (const s of o.inputs) if (at[s]) {
  const a = at[s];
  el('line', {x1: a.x + R.box[0] / 2, y1: a.y + R.box[1], x2: o.x + R.box[0] / 2, y2: o.y,
              stroke: a.segment === o.segment ? '#999' : '#d32f2f',
              'stroke-width': a.segment === o.segment ? 1 : 2}, edges);
}
for (const s of R.segments) {
  const g = el('g', {'class': 'segment', 'data-segment': s.index, 'data-target': s.target}, svg);
  const [stroke, fill] = R.colors[s.target];
  for (const o of R.ops.filter(o => o.segment === s.index)) {
    const r = el('rect', {'class': 'op', 'data-op': o.name, x: o.x, y: o.y, width: R.box[0], height: R.box[1],
                          rx: 4, fill: fill, stroke: o.on_ane ? stroke : '#d32f2f',
                          'stroke-width': o.on_ane ? 1 : 2, 'stroke-dasharray': o.on_ane ? '' : '4 2'}, g);
    const t = el('text', {x: o.x + 5, y: o.y + 15, 'font-size': 11}, g);
    t.textContent = o.op.length > 20 ? o.op.slice(0, 19) + '\u2026' : o.op;
    for (const n of [r, t]) {
      n.addEventListener('mousemove', ev => {
        tip.style.display = 'block'; tip.style.left = (ev.pageX + 12) + 'px'; tip.style.top = (ev.pageY + 12) + 'px';
        tip.textContent = `${o.name} (${o.op}) \u2192 segment ${o.segment} [${o.target}]` +
          (o.reason ? `\\n${o.reason}` : '\\non the ANE') + (o.source ? `\\n${o.source}` : '');
      });
      n.addEventListener('mouseleave', () => { tip.style.display = 'none'; });
    }
  }
}
document.getElementById('drawn').textContent =
  `${svg.querySelectorAll('g.segment').length} segments, ${svg.querySelectorAll('rect.op').length} ops drawn`;
"""

_STYLE = """
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; } table { border-collapse: collapse; margin: .8em 0; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } .num { text-align: right; } .swatch { display: inline-block; width: 12px;
height: 12px; border: 1px solid #555; margin-right: 4px; vertical-align: middle; }
#wrap { overflow: auto; max-height: 70vh; border: 1px solid #ddd; }
#tip { position: absolute; display: none; background: #fff; border: 1px solid #888; padding: 4px 6px;
white-space: pre; font-size: 12px; pointer-events: none; }
code { font-size: 12px; }
"""


def _e(s) -> str:
    return html.escape(str(s))


def _blank(x):
    return "" if x is None else x


def _compression(c: dict | None) -> str:
    """The compression section: summary, PSNR / rel-L2 per output, notes and the per-layer table
    (config, bits, PSNR with that unit alone compressed, cumulative PSNR where the recipe came from it)."""
    if not c:
        return ""
    met = "" if c.get("met") is None else (" (target met)" if c["met"] else " (<b>target not met</b>)")
    outs = "".join(f"<tr><td><code>{_e(k)}</code></td><td class=num>{_e(v['psnr'])}</td><td class=num>{v['rel_l2']:.3g}</td></tr>"
                   for k, v in c.get("outputs", {}).items())
    notes = "".join(f"<li>{_e(n)}</li>" for n in c.get("notes", []))
    rows = "".join(f"<tr><td><code>{_e(r['unit'])}</code></td><td>{_e(r['role'])}</td><td class=num>{r['size']:,}</td>"
                   f"<td>{_e(r['config'])}</td><td class=num>{r['bits']:.2f}</td><td class=num>{_e(_blank(r.get('single_psnr')))}</td>"
                   f"<td class=num>{_e(_blank(r.get('cumulative_psnr')))}</td></tr>" for r in c.get("layers", []))
    return (f"<h2>Compression</h2><p>{_e(c['request'])}: <b>{c['avg_bits']:.2f} bits per weight</b>, PSNR {_e(c['psnr'])} dB "
            f"(uncompressed {_e(c.get('baseline_psnr'))} dB){met}</p>"
            f"<table><tr><th>output</th><th>PSNR dB</th><th>rel-L2</th></tr>{outs}</table>"
            + (f"<ul>{notes}</ul>" if notes else "")
            + f"<table><tr><th>unit</th><th>role</th><th>elements</th><th>config</th><th>bits</th><th>alone dB</th>"
              f"<th>cumulative dB</th></tr>{rows}</table>")


def render(rep: dict) -> str:
    """The page for a report dict (:meth:`tlc.check.report.PlacementReport.to_json`)."""
    pos = layout(rep["ops"])
    ops = [dict(o, x=pos[o["name"]][0], y=pos[o["name"]][1]) for o in rep["ops"]]
    data = {"ops": ops, "segments": rep["segments"], "colors": {k: list(v) for k, v in COLORS.items()},
            "box": [BOX_W, BOX_H], "gap": [GAP_X, GAP_Y]}
    payload = json.dumps(data).replace("</", "<\\/")
    seg_rows = "".join(
        f"<tr><td class=num>{s['index']}</td><td><span class=swatch style='background:{COLORS[s['target']][1]}'>"
        f"</span>{_e(s['target'])}</td><td class=num>{s['num_ops']}</td><td class=num>{100 * s['flops_share']:.1f}%</td>"
        f"<td><code>{_e(', '.join(s['inputs']))}</code></td><td><code>{_e(', '.join(s['outputs']))}</code></td></tr>"
        for s in rep["segments"])
    off = [o for o in rep["ops"] if not o["on_ane"]]
    op_rows = "".join(
        f"<tr><td><code>{_e(o['name'])}</code></td><td>{_e(o['op'])}</td><td class=num>{o['segment']}</td>"
        f"<td>{_e(o['target'])}</td><td>{_e(o['reason'])}</td><td><code>{_e(o['source'])}</code></td></tr>"
        for o in off)
    pc = rep.get("precision_check")
    precision = ""
    if pc:
        rows = "".join(f"<tr><td><code>{_e(o['name'])}</code></td><td class=num>{_e(o['max_abs'])}</td>"
                       f"<td class=num>{_e(o['rel_l2'])}</td><td class=num>{o['nonfinite']}</td>"
                       f"<td>{'PASS' if o['passed'] else 'FAIL'}</td></tr>" for o in pc["outputs"])
        fixes = "".join(f"<tr><td><code>{_e(k)}</code></td><td>fp32 island</td><td>{_e(v)}</td></tr>"
                        for k, v in pc["islands"].items())
        fixes += "".join(f"<tr><td><code>{_e(k)}</code></td><td>fp16 constant</td><td>{_e(v)}</td></tr>"
                         for k, v in pc["fp16_constants"].items())
        precision = (f"<h2>Precision check</h2><p>{pc['samples']} calibration sample(s) run in the {_e(pc['runtime'])}, "
                     f"{len(pc['rounds'])} round(s): <b>{'PASS' if pc['passed'] else 'FAIL'}</b></p>"
                     f"<table><tr><th>output</th><th>max abs</th><th>rel-L2</th><th>nan/inf</th><th></th></tr>{rows}</table>"
                     + (f"<table><tr><th>op</th><th>change</th><th>reason</th></tr>{fixes}</table>" if fixes else ""))
    compression = _compression(rep.get("compression"))
    legend = " ".join(f"<span class=swatch style='background:{f};border-color:{s}'></span>{t}"
                      for t, (s, f) in COLORS.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>tlc placement: {_e(rep['model'])}</title>
<style>{_STYLE}</style></head><body>
<h1>tlc placement report: {_e(rep['model'])} ({_e(rep['precision'])})</h1>
<p><b>Static ANE residency: {100 * rep['residency']:.1f}%</b> of {rep['total_flops']:,} FLOPs in ops passing every
ANE eligibility rule; in Core ML segments: {100 * rep.get('coreml_share', rep['residency']):.1f}%. {len(rep['segments'])} segment(s),
{len(off)} op(s) not on the ANE. <span id=drawn></span></p>
<p>{legend} &nbsp; dashed red border: op not on the ANE; red edge: tensor crossing segments.</p>
<div id=wrap><svg id=graph xmlns="http://www.w3.org/2000/svg"></svg></div><div id=tip></div>
<h2>Segments</h2><table><tr><th>seg</th><th>target</th><th>ops</th><th>FLOPs</th><th>inputs</th><th>outputs</th></tr>
{seg_rows}</table>
<h2>Ops not on the ANE</h2><table><tr><th>op</th><th>kind</th><th>seg</th><th>target</th><th>reason</th><th>source</th></tr>
{op_rows}</table>
{precision}
{compression}
<script type="application/json" id="tlc-data">{payload}</script>
<script>{_SCRIPT}</script>
</body></html>
"""
