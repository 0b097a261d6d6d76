"""What the command line's commands do beyond parsing: one module per command that needs more than a call."""
