"""Hosts: the programs the trainer runs inside. Register a new host here (one line).

Each host is one module (see base.py for the contract): standalone (a plain Python process) and a1111
(the AUTOMATIC1111 WebUI). Only host modules import a host's own code (`modules.*` of the WebUI).
"""
from __future__ import annotations

from .a1111.host import A1111Host
from .base import Host, HostRegistry
from .standalone import StandaloneHost


def default_hosts() -> HostRegistry:
    """Every host this build knows, in detection order (standalone last: it is always there)."""
    return HostRegistry([
        A1111Host(),
        StandaloneHost(),
    ])


def detect_host() -> Host:
    """The host this process runs in."""
    return default_hosts().detect()


__all__ = ["A1111Host", "Host", "HostRegistry", "StandaloneHost", "default_hosts", "detect_host"]
