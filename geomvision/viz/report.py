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
from pathlib import Path

import numpy as np

from geomvision.runtime.atomic import atomic_write_text
from geomvision.scene.reconstruction import Reconstruction

logger = logging.getLogger(__name__)

__all__ = ["write_report_html", "per_image_statistics", "png_data_uri"]

_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td.name, th.name { text-align: left; }
tr.unregistered td { color: #a33; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; }
.figures figure { margin: 0; } figcaption { font-size: 0.85em; color: #555; text-align: center; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
"""


def png_data_uri(png_bytes: bytes) -> str:
    """``data:image/png;base64,...`` for embedding a PNG in HTML."""
    return "data:image/png;base64," + base64.b64encode(png_bytes).decode("ascii")


def _figure_png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
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
        ax.axvline(
            float(np.mean(values)),
            color="#c44",
            linestyle="--",
            linewidth=1,
            label=f"mean {np.mean(values):.3g}",
        )
        ax.axvline(
            float(np.median(values)),
            color="#333",
            linestyle=":",
            linewidth=1,
            label=f"median {np.median(values):.3g}",
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
    if len(nodes) <= 60:
        for n in nodes:
            ax.annotate(str(n), pos[n], fontsize=7, xytext=(3, 3), textcoords="offset points")
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


def write_report_html(
    out_dir: str | Path,
    rec: Reconstruction,
    report_dict: dict | None = None,
    *,
    view_graph=None,
    render: bool = True,
    render_size: tuple[int, int] = (960, 720),
    title: str = "geomvision reconstruction report",
) -> Path:
    """Write ``out_dir/report.html`` (atomically) and return its path.

    Args:
        out_dir: output folder.
        rec: the reconstruction.
        report_dict: the pipeline's ``report.json`` content (counts, ``timings_s``...), shown flattened.
        view_graph: optional networkx view graph to draw (edges weighted by ``weight``).
        render: include a headless render of the points and cameras (``viz.open3d_viewer.screenshot``).
        render_size: (width, height) of that render in pixels.
        title: page title.
    """
    out_dir = Path(out_dir)
    report_dict = dict(report_dict or {})
    rows = per_image_statistics(rec)
    figures = []
    if render and (rec.points3D or rec.registered_image_ids):
        from geomvision.viz.open3d_viewer import screenshot

        with tempfile.TemporaryDirectory() as tmp:
            png = Path(tmp) / "render.png"
            try:
                backend = screenshot(rec, png, *render_size)  # graph edges have their own figure
                figures.append(
                    _figure(png_data_uri(png.read_bytes()), f"point cloud and cameras ({backend})", "render")
                )
            except Exception as exc:  # a report without the picture beats no report
                logger.warning("could not render the model for the report: %s", exc)
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
    doc = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<h2>Summary</h2>{_summary_table(rec, report_dict)}"
        f"<h2>Figures</h2><div class='figures'>{''.join(figures)}</div>"
        f"<h2>Images</h2>{_images_table(rows)}"
        "</body></html>\n"
    )
    path = out_dir / "report.html"
    atomic_write_text(path, doc)
    logger.info("wrote %s (%d figures)", path, len(figures))
    return path
