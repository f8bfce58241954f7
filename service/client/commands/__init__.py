"""The command line's client commands (``glassbox generate``, ``explain``, ``explain-batch``): no torch."""
