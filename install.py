"""WebUI install hook (placeholder until the WebUI tab lands)."""
