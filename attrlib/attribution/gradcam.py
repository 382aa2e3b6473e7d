"""gradcam attribution (to be written)."""
