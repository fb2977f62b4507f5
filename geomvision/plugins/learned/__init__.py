"""Learned camera-pose models (need torch: ``pip install geomvision[learned]``).

- :mod:`.posenet`: PoseNet-style absolute pose regression (Kendall et al., ICCV 2015).
- :mod:`.relpose`: siamese relative-pose network with spatial pyramid pooling (Melekhov et al., 2017).
- :mod:`.sequence`: conv encoder + LSTM predicting each frame's pose relative to the first frame.
- :mod:`.data`: posed image sets from a COLMAP model or a Middlebury ``*_par.txt`` file, labels, augmentation.
- :mod:`.train`: training loop with atomic checkpoints and resume; :mod:`.inference`: localisation and the
  pipeline's :func:`~geomvision.plugins.learned.inference.relative_pose_prior`.

This package's ``__init__`` imports nothing so the registry can report a missing torch per module.
"""
