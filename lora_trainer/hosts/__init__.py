"""Hosts: the programs the trainer runs inside (standalone, the AUTOMATIC1111 WebUI)."""
