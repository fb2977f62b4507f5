"""A self-contained HTML report of a reconstruction (``OUT/report.html``).

Everything is inline: plots are matplotlib PNGs embedded as base64 ``data:`` URIs and the CSS is in a
``<style>`` block, so the file opens offline and can be mailed or attached to a CI run as one file.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import tempfile
import warnings
from pathlib import Path

import numpy as np

from geomvision.runtime.atomic import atomic_write_text
from geomvision.scene.reconstruction import Reconstruction

logger = logging.getLogger(__name__)

__all__ = ["write_report_html", "per_image_statistics", "png_data_uri"]

_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 0.6em auto; max-width: 1100px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.2em; margin: 0.2em 0; color: #555; font-weight: 600; }
h2 { font-size: 1.15em; margin-top: 1.4em; border-bottom: 1px solid #ddd; }
.verdict { font-size: 1.25em; font-weight: 600; padding: 0.45em 0.7em; border-radius: 6px; margin: 0.3em 0; }
.verdict.ok { background: #e7f5e9; border-left: 6px solid #2e7d32; }
.verdict.warn { background: #fff6e0; border-left: 6px solid #e0a000; }
.verdict.bad { background: #fdecea; border-left: 6px solid #c62828; }
#render img { max-height: 64vh; width: auto; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td.name, th.name { text-align: left; }
tr.unregistered td { color: #a33; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; }
.figures figure { margin: 0; } figcaption { font-size: 0.85em; color: #555; text-align: center; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
.thumbs { display: flex; flex-wrap: wrap; gap: 8px; }
.thumb { width: 150px; font-size: 0.78em; border: 1px solid #ddd; border-radius: 4px; padding: 3px; }
.thumb img { width: 100%; border: none; display: block; }
.thumb.registered { border-color: #9c9; } .thumb.unregistered { border-color: #d88; background: #fff4f4; }
.thumb.skipped { border-color: #bbb; background: #f4f4f4; color: #777; }
.thumb .status { font-weight: 600; }
.bar { display: flex; height: 26px; width: 100%; border-radius: 4px; overflow: hidden; font-size: 0.8em; }
.bar div { color: white; padding: 4px 4px; white-space: nowrap; overflow: hidden; }
ul#warnings li { margin: 0.2em 0; }
details summary { cursor: pointer; font-weight: 600; margin-top: 1.4em; }
"""


def png_data_uri(png_bytes: bytes) -> str:
    """``data:image/png;base64,...`` for embedding a PNG in HTML."""
    return "data:image/png;base64," + base64.b64encode(png_bytes).decode("ascii")


def _figure_png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    with warnings.catch_warnings():  # a file name in a script the font lacks: boxes, not a warning
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _histogram_png(values: np.ndarray, title: str, xlabel: str, *, integer: bool = False) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0, 3.2))
    ax = fig.add_subplot(1, 1, 1)
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size:
        if integer:
            lo, hi = int(values.min()), int(values.max())
            bins = np.arange(lo - 0.5, hi + 1.5, max(1, (hi - lo + 1) // 40))
        else:
            bins = np.linspace(0.0, max(float(np.quantile(values, 0.995)), 1e-9), 40)
        ax.hist(
            np.clip(values, bins[0], bins[-1]), bins=bins, color="#3b75af", edgecolor="white", linewidth=0.5
        )
        for label, stat, color, linestyle in (
            ("mean", np.mean, "#c44", "--"),
            ("median", np.median, "#333", ":"),
        ):
            ax.axvline(
                float(stat(values)),
                color=color,
                linestyle=linestyle,
                linewidth=1,
                label=f"{label} {stat(values):.3g}",
            )
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    return _figure_png(fig)


def _view_graph_png(rec: Reconstruction, graph) -> bytes:
    """Nodes at the camera centres projected on their two principal axes (spring layout otherwise)."""
    import networkx as nx
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    centers = rec.camera_centers()
    nodes = list(graph.nodes)
    if len(centers) >= 3 and all(n in centers for n in nodes):
        c = np.array([centers[n] for n in nodes])
        c = c - c.mean(0)
        _, _, vt = np.linalg.svd(c, full_matrices=False)
        xy = c @ vt[:2].T
        pos = {n: xy[k] for k, n in enumerate(nodes)}
    else:
        pos = {n: np.asarray(p) for n, p in nx.spring_layout(graph, seed=0).items()}
    fig = Figure(figsize=(5.5, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    edges = list(graph.edges(data=True))
    if edges:
        weights = np.array([float(d.get("weight", 1.0)) for *_, d in edges])
        widths = 0.5 + 3.0 * weights / max(weights.max(), 1e-9)
        segs = [[pos[i], pos[j]] for i, j, _ in edges]
        ax.add_collection(LineCollection(segs, linewidths=widths, colors="#888", zorder=1))
    registered = set(rec.registered_image_ids)
    xy = np.array([pos[n] for n in nodes]).reshape(-1, 2)
    colors = ["#3b75af" if n in registered else "#c44" for n in nodes]
    ax.scatter(xy[:, 0], xy[:, 1], s=30, c=colors, zorder=2)
    if len(nodes) <= 60:  # file names (without extension), not ids: what the user recognises
        for n in nodes:
            label = Path(str(graph.nodes[n].get("name", n))).stem[:16]
            ax.annotate(label, pos[n], fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_aspect("equal", adjustable="datalim")
    ax.autoscale_view()
    ax.set_axis_off()
    ax.set_title(f"view graph: {graph.number_of_nodes()} images, {graph.number_of_edges()} edges")
    return _figure_png(fig)


def per_image_statistics(rec: Reconstruction) -> list[dict]:
    """Per image: name, registered, keypoints, observations (3D points seen), mean reprojection error (px)."""
    mean_err: dict[int, float] = {}
    try:
        arrays = rec.reprojection_errors_px()
        ids, inverse = np.unique(arrays["obs_image_id"], return_inverse=True)
        sums = np.bincount(inverse, arrays["errors_px"], minlength=len(ids))
        counts = np.bincount(inverse, minlength=len(ids))
        mean_err = {int(i): float(s / c) for i, s, c in zip(ids, sums, counts, strict=True)}
    except Exception as exc:  # projection may fail on a half-built model; the table still helps
        logger.warning("reprojection errors unavailable for the report: %s", exc)
    rows = []
    for image_id in sorted(rec.views):
        view = rec.views[image_id]
        rows.append(
            {
                "image_id": image_id,
                "name": view.name,
                "registered": view.registered,
                "num_keypoints": len(view.keypoints_px),
                "num_observations": view.num_points3D,
                "mean_reprojection_error_px": mean_err.get(image_id, float("nan")),
            }
        )
    return rows


def _fmt(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "—" if not math.isfinite(value) else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    return html.escape(str(value))


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.extend(_flatten(value, name + "."))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            out.append((name, value))
        elif (
            isinstance(value, (list, tuple))
            and len(value) <= 8
            and all(isinstance(v, (int, float)) for v in value)
        ):
            out.append((name, value))
    return out


def _summary_table(rec: Reconstruction, report: dict) -> str:
    rows = list(rec.summary().items())
    seen = {k for k, _ in rows}
    rows += [(k, v) for k, v in _flatten(report) if k not in seen]
    body = "".join(f"<tr><td class='name'>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in rows)
    return f"<table id='summary'><tr><th class='name'>quantity</th><th>value</th></tr>{body}</table>"


def _images_table(rows: list[dict]) -> str:
    head = (
        "<tr><th>id</th><th class='name'>image</th><th>registered</th><th>keypoints</th>"
        "<th>observations</th><th>mean reproj. error (px)</th></tr>"
    )
    body = "".join(
        f"<tr class='{'registered' if r['registered'] else 'unregistered'}'><td>{r['image_id']}</td>"
        f"<td class='name'>{html.escape(r['name'])}</td><td>{_fmt(r['registered'])}</td>"
        f"<td>{r['num_keypoints']}</td><td>{r['num_observations']}</td>"
        f"<td>{_fmt(r['mean_reprojection_error_px'])}</td></tr>"
        for r in rows
    )
    return f"<table id='images'>{head}{body}</table>"


def _figure(uri: str, caption: str, ident: str) -> str:
    return (
        f"<figure id='{ident}'><img src='{uri}' alt='{html.escape(caption)}'>"
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


_STAGE_COLOURS = ("#3b75af", "#e08a2c", "#519e3e", "#c53a32", "#8d69b8", "#84584e", "#d57dbf", "#7f7f7f")
#: Above this many images the thumbnails are left out (the table still lists every image).
MAX_THUMBNAILS = 300
_THUMB_WIDTH_PX = 150


def verdict(report: dict, rec: Reconstruction) -> tuple[str, str]:
    """(css class, one line): registered/total images over all models, models, points, error, time."""
    models = report.get("models") or [rec.summary()]
    total_images = int(report.get("num_images") or len(rec.views))
    registered = int(report.get("num_registered_all_models", sum(m["num_registered"] for m in models)))
    sizes = f" ({', '.join(str(m['num_registered']) for m in models)})" if len(models) > 1 else ""
    error = report.get("mean_reprojection_error_px", rec.summary()["mean_reprojection_error_px"])
    seconds = (report.get("timings_s") or {}).get("total")
    parts = [
        f"Registered {registered}/{total_images} images in {len(models)} model{'s' if len(models) != 1 else ''}{sizes}",
        f"{int(report.get('num_points3D', len(rec.points3D))):,} points",
        f"mean reprojection error {_fmt(float(error)) if error is not None else '—'} px",
    ]
    if seconds is not None:
        parts.append(f"{float(seconds):.1f} s")
    ok = registered == total_images and len(models) == 1
    css = "ok" if ok else ("warn" if registered >= 0.5 * total_images else "bad")
    if models[0].get("trusted") is False:  # sfm.trust judged the shown model wrong
        css = "bad"
        parts.append("model NOT trusted (see warnings)")
    return css, " · ".join(parts)


def _warnings(report: dict, rows: list[dict]) -> list[str]:
    items = []
    for skipped in report.get("skipped_images") or []:
        items.append(f"skipped {skipped['name']}: {skipped['reason']}")
    if report.get("ignored_files"):
        items.append(f"ignored (not image files): {', '.join(report['ignored_files'][:20])}")
    models = report.get("models") or []
    if len(models) > 1:
        items.append(
            f"{len(models)} separate models (sparse/0..{len(models) - 1}); their relative scale and position "
            "are unknown. This report shows sparse/0"
        )
    for index, model in enumerate(models):  # the trust verdict of sfm.trust, when the run made one
        if model.get("trusted") is False:
            reasons = "; ".join(model.get("trust_reasons") or []) or "no reason recorded"
            items.append(f"model sparse/{index} is NOT trusted: {reasons}")
    unregistered = [r["name"] for r in rows if not r["registered"]]
    if unregistered:
        items.append(f"{len(unregistered)} image(s) not in this model: {', '.join(unregistered[:20])}")
    for text in report.get("warnings") or []:  # any stage's own warnings (e.g. untrusted models)
        items.append(str(text))
    if "pose_prior" in report:
        placed = report["pose_prior"].get("num_registered_by_prior", 0)
        if placed:
            items.append(f"{placed} image(s) placed by the learned pose prior only (no 3D points)")
    return items


def _timings_bar(timings: dict) -> str:
    stages = [(k, float(v)) for k, v in timings.items() if k != "total" and float(v) > 0]
    total = float(timings.get("total") or sum(v for _, v in stages) or 1.0)
    cells = []
    for k, (name, value) in enumerate(stages):
        width = 100.0 * value / total
        cells.append(
            f"<div style='width:{width:.2f}%;background:{_STAGE_COLOURS[k % len(_STAGE_COLOURS)]}' "
            f"title='{html.escape(name)}: {value:.2f} s'>{html.escape(name)} {value:.1f} s</div>"
        )
    return f"<p>total {total:.1f} s</p><div class='bar' id='timings'>{''.join(cells)}</div>"


def _thumbnail_uri(path: Path) -> str | None:
    import cv2

    from geomvision.io.images import read_image

    try:
        image = read_image(path)
    except Exception:  # noqa: BLE001 - a missing thumbnail must not cost the report
        return None
    h, w = image.shape[:2]
    scale = _THUMB_WIDTH_PX / max(w, 1)
    small = cv2.resize(image, (_THUMB_WIDTH_PX, max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", small[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 75])
    return "data:image/jpeg;base64," + base64.b64encode(data.tobytes()).decode("ascii") if ok else None


def _thumbnails(rows: list[dict], image_dir: Path | None, skipped: list[dict]) -> str:
    cards = []
    for r in rows:
        uri = _thumbnail_uri(image_dir / r["name"]) if image_dir is not None else None
        image = f"<img src='{uri}' alt='{html.escape(r['name'])}'>" if uri else ""
        status = "registered" if r["registered"] else "not registered"
        detail = (
            f"{_fmt(r['mean_reprojection_error_px'])} px · {r['num_observations']} points"
            if r["registered"]
            else f"{r['num_keypoints']} keypoints"
        )
        cards.append(
            f"<div class='thumb {'registered' if r['registered'] else 'unregistered'}'>{image}"
            f"<div>{html.escape(r['name'])}</div><div class='status'>{status}</div><div>{detail}</div></div>"
        )
    for s in skipped:
        cards.append(
            f"<div class='thumb skipped'><div>{html.escape(s['name'])}</div><div class='status'>skipped</div>"
            f"<div>{html.escape(s['reason'])}</div></div>"
        )
    return f"<div class='thumbs' id='thumbnails'>{''.join(cards)}</div>"


def write_report_html(
    out_dir: str | Path,
    rec: Reconstruction,
    report_dict: dict | None = None,
    *,
    view_graph=None,
    render: bool = True,
    render_size: tuple[int, int] = (1000, 560),
    title: str = "geomvision reconstruction report",
    image_dir: str | Path | None = None,
) -> Path:
    """Write ``out_dir/report.html`` (atomically) and return its path.

    Order (what a user needs first comes first): a verdict line (registered/total images over all
    models, models, points, mean reprojection error, time), a render of the points and cameras framed
    on their robust extent, warnings (skipped images, several models, unregistered images), per-image
    thumbnails with status and error, stage timings as a bar, the plots (reprojection errors, track
    lengths, view graph labelled with file names), the per-image table, and last, collapsed, the
    configuration and every count of ``report.json``.

    Args:
        out_dir: output folder.
        rec: the reconstruction (the largest model).
        report_dict: the pipeline's ``report.json`` content.
        view_graph: optional networkx view graph to draw (edges weighted by ``weight``).
        render: include a headless render of the points and cameras (``viz.open3d_viewer.screenshot``).
        render_size: (width, height) of that render in pixels.
        title: page title.
        image_dir: folder of the images, for thumbnails (default: ``image_dir`` of ``report_dict``;
            None and no such entry: no thumbnails).
    """
    out_dir = Path(out_dir)
    report_dict = dict(report_dict or {})
    if image_dir is None:
        image_dir = report_dict.get("image_dir_absolute") or report_dict.get("image_dir")
    image_dir = Path(image_dir) if image_dir and Path(image_dir).is_dir() else None
    rows = per_image_statistics(rec)
    render_html = ""
    if render and (rec.points3D or rec.registered_image_ids):
        from geomvision.viz.open3d_viewer import screenshot

        with tempfile.TemporaryDirectory() as tmp:
            png = Path(tmp) / "render.png"
            try:
                backend = screenshot(rec, png, *render_size)  # graph edges have their own figure
                render_html = _figure(
                    png_data_uri(png.read_bytes()), f"point cloud and cameras ({backend} renderer)", "render"
                )
            except Exception as exc:  # a report without the picture beats no report
                logger.warning("could not render the model for the report: %s", exc)
    figures = []
    errors = np.array([], dtype=np.float64)
    try:
        errors = rec.reprojection_errors_px()["errors_px"] if rec.points3D else errors
    except Exception as exc:
        logger.warning("reprojection errors unavailable for the report: %s", exc)
    figures.append(
        _figure(
            png_data_uri(_histogram_png(errors, "reprojection error", "error (px)")),
            "reprojection errors",
            "hist-reproj",
        )
    )
    lengths = np.array([len(p.track) for p in rec.points3D.values()], dtype=np.float64)
    figures.append(
        _figure(
            png_data_uri(_histogram_png(lengths, "track length", "observations per 3D point", integer=True)),
            "track lengths",
            "hist-track",
        )
    )
    if view_graph is not None:
        figures.append(_figure(png_data_uri(_view_graph_png(rec, view_graph)), "view graph", "view-graph"))
    css, line = verdict(report_dict, rec)
    warnings = _warnings(report_dict, rows)
    warnings_html = (
        "<h2>Warnings</h2><ul id='warnings'>"
        + "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
        + "</ul>"
        if warnings
        else ""
    )
    skipped = report_dict.get("skipped_images") or []
    thumbs = (
        _thumbnails(rows, image_dir, skipped)
        if len(rows) <= MAX_THUMBNAILS
        else f"<p>{len(rows)} images: thumbnails left out above {MAX_THUMBNAILS}; see the table below.</p>"
    )
    timings = report_dict.get("timings_s") or {}
    doc = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p id='verdict' class='verdict {css}'>{html.escape(line)}</p>"
        f"{render_html}"
        f"{warnings_html}"
        f"<h2>Images</h2>{thumbs}"
        + (f"<h2>Stage timings</h2>{_timings_bar(timings)}" if timings else "")
        + f"<h2>Figures</h2><div class='figures'>{''.join(figures)}</div>"
        f"<h2>Per-image table</h2>{_images_table(rows)}"
        "<details id='configuration'><summary>Configuration and all counts (report.json)</summary>"
        f"{_summary_table(rec, report_dict)}</details>"
        "</body></html>\n"
    )
    path = out_dir / "report.html"
    atomic_write_text(path, doc)
    logger.info("wrote %s (%d figures)", path, len(figures) + bool(render_html))
    return path
