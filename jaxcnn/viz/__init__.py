"""Matplotlib figures; one module per theme. Import matplotlib lazily inside functions."""
