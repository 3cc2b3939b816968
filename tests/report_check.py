"""Open a Snakemake HTML report in headless Chromium and check that its pictures load.

``check_report(report_zip)`` unzips the report, adds a small script to a copy of its
``report.html`` and loads that page in headless Chromium. The script waits for the
report's app to render, then loads every result the report holds: each picture as an
``<img>`` from the report's own data (its pixel size, or a failure, is recorded), each
HTML result in an ``<iframe>`` (its ``<video>`` and ``<table>`` elements are counted).
What it found is written into the page as JSON, which ``--dump-dom`` prints.

Chromium: ``chromium`` on the PATH (Debian: ``apt-get install -y chromium``) or the
``CHROMIUM`` environment variable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

MARKER = "innout-report-check"

# Runs in the report page. `results` is the report's global table of results
# (path -> {mime_type, data_uri, caption, job_properties}).
CHECK_SCRIPT = """
<script>
window.addEventListener("load", function () {
  var out = {app_elements: 0, results: {}, images: {}, failed: [], pages: {}};
  var pending = 0;
  function finish() {
    var pre = document.createElement("pre");
    pre.id = "%(marker)s";
    pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
  }
  function settle() { pending -= 1; if (pending === 0) { finish(); } }
  setTimeout(function () {
    out.app_elements = document.getElementById("app").getElementsByTagName("*").length;
    pending = 1;
    Object.keys(results).forEach(function (key) {
      var r = results[key];
      out.results[key] = {mime: r.mime_type, caption: r.caption || "", rule: (r.job_properties || {}).rule};
      if (r.mime_type.indexOf("image/") === 0) {
        pending += 1;
        var img = document.createElement("img");
        img.onload = function () { out.images[key] = [img.naturalWidth, img.naturalHeight]; settle(); };
        img.onerror = function () { out.failed.push(key); settle(); };
        img.src = r.data_uri;
        document.body.appendChild(img);
      } else if (r.mime_type === "text/html") {
        pending += 1;
        var frame = document.createElement("iframe");
        frame.onload = function () {
          var doc = null;
          try { doc = frame.contentDocument; } catch (e) { doc = null; }
          out.pages[key] = doc ? {videos: doc.getElementsByTagName("video").length,
                                  video_sources: Array.prototype.map.call(doc.getElementsByTagName("video"),
                                      function (v) { return (v.getAttribute("src") || "").slice(0, 30); }),
                                  tables: doc.getElementsByTagName("table").length,
                                  text: (doc.body ? doc.body.textContent : "").slice(0, 2000)} : null;
          settle();
        };
        frame.src = r.data_uri;
        document.body.appendChild(frame);
      }
    });
    settle();
  }, 1000);
});
</script>
""" % {"marker": MARKER}


def find_chromium(install: bool = True) -> str | None:
    """The chromium to use; on a fresh Debian machine (as root) it is installed first, so
    the README's test command needs nothing else."""
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found or not install or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return found
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (["apt-get", "install", "-y", "-q", "chromium"], ["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "chromium"]):
        done = subprocess.run(["timeout", "-k", "10", "900", *command], env=env, capture_output=True, text=True)
        if done.returncode == 0 and command[1] == "install":
            break
    return shutil.which("chromium")


def browse_report(report_zip: Path, chromium: str | None = None, timeout: float = 180) -> dict:
    """What the check script found in the report (see the module docstring)."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("no chromium on the PATH (apt-get install -y chromium)")
    with tempfile.TemporaryDirectory(prefix="report-check-") as tmp:
        root = Path(tmp)
        with zipfile.ZipFile(report_zip) as zf:
            zf.extractall(root / "unzipped")
        pages = sorted((root / "unzipped").rglob("report.html"))
        if not pages:
            raise AssertionError(f"{report_zip}: no report.html inside")
        page = pages[0]
        harness = page.with_name("innout-report-check.html")
        text = page.read_text(encoding="utf8")
        if "</body>" not in text:
            raise AssertionError(f"{page}: no </body>, not an HTML report")
        head, tail = text.rsplit("</body>", 1)
        harness.write_text(head + CHECK_SCRIPT + "</body>" + tail, encoding="utf8")
        profile = root / "profile"
        args = [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
            "--allow-file-access-from-files",  # the iframes' documents are read from the page
            "--virtual-time-budget=30000", "--dump-dom", harness.as_uri(),
        ]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    found = re.search(rf'<pre id="{MARKER}">(.*?)</pre>', proc.stdout, re.S)
    if not found:
        raise AssertionError(f"the report's check did not finish in chromium (rc {proc.returncode}): {proc.stderr[-2000:]}")
    import html

    return json.loads(html.unescape(found.group(1)))


def check_report(report_zip: Path, min_images: int = 1, chromium: str | None = None) -> dict:
    """Open ``report_zip`` in headless Chromium; every picture in it must load with a
    nonzero size, the app must have rendered, and there must be ``min_images`` pictures.
    Returns what was found (for further checks)."""
    found = browse_report(Path(report_zip), chromium)
    assert found["app_elements"] > 10, f"the report's app did not render ({found['app_elements']} elements)"
    assert not found["failed"], f"pictures that did not load: {found['failed']}"
    images = {k: v for k, v in found["images"].items() if v[0] > 0 and v[1] > 0}
    expected = [k for k, r in found["results"].items() if r["mime"].startswith("image/")]
    assert sorted(images) == sorted(expected), f"pictures without pixels: {sorted(set(expected) - set(images))}"
    assert len(images) >= min_images, f"{len(images)} pictures in the report, expected at least {min_images}"
    return found
