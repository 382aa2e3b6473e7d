"""ebp attribution (to be written)."""
