"""Built-in verify checks of the limiting kernels (registered by .checks on import)."""
