"""The report page's own style and script, inlined into every report (no external asset).

``WATCH`` runs first, in the head: every error a script raises on the page is appended to
``#script-errors`` as text, so a headless browser's DOM dump shows it. ``SCRIPT`` adds the
hover card (from each bar's ``data-tip``, set as text, never parsed as HTML) and marks the
body ``data-ready`` with the number of bars once it has run.
"""

from __future__ import annotations

__all__ = ["COLOURS", "SCRIPT", "STYLE", "WATCH"]

COLOURS = {
    "waiting": "#c8ccd2",
    "sending": "#f0a030",
    "building": "#3a7bd5",
    "fetching": "#3fa35b",
}

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em 2em; color: #222; }
#timeline { display: block; max-width: 100%; height: auto; }
h1 { font-size: 1.4em; margin: 0 0 .3em; }
h2 { font-size: 1.1em; margin: 1.6em 0 .5em; }
.facts { display: flex; flex-wrap: wrap; gap: .4em 2em; margin: .6em 0;
  overflow-wrap: anywhere; }
.facts div b { display: block; font-size: 1.3em; }
.facts .far b { color: #b03020; }
table { border-collapse: collapse; }
th, td { padding: .2em .8em; text-align: right; border-bottom: 1px solid #e4e4e4; }
th:first-child, td:first-child { text-align: left; }
th, td { white-space: nowrap; }
td.name, td.text { white-space: normal; overflow-wrap: anywhere; }
td.name { font-family: ui-monospace, monospace; text-align: left; }
.legend span { display: inline-block; margin-right: 1.2em; }
.legend i { display: inline-block; width: 1.2em; height: .8em; margin-right: .3em;
  vertical-align: middle; border-radius: 2px; }
.legend i.crit { background: none; border: 2px solid #d0104c; }
.legend i.bound { background: none; width: 0; border-left: 2px dashed #d0104c; }
.legend i.failed { background: none; border: 1.5px dashed #8b0000; }
.legend i.stopped { background: #3a7bd5; opacity: .45; }
svg text { font: 12px system-ui, sans-serif; fill: #333; }
svg .lane-name { font-weight: 600; }
svg .grid { stroke: #eee; }
svg .bound { stroke: #d0104c; stroke-dasharray: 4 3; }
svg .end { stroke: #555; }
g.bar { cursor: default; }
g.bar.stopped { opacity: .45; }
g.bar .outline { fill: none; stroke: none; }
g.bar.failed .outline { stroke: #8b0000; stroke-width: 1.5; stroke-dasharray: 3 2; }
g.bar.critical .outline { stroke: #d0104c; stroke-width: 2.5; }
g.bar:hover .outline { stroke: #111; stroke-width: 2; }
#tip { position: fixed; pointer-events: none; background: #fff; border: 1px solid #999;
  box-shadow: 0 2px 6px rgba(0,0,0,.25); padding: .4em .6em; font-size: 12px;
  max-width: 40em; white-space: pre-wrap; }
#tip div:first-child { font-weight: 600; }
#script-errors:empty { display: none; }
#script-errors { color: #b00; }
"""

WATCH = """
window.addEventListener("error", function (event) {
  var item = document.createElement("li");
  item.textContent = String(event.message || event.type);
  var list = document.getElementById("script-errors");
  if (list) { list.appendChild(item); return; }
  (window.earlyErrors = window.earlyErrors || []).push(item);
});
"""

SCRIPT = """
(function () {
  var list = document.getElementById("script-errors");
  (window.earlyErrors || []).forEach(function (item) { list.appendChild(item); });
  var tip = document.getElementById("tip");
  function show(bar, event) {
    tip.replaceChildren();
    bar.getAttribute("data-tip").split("\\n").forEach(function (line) {
      var div = document.createElement("div");
      div.textContent = line;
      tip.appendChild(div);
    });
    tip.hidden = false;
    var x = event.clientX + 14, y = event.clientY + 14;
    if (x + tip.offsetWidth > window.innerWidth) { x = event.clientX - tip.offsetWidth - 14; }
    if (y + tip.offsetHeight > window.innerHeight) { y = event.clientY - tip.offsetHeight - 14; }
    tip.style.left = Math.max(0, x) + "px";
    tip.style.top = Math.max(0, y) + "px";
  }
  var bars = document.querySelectorAll("g.bar");
  bars.forEach(function (bar) {
    bar.addEventListener("mousemove", function (event) { show(bar, event); });
    bar.addEventListener("mouseleave", function () { tip.hidden = true; });
  });
  document.body.setAttribute("data-ready", String(bars.length));
})();
"""
