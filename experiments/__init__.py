"""Runnable lessons: ``python -m experiments.<name> --help``."""
