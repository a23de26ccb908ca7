"""Checks of a prepared root: image bounds and decoding, the verify plan and report, the fix log."""
