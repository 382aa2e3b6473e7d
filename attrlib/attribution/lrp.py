"""lrp attribution (to be written)."""
