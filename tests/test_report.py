"""The HTML report check itself, on a small report (good and broken). The demo's own
report is checked in tests/test_demo_workflow.py."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from report_check import check_report, find_chromium
from workflow_helpers import snakemake, workflow_copy

needs_chromium = pytest.mark.skipif(find_chromium() is None, reason="chromium is not installed (apt-get install -y chromium)")

MINI = '''
rule all:
    input: "out/a.png", "out/page.html"
rule a:
    output:
        report("out/a.png", caption="cap.rst", category="c"),
        report("out/page.html", caption="cap.rst", category="c"),
    run:
        from PIL import Image
        Image.new("RGB", (40, 30), "red").save(output[0])
        open(output[1], "w").write("<html><body><table><tr><td>1</td></tr></table></body></html>")
'''


@pytest.fixture(scope="module")
def mini_report(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("mini")
    (work / "Snakefile").write_text(MINI)
    (work / "cap.rst").write_text("A picture.\n")
    for args in (("--cores", "1"), ("--report", "report.zip")):
        result = snakemake(work, *args, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    return work / "report.zip"


@needs_chromium
def test_check_sees_pictures_and_pages(mini_report):
    found = check_report(mini_report, min_images=1)
    assert found["images"] == {"out/a.png": [40, 30]}
    assert found["pages"]["out/page.html"]["tables"] == 1
    with pytest.raises(AssertionError, match="at least 2"):
        check_report(mini_report, min_images=2)


@needs_chromium
def test_check_catches_a_broken_picture(mini_report, tmp_path):
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(mini_report) as src, zipfile.ZipFile(broken, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item, b"not a png" if item.filename.endswith("a.png") else data)
    with pytest.raises(AssertionError, match="did not load"):
        check_report(broken)

# The whole demo's report is checked in tests/test_demo_workflow.py (it reuses that run).
