"""CLI sub-commands, discovered automatically by ``geomvision.cli``.

Each module here defines ``NAME`` (sub-command), ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int`` (exit code). Modules import heavy stages inside ``run`` so ``--help`` stays fast.
"""
