"""Bundle-adjustment internals: array problem and residual model, robust losses, scipy and Schur solvers.

The public entry points are in ``geomvision.sfm.bundle_adjustment``.
"""
