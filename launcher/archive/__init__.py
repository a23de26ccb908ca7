"""Tar archives read by their headers, their identity and index, and outputs written without following links."""
