"""rap attribution (to be written)."""
