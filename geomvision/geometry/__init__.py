"""Pure numpy multi-view geometry: rigid transforms, camera models, minimal solvers."""
