"""Attributions for /explain: a shared forward/gradient engine, one module per method, and presentation."""
