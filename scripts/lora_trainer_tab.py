"""WebUI glue (placeholder until the WebUI tab lands): imported by the WebUI at start, registers nothing."""
