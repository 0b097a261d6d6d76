"""Losses, one documented function per file."""
