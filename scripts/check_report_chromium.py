#!/usr/bin/env python
"""Open a geomvision ``report.html`` in headless Chromium and check that every image decodes.

A copy of the report gets a small inline script that, on ``load``, counts ``<img>`` elements with
``naturalWidth > 0`` and writes the result into ``<body data-images-ok="k/n">``; Chromium's
``--dump-dom`` prints the DOM after load, which this script parses. Network access is disabled by the
flags and not needed: the report embeds everything as data URIs.

It also records where the verdict line and the rendered cloud sit in a 1280x800 window.

Usage: check_report_chromium.py OUT/report.html [--screenshot page.png] [--chromium PATH] [--first-screen]
Exit status: 0 when all images decoded (and there is at least one, and with --first-screen the verdict and
the cloud lie in the first 1280x800 screen), 1 otherwise, 2 when Chromium is missing.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHECK_SCRIPT = """
<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (im) { return im.complete && im.naturalWidth > 0; });
  document.body.setAttribute('data-images-ok', ok.length + '/' + imgs.length);
  document.body.setAttribute('data-image-sizes',
    JSON.stringify(imgs.map(function (im) { return [im.id || im.alt, im.naturalWidth, im.naturalHeight]; })));
  // Where the verdict line and the rendered cloud sit in the first screen (CSS pixels).
  var box = function (sel) {
    var el = document.querySelector(sel);
    if (!el) { return null; }
    var r = el.getBoundingClientRect();
    return [Math.round(r.top), Math.round(r.bottom), Math.round(r.width)];
  };
  document.body.setAttribute('data-first-screen', JSON.stringify({
    viewport: [window.innerWidth, window.innerHeight],
    verdict: box('#verdict'), render: box('#render img')}));
});
</script>
"""

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=10000",
]


def find_chromium(explicit: str | None = None) -> str | None:
    if explicit:
        return explicit if shutil.which(explicit) or Path(explicit).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def check_report(
    report: Path,
    chromium: str,
    *,
    screenshot: Path | None = None,
    timeout_s: float = 120,
    window: tuple[int, int] = (1280, 800),
) -> dict:
    """Run Chromium on an instrumented copy of ``report``; returns counts, image sizes and positions.

    ``first_screen`` holds the viewport size and the [top, bottom, width] of ``#verdict`` and of the
    rendered cloud (``#render img``) at a ``window`` sized browser window; ``in_first_screen`` says
    whether both lie entirely inside the first screen.
    """
    text = report.read_text(encoding="utf-8")
    if "</body>" not in text:
        raise ValueError(f"{report}: no </body> tag")
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "report.html"
        page.write_text(text.replace("</body>", CHECK_SCRIPT + "</body>", 1), encoding="utf-8")
        profile = Path(tmp) / "profile"
        cmd = [
            chromium,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={window[0]},{window[1]}",
            "--dump-dom",
            page.as_uri(),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0:
            raise RuntimeError(f"chromium exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
        dom = proc.stdout
        if screenshot is not None:
            shot = [
                chromium,
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--screenshot={screenshot.resolve()}",
                f"--window-size={window[0]},{window[1]}",
                "--hide-scrollbars",
                page.as_uri(),
            ]
            subprocess.run(shot, capture_output=True, text=True, timeout=timeout_s, check=True)
    match = re.search(r'data-images-ok="(\d+)/(\d+)"', dom)
    if not match:
        raise RuntimeError("the check script did not run (no data-images-ok attribute in the dumped DOM)")
    sizes = re.search(r"data-image-sizes=\"([^\"]*)\"", dom)
    decoded = json.loads(sizes.group(1).replace("&quot;", '"')) if sizes else []
    screen = re.search(r"data-first-screen=\"([^\"]*)\"", dom)
    first = json.loads(screen.group(1).replace("&quot;", '"')) if screen else {}
    height = (first.get("viewport") or [0, 0])[1]
    inside = bool(first) and all(
        first.get(key) is not None and first[key][0] >= 0 and first[key][1] <= height
        for key in ("verdict", "render")
    )
    return {
        "images_ok": int(match.group(1)),
        "images_total": int(match.group(2)),
        "images": decoded,
        "first_screen": first,
        "in_first_screen": inside,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--screenshot", type=Path, help="also save a PNG of the rendered page")
    parser.add_argument("--chromium", help="Chromium executable (default: search PATH)")
    parser.add_argument(
        "--first-screen",
        action="store_true",
        help="also require the verdict and the cloud in the first screen",
    )
    args = parser.parse_args(argv)
    chromium = find_chromium(args.chromium)
    if chromium is None:
        print("chromium not found", file=sys.stderr)
        return 2
    result = check_report(args.report, chromium, screenshot=args.screenshot)
    print(json.dumps(result))
    ok = result["images_total"] > 0 and result["images_ok"] == result["images_total"]
    return 0 if ok and (result["in_first_screen"] or not args.first_screen) else 1


if __name__ == "__main__":
    sys.exit(main())
