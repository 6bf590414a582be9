"""The HTML report of a finished job: its content, and (when Chromium is installed) that it renders.

The report is built from the shared tiny job run (test double, two ok rows, two corrupt images with
the same error message). Expected values come from the committed rows, read back with pyarrow.
"""
from __future__ import annotations

import html.parser
import io
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
from pathlib import Path

import numpy as np
import pytest
from cluster_helpers import (
    TINY_BAD,
    TINY_OK,
    TINY_SIZE,
    by_id,
    ray_session,  # noqa: F401  (fixture)
    read_output,
    tiny_rows,
)
from PIL import Image

from cluster.report import write_report
from cluster.report_cli import report_main

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.timeout(240), pytest.mark.slow]


class _Page(html.parser.HTMLParser):
    """The parts of index.html the tests look at: text, image sources, canvases, scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.imgs: list[str] = []
        self.canvases: list[dict[str, str]] = []
        self.scripts: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a["src"])
        elif tag == "canvas":
            self.canvases.append(a)
        elif tag == "script" and "src" in a:
            self.scripts.append(a["src"])

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def rows(tiny_results) -> dict[str, dict]:
    return by_id(read_output(tiny_results))


@pytest.fixture(scope="module")
def report(tiny_results, tmp_path_factory) -> Path:
    inputs = {r["image_id"]: r["image"] for r in tiny_rows()}
    return write_report(tiny_results, tmp_path_factory.mktemp("report") / "report", rows=None, inputs=inputs)


@pytest.fixture(scope="module")
def page(report) -> _Page:
    p = _Page()
    p.feed(report.read_text())
    return p


def _text(page: _Page) -> str:
    return re.sub(r"\s+", " ", "".join(page.text))


def test_summary_counts_errors_and_times(page, rows):
    text = _text(page)
    ok = [r for r in rows.values() if r["status"] == "ok"]
    assert f"{len(rows)} rows: {len(ok)} ok, {len(rows) - len(ok)} error." in text
    # the two corrupt images share one message: one line of the error table, counted twice
    messages = {rows[k]["error"] for k in TINY_BAD}
    assert len(messages) == 1
    (message,) = messages
    assert text.count(message) == 1 + len(TINY_BAD)  # the grouped line, and each row's own section
    assert f"{len(TINY_BAD)}{message}" in text  # the table cells: count, then message
    secs = [r["seconds"] for r in ok]
    assert min(secs) > 0.1  # sleep_s made them measurable
    assert f"mean {statistics.fmean(secs):.1f}, median {statistics.median(secs):.1f}, max {max(secs):.1f}" in text
    for step in ("step1", "step2"):
        mean = statistics.fmean(dict(r["step_seconds"])[step] for r in ok)
        assert f"{step}{mean:.2f}" in text


def test_every_row_has_its_pictures_and_values(page, report, rows):
    text = _text(page)
    folder = report.parent
    for rid in TINY_OK:
        assert rid in text
        light, view = rows[rid]["light"], rows[rid]["view"]
        assert f"ambient {light[0]:.3f}, diffuse {light[1]:.3f}, direction ({light[2]:+.3f}, {light[3]:+.3f})" in text
        assert f"rotation ({view[0]:+.3f}, {view[1]:+.3f}, {view[2]:+.3f}) rad" in text
        assert f"translation ({view[3]:+.3f}, {view[4]:+.3f}, {view[5]:+.3f})" in text
    for rid in TINY_BAD:
        assert f"error: {rows[rid]['error']}" in text
    # per ok row: input, albedo, two depths, normals, shading, 3 relit, 4 rotated
    assert len(page.imgs) == len(TINY_OK) * 13 and len(set(page.imgs)) == len(page.imgs)
    for src in page.imgs:
        path = folder / src
        assert path.is_file(), src
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.format == "PNG"
            # the input tile shows the image as given (20 px here); everything else is at the result's size
            assert im.size == ((20, 20) if src.endswith("_input.png") else (TINY_SIZE, TINY_SIZE)), src
    albedo_tiles = sorted(s for s in page.imgs if s.endswith("_albedo.png"))
    for src, rid in zip(albedo_tiles, TINY_OK):  # rows are in id order
        stored = np.array(Image.open(io.BytesIO(rows[rid]["albedo_png"])).convert("RGB"))
        np.testing.assert_array_equal(np.array(Image.open(folder / src).convert("RGB")), stored)


def test_viewer_has_each_mesh(page, report, rows):
    import trimesh

    keys = [c["data-mesh"] for c in page.canvases]  # one view per ok row, in row order
    assert len(keys) == len(set(keys)) == len(TINY_OK)
    js = (report.parent / "meshes.js").read_text()
    prefix = "window.RECON_MESHES = "
    assert js.startswith(prefix)
    meshes = json.loads(js[len(prefix):].strip().rstrip(";"))
    for canvas, rid in zip(page.canvases, TINY_OK):
        data = meshes[canvas["data-mesh"]]
        ref = list(trimesh.load(io.BytesIO(rows[rid]["mesh_glb"]), file_type="glb",
                                process=False).geometry.values())[0]
        np.testing.assert_allclose(np.reshape(data["v"], (-1, 3)), ref.vertices, atol=1e-5)
        np.testing.assert_array_equal(np.reshape(data["f"], (-1, 3)), ref.faces)
        colours = np.reshape(data["c"], (-1, 3))
        assert colours.shape == ref.vertices.shape and colours.min() >= 0 and colours.max() <= 255


def test_everything_is_local(page, report):
    folder = report.parent
    assert page.scripts == ["meshes.js", "viewer.js"]
    for name in [report.name, *page.scripts]:
        body = (folder / name).read_text()
        assert not re.search(r"https?://", body), name
    for ref in page.scripts + page.imgs:
        assert (folder / ref).is_file() and "/" not in ref


def test_cli_writes_the_report_and_refuses_bad_input(tiny_results, tmp_path, capsys):
    out = tmp_path / "r"
    assert report_main(["--results", tiny_results, "--out", str(out), "--rows", "1"]) == 0
    index = out / "index.html"
    assert index.is_file() and f"report: {index}" in capsys.readouterr().out
    assert f"showing the first 1 of {len(TINY_OK) + len(TINY_BAD)} rows" in index.read_text()
    assert report_main(["--results", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "is not a results folder" in capsys.readouterr().err
    assert report_main(["--results", tiny_results, "--out", str(tmp_path / "y"), "--rows", "-1"]) == 2
    assert "--rows must be 0 or more" in capsys.readouterr().err
    assert report_main(["--results", "s3://bucket/run"]) == 2
    assert "--out is needed for remote results" in capsys.readouterr().err


# ----------------------------------------------------------------------------- in a browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: Tall enough that the first row's view (below the summary and the error rows) is on the screenshot.
WINDOW = (1200, 1600)


def _chromium(url: str, profile: Path, *extra: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Headless Chromium on ``url``, killed as a whole process group if it hangs."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--virtual-time-budget=5000", f"--window-size={WINDOW[0]},{WINDOW[1]}",
           "--force-device-scale-factor=1", "--hide-scrollbars", *extra, url]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"chromium did not finish within {timeout:.0f} s: {' '.join(cmd)}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium binary (chromium or chromium-browser) on PATH; "
                                             "install it with `apt-get install chromium` (README)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    url = report.resolve().as_uri()
    # 1: the DOM after the scripts ran, with the console on stderr
    dom = _chromium(url, tmp_path / "profile1", "--enable-logging=stderr", "--v=0", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    # Chromium logs every console message (log, warn, error, uncaught exceptions) at INFO:CONSOLE,
    # whatever its level, so the page must log exactly one message: the viewer's.
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert len(console) == 1, console
    assert f'"recon viewer: {len(TINY_OK)} mesh view(s) drawn"' in console[0], console
    drawn = re.findall(r'<canvas[^>]*data-drawn="(\d+)"[^>]*>', dom.stdout)
    assert [int(n) for n in drawn] == [2 * (TINY_SIZE - 1) ** 2] * len(TINY_OK)
    rect = [int(v) for v in re.search(r'data-rect="([\d,]+)"', dom.stdout).group(1).split(",")]
    # 2: a screenshot; the first view must hold a shaded, textured mesh, not a blank canvas
    shot_path = tmp_path / "shot.png"
    shot = _chromium(url, tmp_path / "profile2", f"--screenshot={shot_path}")
    assert shot.returncode == 0 and shot_path.is_file(), shot.stderr[-2000:]
    shot_img = np.array(Image.open(shot_path).convert("RGB"))
    assert shot_img.shape[:2] == (WINDOW[1], WINDOW[0])
    x, y, w, h = rect
    assert x + w <= WINDOW[0] and y + h <= WINDOW[1], f"the first view {rect} lies outside the screenshot"
    view = shot_img[y + 2:y + h - 2, x + 2:x + w - 2].reshape(-1, 3)
    colours = np.unique(view, axis=0)
    non_white = (view < 250).any(axis=1).mean()
    assert len(colours) > 200 and non_white > 0.05, (len(colours), non_white)
