"""Ground floor: the stage runner, atomic writes and the rng helper."""
