"""The wire contract of the Glassbox API (pydantic only: importable without torch)."""
