"""The batch report: one self-contained HTML file (no network access needed to open it).

Data goes in as one JSON document; a small SVG renderer embedded in the page draws:
the top anomalous hosts with what made them anomalous, each top host's score over time,
feature distributions (anomalous host-windows against the rest) and the cluster picture
(host-windows projected on their first two principal components, coloured by score).
When every plot has drawn, the page sets ``data-plots="ok"`` on ``<body>``; a script
error sets ``data-plots="error: ..."``, so a headless browser can check the result.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

from netsift import store

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%}td,th{padding:4px 8px;border-bottom:1px solid #eee;
text-align:left;vertical-align:top}th{background:#f6f6f6}.num{text-align:right;
font-variant-numeric:tabular-nums}.muted{color:#777}.plot{margin:8px 0 18px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:12px}
svg text{font:11px system-ui,sans-serif;fill:#444}.bar{fill:#4c78a8}.bad{fill:#e45756}
"""

# Plots read window.NETSIFT; each draws into its element and returns the shapes drawn.
_SCRIPT = r"""
(function(){
const D = window.NETSIFT, NS = 'http://www.w3.org/2000/svg';
function el(tag, attrs, parent){const e=document.createElementNS(NS,tag);
  for(const k in attrs) e.setAttribute(k, attrs[k]); if(parent) parent.appendChild(e); return e;}
function frame(host, w, h){return el('svg',{width:w,height:h,viewBox:`0 0 ${w} ${h}`},host);}
function scale(lo, hi, a, b){const d=(hi-lo)||1; return v=>a+(v-lo)/d*(b-a);}
function axes(svg, x0, y0, x1, y1, xl, yl){
  el('line',{x1:x0,y1:y1,x2:x1,y2:y1,stroke:'#999'},svg);
  el('line',{x1:x0,y1:y0,x2:x0,y2:y1,stroke:'#999'},svg);
  el('text',{x:x1,y:y1+28,'text-anchor':'end'},svg).textContent=xl;
  el('text',{x:4,y:y0-6},svg).textContent=yl;}
function fmtTime(ns){return new Date(ns/1e6).toISOString().slice(11,19);}
function lines(id, series){
  const host=document.getElementById(id); let drawn=0;
  const W=1000,H=260,L=50,R=W-150,T=20,B=H-40; const svg=frame(host,W,H);
  const xs=series.flatMap(s=>s.t), ys=series.flatMap(s=>s.v).concat([0,1]);
  const sx=scale(Math.min(...xs),Math.max(...xs),L,R), sy=scale(0,Math.max(...ys),B,T);
  axes(svg,L,T,R,B,'window start (UTC)','score');
  [0,0.5,1].forEach(v=>{el('text',{x:L-6,y:sy(v)+4,'text-anchor':'end'},svg).textContent=v;});
  el('text',{x:L,y:B+16},svg).textContent=fmtTime(Math.min(...xs));
  el('text',{x:R,y:B+16,'text-anchor':'end'},svg).textContent=fmtTime(Math.max(...xs));
  const colours=['#e45756','#4c78a8','#f58518','#54a24b','#b279a2','#9d755d','#72b7b2','#ff9da6'];
  series.forEach((s,i)=>{const c=colours[i%colours.length];
    const d=s.t.map((t,j)=>(j?'L':'M')+sx(t).toFixed(1)+','+sy(s.v[j]).toFixed(1)).join('');
    el('path',{d:d,fill:'none',stroke:c,'stroke-width':2},svg); drawn++;
    s.t.forEach((t,j)=>{el('circle',{cx:sx(t),cy:sy(s.v[j]),r:2.5,fill:c},svg);});
    el('text',{x:R+10,y:T+14*i+10,fill:c},svg).textContent=s.name;});
  return drawn;}
function histogram(host, f){
  const W=330,H=170,L=36,R=W-8,T=22,B=H-30; const svg=frame(host,W,H);
  el('text',{x:L,y:12},svg).textContent=f.name+(f.unit?' ('+f.unit+')':'');
  const all=f.normal.concat(f.anomalous); if(!all.length) return 0;
  let lo=Math.min(...all), hi=Math.max(...all); if(lo===hi){hi=lo+1;}
  const bins=20, w=(hi-lo)/bins, count=a=>{const c=new Array(bins).fill(0);
    a.forEach(v=>c[Math.min(bins-1,Math.floor((v-lo)/w))]++); return c;};
  const cn=count(f.normal), ca=count(f.anomalous);
  const top=Math.max(1,...cn,...ca), sx=scale(0,bins,L,R), sy=scale(0,top,B,T); let drawn=0;
  for(let i=0;i<bins;i++){
    if(cn[i]){el('rect',{x:sx(i),y:sy(cn[i]),width:(R-L)/bins-1,height:B-sy(cn[i]),
      class:'bar','fill-opacity':0.6},svg); drawn++;}
    if(ca[i]){el('rect',{x:sx(i)+2,y:sy(ca[i]),width:(R-L)/bins-5,height:B-sy(ca[i]),
      class:'bad','fill-opacity':0.8},svg); drawn++;}}
  axes(svg,L,T,R,B,'','');
  el('text',{x:L,y:B+14},svg).textContent=+lo.toPrecision(3);
  el('text',{x:R,y:B+14,'text-anchor':'end'},svg).textContent=+hi.toPrecision(3);
  return Math.max(drawn,1);}
function scatter(id, pts){
  const host=document.getElementById(id); const W=1000,H=420,L=40,R=W-20,T=20,B=H-30;
  const svg=frame(host,W,H); if(!pts.length) return 0;
  const sx=scale(Math.min(...pts.map(p=>p.x)),Math.max(...pts.map(p=>p.x)),L,R);
  const sy=scale(Math.min(...pts.map(p=>p.y)),Math.max(...pts.map(p=>p.y)),B,T);
  axes(svg,L,T,R,B,'component 1','component 2');
  pts.slice().sort((a,b)=>a.s-b.s).forEach(p=>{
    const c=`hsl(${(1-p.s)*220},75%,${p.s>0.5?45:60}%)`;
    const dot=el('circle',{cx:sx(p.x),cy:sy(p.y),r:p.s>0.9?5:3.5,fill:c,'fill-opacity':0.85},svg);
    el('title',{},dot).textContent=`${p.node} @ ${fmtTime(p.t)}: score ${p.s.toFixed(3)}`+
      (p.c!==null?`, cluster ${p.c}`:'');});
  return pts.length;}
try{
  let drawn=lines('score-over-time', D.timelines);
  const grid=document.getElementById('distributions');
  D.distributions.forEach(f=>{const cell=document.createElement('div'); grid.appendChild(cell);
    drawn+=histogram(cell,f);});
  drawn+=scatter('clusters', D.clusters);
  document.body.setAttribute('data-plots', drawn>0?'ok':'error: nothing drawn');
}catch(e){document.body.setAttribute('data-plots','error: '+e);}
window.addEventListener('error', e=>document.body.setAttribute('data-plots','error: '+e.message));
})();
"""


def _row(cells: list[str], header: bool = False) -> str:
    tag = "th" if header else "td"
    return "<tr>" + "".join(
        f'<{tag}{" class=num" if c.startswith("#") else ""}>{c.lstrip("#")}</{tag}>'
        for c in cells) + "</tr>"


def render(path: Path, *, title: str, summary: list[tuple[str, str]], top_hosts: list[dict],
           timelines: list[dict], distributions: list[dict], clusters: list[dict]) -> Path:
    """Write the report.

    ``top_hosts``: dicts with node, score, window (text), detector, reasons (list of
    "feature = value (typical t)"); ``timelines``: {name, t: [ns], v: [score]};
    ``distributions``: {name, unit, normal: [..], anomalous: [..]}; ``clusters``:
    {node, t, x, y, s (score), c (cluster or None)}.
    """
    esc = html.escape
    summary_rows = "".join(_row([esc(k), esc(v)]) for k, v in summary)
    host_rows = "".join(_row([
        f"#{i + 1}", f"<b>{esc(h['node'])}</b>", f"#{h['score']:.3f}", esc(h["window"]),
        "<br>".join(esc(r) for r in h["reasons"])]) for i, h in enumerate(top_hosts))
    data = json.dumps({"timelines": timelines, "distributions": distributions,
                       "clusters": clusters}, separators=(",", ":"))
    # JSON inside <script>: "</" must not end the element early.
    data = data.replace("</", "<\\/")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>{_STYLE}</style></head>
<body data-plots="pending">
<h1>{esc(title)}</h1>
<table>{summary_rows}</table>
<h2>Top anomalous hosts</h2>
<p class="muted">Highest-scoring host-windows, one line per host; the reasons are the
features that contributed most to the score, with the host's value and the typical value
(median of all host-windows; for a mode, the most common value).</p>
<table>{_row(["#", "host", "#score", "window (UTC)", "what made it anomalous"], True)}
{host_rows}</table>
<h2>Score over time</h2>
<div id="score-over-time" class="plot"></div>
<h2>Feature distributions</h2>
<p class="muted">Blue: all host-windows; red: host-windows scoring above the alert
threshold.</p>
<div id="distributions" class="grid plot"></div>
<h2>Cluster picture</h2>
<p class="muted">Host-windows on their first two principal components (scaled features);
colour from blue (typical) to red (anomalous). Hover a dot for the host.</p>
<div id="clusters" class="plot"></div>
<script>window.NETSIFT={data};</script>
<script>{_SCRIPT}</script>
</body></html>
"""
    tmp = store.scratch_path(path)  # a reader never sees half a page
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path
