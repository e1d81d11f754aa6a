"""Experiment harnesses built on the library's public functions (not imported by the library)."""
