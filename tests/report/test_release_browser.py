"""A small built release in a real browser (Debian chromium, headless): ranked tables sort through
the page's own script (allowed by its CSP hash), every page's images load, every internal link
resolves, and names from stores are text, never markup.

Skipped without chromium on a developer machine; in CI (``CI`` set) a missing browser fails.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlparse

import pytest

from robustbench_mm.report.release import write_release

EVIL = "<script>alert(1)</script>"

# Loads the index in an iframe (same origin thanks to --allow-file-access-from-files), acts like a
# user, then opens every detail page in turn; writes what it saw into its own DOM (--dump-dom).
HARNESS = """<!DOCTYPE html><html><body><iframe id="f" width="1200" height="800"></iframe>
<script>
var f = document.getElementById('f'), out = {pages: {}};
function done() { var pre = document.createElement('pre'); pre.id = 'result';
  pre.textContent = JSON.stringify(out); document.body.appendChild(pre); }
function imgs(d) { return Array.prototype.map.call(d.querySelectorAll('img'), function (i) {
  return [i.getAttribute('src'), i.complete, i.naturalWidth]; }); }
function visit(list, k) {
  if (k >= list.length) { done(); return; }
  f.onload = function () { var d = f.contentDocument;
    out.pages[list[k]] = {title: d.title, imgs: imgs(d), scripts: d.querySelectorAll('script').length};
    visit(list, k + 1); };
  f.src = list[k];
}
f.onload = function () {
  try {
    var d = f.contentDocument;
    out.title = d.title; out.tables = d.querySelectorAll('table.sortable').length;
    out.scripts_in_cells = d.querySelectorAll('td script, td img').length;
    var t = d.querySelector('table.sortable'), ths = t.tHead.rows[0].cells, col = -1;
    for (var k = 0; k < ths.length; k++) if (ths[k].textContent === 'robust') col = k;
    var values = function () { return Array.prototype.map.call(t.tBodies[0].rows, function (r) {
      return r.cells[col].getAttribute('data-sort'); }); };
    out.models = Array.prototype.map.call(d.querySelectorAll('table.sortable tbody tr'), function (r) {
      return r.cells[1].textContent; });
    out.longest = Math.max.apply(null, Array.prototype.map.call(d.querySelectorAll('td'), function (c) {
      return c.textContent.trim().length; }));
    out.before = values();
    ths[col].click(); out.asc = values(); out.aria_asc = ths[col].getAttribute('aria-sort');
    ths[col].click(); out.desc = values(); out.aria_desc = ths[col].getAttribute('aria-sort');
    var details = Array.prototype.map.call(d.querySelectorAll('a'), function (a) { return a.href; })
      .filter(function (h) { return h.indexOf('/entries/') >= 0; });
    visit(details, 0);
  } catch (e) { out.error = String(e); done(); }
};
f.src = 'PAGE';
</script></body></html>"""


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("href", "src") and value:
                self.refs.append(value)


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if path:
        return path
    pytest.fail("chromium not found: apt-get install chromium (.ci/run installs it)")


@pytest.fixture
def release(make_store, real_store: Path, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    T, F = True, False
    clean = [T] * 8 + [F] * 2
    synthetic = make_store("s", [
        dict(cell_id="c1", model="openclip-tiny", clean=clean, adv=[F, F, F] + [T] * 7),
        dict(cell_id="c2", model="openclip-tiny", defense="tecoa", clean=clean, adv=[F] * 6 + [T] * 4),
        dict(cell_id="c3", model=EVIL, defense=EVIL, clean=clean, adv=[F] + [T] * 9, unreliable=True),
        dict(cell_id="c4", defense="fs", norm="l2", eps=0.5, clean=clean, adv=[T] * 10,
             certified=[("certified_accuracy", 0.25, 0.7, "sound"), ("certified_accuracy", 0.5, 0.5, "sound")]),
    ])
    out = tmp_path / "v1"
    write_release([real_store, synthetic], out)
    return out


def assert_links_resolve(release: Path) -> None:
    """Every href/src of every page is a file inside the release, or a paper on arxiv.org."""
    for page in sorted(release.rglob("*.html")):
        parser = _Refs()
        parser.feed(page.read_text())
        for ref in parser.refs:
            url = urlparse(ref)
            if url.scheme in ("http", "https"):
                assert url.netloc == "arxiv.org", ref  # the only external links: papers
                continue
            target = (page.parent / url.path).resolve() if url.path else page
            assert target.is_file(), f"{page.relative_to(release)} links to missing {ref}"
            assert release.resolve() in target.parents, f"{page.relative_to(release)} leaves the release: {ref}"


def test_every_internal_link_and_image_resolves(release: Path) -> None:
    assert len(list((release / "entries").glob("*.html"))) == 5
    assert_links_resolve(release)


def test_release_in_chromium_sorts_escapes_and_shows_galleries(release: Path, tmp_path: Path) -> None:
    browser = _chromium()
    harness = tmp_path / "harness.html"
    harness.write_text(HARNESS.replace("PAGE", (release / "index.html").resolve().as_uri()))
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'prof'}",
           "--allow-file-access-from-files", "--virtual-time-budget=20000", "--dump-dom", harness.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    found = re.search(r'<pre id="result">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"no result from chromium (rc {proc.returncode}): {proc.stderr[-2000:]}"
    out = json.loads(found.group(1).replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"')
                     .replace("&amp;", "&"))
    assert "error" not in out, out.get("error")
    assert out["title"] == "mmrobust leaderboard" and out["tables"] == 2
    assert out["scripts_in_cells"] == 0  # the <script> name stayed text
    assert any(m.startswith("<script>") for m in out["models"])
    assert out["longest"] <= 28  # no long cells
    asc = [float(v) for v in out["asc"]]
    assert out["aria_asc"] == "ascending" and asc == sorted(asc)
    assert out["aria_desc"] == "descending" and [float(v) for v in out["desc"]] == sorted(asc, reverse=True)
    assert len(out["pages"]) == 5
    for url, page in out["pages"].items():
        assert page["scripts"] == 1, url  # only the page's own sort script
        srcs = [s for s, _, _ in page["imgs"]]
        assert any("/gallery/" in s for s in srcs) and any("robust-vs-eps" in s for s in srcs), (url, srcs)
        assert all(ok and w > 0 for _, ok, w in page["imgs"]), (url, page["imgs"])
    fs_page = [p for u, p in out["pages"].items() if "--fs--l2" in u]
    assert fs_page and any("certified" in s for s, _, _ in fs_page[0]["imgs"])
