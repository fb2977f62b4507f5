"""``geomvision plugins``: list the installed pose-model plugins and why any of them cannot load."""

from __future__ import annotations

import argparse
import json

NAME = "plugins"
HELP = "list installed pose-model plugins (entry-point group geomvision.pose_models) and their status"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object per line instead of a table"
    )


def format_table(infos) -> str:
    """Name, status and module of each plugin; the reason under a plugin that failed to load."""
    if not infos:
        return "no pose-model plugins registered"
    width = max(len(i.name) for i in infos)
    lines = []
    for info in infos:
        status = "ok" if info.loaded else "unavailable"
        lines.append(f"{info.name:<{width}}  {status:<11}  {info.module}")
        if info.error:
            lines.append(f"{'':<{width}}  -> {info.error}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from geomvision.plugins.registry import list_plugins

    infos = list_plugins()
    if args.json:
        for info in infos:
            print(json.dumps(asdict(info)))
    else:
        print(format_table(infos))
    return 0
