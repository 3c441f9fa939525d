"""The leaderboard page in a real browser (Debian chromium, headless): it loads offline, a header
click sorts the table through the page's own script (allowed by its CSP hash), plots render.

Skipped without chromium on a developer machine; in CI (``CI`` set) a missing browser fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from robustbench_mm import api

EVIL = "<script>alert(1)</script>"

# Loads the page in an iframe (same origin thanks to --allow-file-access-from-files), then acts
# like a user and writes what it saw into its own DOM, which --dump-dom prints.
HARNESS = """<!DOCTYPE html><html><body><iframe id="f" src="PAGE" width="1200" height="800"></iframe>
<script>
window.addEventListener('load', function () {
  var out = {};
  try {
    var d = document.getElementById('f').contentDocument;
    out.title = d.title;
    out.imgs = Array.prototype.map.call(d.querySelectorAll('img.plot'), function (i) {
      return [i.complete, i.naturalWidth, i.naturalHeight]; });
    var t = d.querySelector('table.sortable'), ths = t.tHead.rows[0].cells, col = -1;
    for (var k = 0; k < ths.length; k++) if (ths[k].textContent === 'ASR') col = k;
    var values = function () { return Array.prototype.map.call(t.tBodies[0].rows, function (r) {
      return r.cells[col].getAttribute('data-sort'); }); };
    out.models = Array.prototype.map.call(t.tBodies[0].rows, function (r) { return r.cells[0].textContent; });
    out.before = values();
    ths[col].click(); out.asc = values(); out.aria_asc = ths[col].getAttribute('aria-sort');
    ths[col].click(); out.desc = values(); out.aria_desc = ths[col].getAttribute('aria-sort');
  } catch (e) { out.error = String(e); }
  var pre = document.createElement('pre'); pre.id = 'result'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script></body></html>"""


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail("chromium not found but CI is set: .ci/run must `apt-get install -y chromium`")
    pytest.skip("chromium not installed (apt-get install chromium); runs in CI")


def test_page_loads_sorts_and_shows_plots(make_store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    browser = _chromium()
    T, F = True, False
    clean = [T] * 8 + [F] * 2
    store = make_store("s", [
        dict(cell_id="c1", attack="pgd", clean=clean, adv=[F, F, F] + [T] * 7),
        dict(cell_id="c2", attack="apgd-ce", clean=clean, adv=[F] * 6 + [T] * 4),
        dict(cell_id="c3", model=EVIL, attack="pgd", clean=clean, adv=[F] + [T] * 9),
        dict(cell_id="c4", attack="pgd", defense="fs", clean=clean, adv=[T] * 10,
             certified=[(0.1, 0.9), (0.5, 0.5)]),
    ])
    api.leaderboard([store], out=tmp_path / "results")
    page = (tmp_path / "results" / "index.html").resolve()
    harness = tmp_path / "harness.html"
    harness.write_text(HARNESS.replace("PAGE", page.as_uri()))
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'prof'}",
           "--allow-file-access-from-files", "--virtual-time-budget=10000", "--dump-dom", harness.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="result">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"no result from chromium (rc {proc.returncode}): {proc.stderr[-2000:]}"
    out = json.loads(found.group(1).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
                     .replace("&quot;", '"'))
    assert "error" not in out, out.get("error")
    assert out["title"] == "mmrobust leaderboard"
    assert EVIL in out["models"]  # shown as text (the escaped markup never became an element)
    assert len(out["imgs"]) == 2 and all(c and w > 0 and h > 0 for c, w, h in out["imgs"])
    asc = [float(v) for v in out["asc"]]
    assert out["aria_asc"] == "ascending" and asc == sorted(asc)
    assert out["aria_desc"] == "descending" and [float(v) for v in out["desc"]] == sorted(asc, reverse=True)
    assert out["before"] != out["asc"] or out["before"] == sorted(out["before"])
