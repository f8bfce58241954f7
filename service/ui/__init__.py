"""The "why this answer" page (`GET /ui`): static files only, shipped as package data."""
