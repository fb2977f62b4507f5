"""Optional plugins. Only this sub-package may import torch, and only lazily, through the registry.

See :mod:`geomvision.plugins.registry` for the ``geomvision.pose_models`` entry-point group and
:mod:`geomvision.plugins.learned` for the built-in learned pose models (``pip install geomvision[learned]``).
"""
