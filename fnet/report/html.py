"""The report page: one static HTML file with embedded CSS, inline SVG and a small vanilla-JS sort/filter.

Nothing on the page refers outside it (no src/href to another host, no fonts, no stylesheets): it opens from
a file:// URL on a machine without network. Each selected object is one <figure class="object">; the summary
table above lists them with the same data-* attributes, which the script sorts and filters, moving the figures
with the table rows. A URL fragment #sort=KEY (or #sort=-KEY, descending; KEY one of TABLE_COLUMNS' keys, e.g. z,
dv, sn, zwarn) opens the page sorted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape

from ..runtime.zwarn import ZWarn

CSS = """
:root{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;font-size:14px;color:#1b1b1b;background:#fafafa}
body{margin:0 auto;max-width:1280px;padding:12px 18px}
h1{font-size:20px;margin:4px 0 6px}
.prov{color:#444;font-size:12px;margin:0 0 8px}
.prov .kv{margin-right:14px}
#loading{position:sticky;top:0;background:#fff7d6;border:1px solid #e5c65b;padding:4px 8px;display:none}
.js #loading{display:block}
#loading .bar{height:4px;background:#e5c65b;width:30%;animation:slide 1s linear infinite}
@keyframes slide{from{margin-left:0}to{margin-left:70%}}
[hidden]{display:none!important}
.controls{display:flex;flex-wrap:wrap;gap:6px 16px;align-items:center;background:#fff;border:1px solid #ddd;
 padding:6px 8px;margin:6px 0;font-size:12px}
.controls fieldset{border:0;padding:0;margin:0;display:flex;flex-wrap:wrap;gap:2px 8px;align-items:center}
.controls input[type=number]{width:72px}
.controls input[type=search]{width:160px}
table.sum{border-collapse:collapse;width:100%;background:#fff;font-size:12px}
table.sum th,table.sum td{border-bottom:1px solid #e3e3e3;padding:2px 6px;text-align:right;white-space:nowrap}
table.sum th{position:sticky;top:0;background:#eef1f5;cursor:pointer;user-select:none}
table.sum th.asc::after{content:" \\25B2"}table.sum th.desc::after{content:" \\25BC"}
table.sum td.t,table.sum th.t{text-align:left}
.wrap{max-height:360px;overflow:auto;border:1px solid #ddd}
tr.failed td{color:#a11}
figure.object{margin:14px 0;padding:8px 10px;background:#fff;border:1px solid #d8d8d8;border-radius:4px}
figure.object figcaption{font-size:13px;margin-bottom:4px}
figure.object figcaption .zw{color:#a15c00}
svg{display:block;width:100%;height:auto;font-size:11px}
svg text{fill:#333}
svg .ax{fill:none;stroke:#777;stroke-width:1}
svg .f{fill:none;stroke:#1b1b1b;stroke-width:8;stroke-linejoin:round}
svg .nb{fill:#9bb7d4;fill-opacity:.45;stroke:none}
svg .l1{stroke:#d62728;stroke-width:1;fill:#d62728;opacity:.8}
svg .l2{stroke:#1f5fb4;stroke-width:1;stroke-dasharray:5 3;fill:#1f5fb4;opacity:.8}
svg text.l1,svg text.l2{stroke:none;font-size:10px}
svg .pza{fill:#6a8fbf;stroke:#2a4f7f;stroke-width:6}
svg .lab{fill:#555}
.lower{display:grid;grid-template-columns:minmax(260px,460px) 1fr minmax(160px,220px);gap:12px;align-items:start}
.pzbox svg{max-width:460px}
table.facts{border-collapse:collapse;font-size:12px}
table.facts th{text-align:left;color:#555;font-weight:normal;padding:1px 8px 1px 0;vertical-align:top;white-space:nowrap}
table.facts td{padding:1px 0;word-break:break-all}
.nofig{padding:24px;color:#a11;background:#fff4f4;border:1px dashed #e0a0a0}
.legend{font-size:11px;color:#555;margin:2px 0 6px}
.legend .c1{color:#d62728}.legend .c2{color:#1f5fb4}
.cls .bar{height:10px;background:#6a8fbf;display:inline-block;vertical-align:middle;margin-right:4px}
.cls div{white-space:nowrap;font-size:12px}
.note{font-size:12px;color:#555}
"""

SCRIPT = r"""
(function(){
var tbody=document.querySelector('#objects tbody'),cards=document.getElementById('cards');
var rows=Array.prototype.slice.call(tbody.rows),figs={};
Array.prototype.forEach.call(cards.querySelectorAll('figure.object'),function(f){figs[f.dataset.i]=f;});
function num(v){var x=parseFloat(v);return isNaN(x)?null:x;}
function sortBy(th){
 var key=th.dataset.key,type=th.dataset.type,asc=!th.classList.contains('asc');
 Array.prototype.forEach.call(th.parentNode.children,function(h){h.classList.remove('asc','desc');});
 th.classList.add(asc?'asc':'desc');
 rows.sort(function(a,b){
  var x=a.dataset[key],y=b.dataset[key];
  if(type==='num'){x=num(x);y=num(y);if(x===null&&y===null)return 0;if(x===null)return 1;if(y===null)return -1;
   return asc?x-y:y-x;}
  return asc?String(x).localeCompare(String(y)):String(y).localeCompare(String(x));});
 rows.forEach(function(r){tbody.appendChild(r);cards.appendChild(figs[r.dataset.i]);});
}
Array.prototype.forEach.call(document.querySelectorAll('#objects th'),function(th){
 th.addEventListener('click',function(){sortBy(th);});});
var form=document.getElementById('filters');
function val(id){var e=document.getElementById(id);return e?e.value:'';}
function range(v,lo,hi){if(lo===''&&hi==='')return true;var x=num(v);if(x===null)return false;
 if(lo!==''&&x<parseFloat(lo))return false;if(hi!==''&&x>parseFloat(hi))return false;return true;}
function apply(){
 var mask=0,none=false;
 Array.prototype.forEach.call(form.querySelectorAll('input.zwbit'),function(c){
  if(c.checked){var b=parseInt(c.value,10);if(b===0)none=true;else mask|=b;}});
 var st=val('f-status'),ty=val('f-spectype'),text=val('f-text').toLowerCase(),shown=0;
 rows.forEach(function(r){
  var d=r.dataset,zw=parseInt(d.zwarn,10)||0;
  var ok=(zw===0?none:(zw&mask)!==0)&&(!st||d.status===st)&&(!ty||d.spectype===ty)
   &&range(d.sn,val('f-snmin'),val('f-snmax'))&&range(d.dv,val('f-dvmin'),val('f-dvmax'))
   &&(!text||(d.file+' '+d.id).toLowerCase().indexOf(text)>=0);
  r.hidden=!ok;figs[d.i].hidden=!ok;if(ok)shown++;});
 document.getElementById('shown').textContent=shown;
}
var m=/sort=(-?)(\w+)/.exec(location.hash),th=m&&document.querySelector('#objects th[data-key="'+m[2]+'"]');
if(th){sortBy(th);if(m[1])sortBy(th);}
form.addEventListener('input',apply);form.addEventListener('change',apply);
form.addEventListener('reset',function(){setTimeout(apply,0);});
apply();
var l=document.getElementById('loading');if(l)l.hidden=true;
})();
"""

#: Summary-table columns: (data key, heading, sort type).
TABLE_COLUMNS = (
    ("i", "#", "num"), ("file", "file", "text"), ("id", "ID", "text"), ("z", "Z", "num"),
    ("zerr", "Z_ERR", "num"), ("dv", "P(z) width km/s", "num"), ("zwarn", "ZWARN", "num"),
    ("spectype", "SPECTYPE", "text"), ("sn", "S/N", "num"), ("cov", "COVERAGE", "num"),
    ("status", "STATUS", "text"),
)


@dataclass
class ObjectCard:
    """One selected catalog row, ready to print: summary values (data-*) and the card's content."""

    index: int  # position in the selection (0-based)
    data: dict[str, str]  # the TABLE_COLUMNS keys -> text shown in the table and kept in data-*
    caption: str  # HTML
    figure: str  # HTML: the spectrum SVG or a note saying why there is none
    pdf: str  # HTML: the P(z) SVG or a note
    legend: str  # HTML
    facts: list[tuple[str, str]] = field(default_factory=list)  # (name, plain text value)
    classes: str = ""  # HTML: class probabilities


def zwarn_names(value: int) -> str:
    """ZWARN bit names joined with |, or '' for 0."""
    return "|".join(bit.name for bit in ZWarn if int(value) & int(bit))


def _attrs(data: dict[str, str]) -> str:
    return " ".join(f'data-{k}="{escape(v, quote=True)}"' for k, v in data.items())


def page_head(title: str, provenance: list[tuple[str, str]], selection: str, n_selected: int, n_rows: int,
              spectypes: list[str] | None, notes: list[str]) -> str:
    """Everything before the summary table's rows: head, CSS, header facts, the filter controls."""
    prov = "".join(f"<span class=\"kv\"><b>{escape(k)}</b> {escape(v)}</span>" for k, v in provenance)
    bits = ['<label><input type="checkbox" class="zwbit" value="0" checked> 0 (none)</label>']
    bits += [f'<label title="bit {b.bit_length() - 1}"><input type="checkbox" class="zwbit" value="{int(b)}" checked>'
             f" {escape(b.name)}</label>" for b in ZWarn]
    if spectypes:
        options = "".join(f'<option value="{escape(t, quote=True)}">{escape(t)}</option>' for t in spectypes)
        spectype = f'<select id="f-spectype"><option value="">all</option>{options}</select>'
    else:
        spectype = '<select id="f-spectype" disabled title="the catalog has no SPECTYPE column"><option value="">—</option></select>'
    head_cells = "".join(f'<th data-key="{k}" data-type="{t}" class="{"t" if t == "text" else ""}">{escape(h)}</th>'
                         for k, h, t in TABLE_COLUMNS)
    notes_html = "".join(f'<p class="note">{escape(n)}</p>' for n in notes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<style>{CSS}</style>
<script>document.documentElement.className='js';</script>
</head><body>
<div id="loading">Rendering {n_selected} objects…<div class="bar"></div></div>
<h1>{escape(title)}</h1>
<p class="prov">{prov}</p>
<p class="prov"><b>selection</b> {escape(selection)}: <b>{n_selected}</b> of {n_rows} rows;
<span id="shown">{n_selected}</span> shown after the filters below.</p>
{notes_html}
<noscript><p class="note">Sorting and filtering need JavaScript; every object is listed below.</p></noscript>
<form id="filters" class="controls" onsubmit="return false">
<fieldset><b>ZWARN any of</b> {''.join(bits)}</fieldset>
<fieldset><b>SPECTYPE</b> {spectype}
<b>STATUS</b> <select id="f-status"><option value="">all</option><option>ok</option><option>failed</option></select></fieldset>
<fieldset><b>S/N</b> <input id="f-snmin" type="number" step="any" placeholder="min"> – <input id="f-snmax" type="number" step="any" placeholder="max"></fieldset>
<fieldset><b>P(z) width km/s</b> <input id="f-dvmin" type="number" step="any" placeholder="min"> – <input id="f-dvmax" type="number" step="any" placeholder="max"></fieldset>
<fieldset><b>file / ID</b> <input id="f-text" type="search" placeholder="contains"> <button type="reset">reset</button></fieldset>
</form>
<div class="wrap"><table id="objects" class="sum"><thead><tr>{head_cells}</tr></thead><tbody>
"""


def table_row(index: int, data: dict[str, str]) -> str:
    """One summary-table row (data: the TABLE_COLUMNS keys) linking to figure obj-INDEX."""
    cells = []
    for key, _, kind in TABLE_COLUMNS:
        text = escape(str(index + 1) if key == "i" else data.get(key, ""))
        if key == "file":
            text = f'<a href="#obj-{index}">{text}</a>'
        if key == "zwarn" and data.get("zwarn", "0") not in ("0", ""):
            text = f'<span title="{escape(zwarn_names(int(data["zwarn"])), quote=True)}">{text}</span>'
        cells.append(f'<td class="{"t" if kind == "text" else ""}">{text}</td>')
    failed = ' class="failed"' if data.get("status") != "ok" else ""
    return f"<tr{failed} {_attrs(data)}>{''.join(cells)}</tr>\n"


def middle(definitions: list[str]) -> str:
    """Between the table and the figures: how the figures are made."""
    items = "".join(f"<li>{escape(d)}</li>" for d in definitions)
    return f'</tbody></table></div>\n<ul class="note">{items}</ul>\n<div id="cards">\n'


def figure_html(card: ObjectCard) -> str:
    """One <figure class="object"> for one selected row."""
    facts = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in card.facts)
    return (f'<figure class="object" id="obj-{card.index}" {_attrs(card.data)}>'
            f"<figcaption>{card.caption}</figcaption>{card.figure}"
            f'<div class="legend">{card.legend}</div>'
            f'<div class="lower"><div class="pzbox">{card.pdf}</div>'
            f'<table class="facts">{facts}</table><div class="cls">{card.classes}</div></div></figure>\n')


def page_tail(empty_note: str = "") -> str:
    """Close the figures, run the sort/filter script, end the page."""
    note = f'<p class="note">{escape(empty_note)}</p>' if empty_note else ""
    return f"</div>{note}\n<script>{SCRIPT}</script>\n</body></html>\n"
