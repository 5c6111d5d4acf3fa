"""Verify checks of the training-dynamics pillar (registered by :mod:`.checks`)."""
