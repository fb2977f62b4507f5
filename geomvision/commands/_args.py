"""Helpers shared by the sub-commands (not a sub-command: ``geomvision.cli`` skips ``_`` modules)."""

from __future__ import annotations

import argparse
from typing import Any


def option_values(
    args: argparse.Namespace, *names: str, skip_none: bool = False, **arg_of_field: str
) -> dict[str, Any]:
    """Options-class keyword arguments copied from parsed command-line arguments.

    ``option_values(args, "width", num_images="images")`` is ``{"width": args.width, "num_images":
    args.images}``: a plain name is a field whose argument has the same name, a keyword maps a field to
    the argument that sets it.

    Args:
        args: the parsed arguments.
        names: fields set from the argument of the same name.
        skip_none: leave out the fields whose argument is None (not given: the options keep their value).
        arg_of_field: field -> name of the argument that sets it.

    Returns:
        field -> value, in the order given.
    """
    values = {name: getattr(args, name) for name in names}
    values.update({name: getattr(args, arg) for name, arg in arg_of_field.items()})
    if skip_none:
        values = {name: value for name, value in values.items() if value is not None}
    return values
