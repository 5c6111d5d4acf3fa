"""Verify checks of the random-feature and kernel risk pillar (registered on import of .checks)."""
