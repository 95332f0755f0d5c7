"""Hosts: the programs the trainer runs inside. Register a new host here (one line).

Each host is one module (see base.py for the contract): standalone (a plain Python process), a1111
(the AUTOMATIC1111 WebUI) and forge_neo (Forge Neo, which keeps A1111's extension API). Only host modules
import a host's own code (`modules.*` of the WebUI, Forge's `backend.*`).
"""
from __future__ import annotations

from .a1111.host import A1111Host
from .base import Host, HostRegistry
from .forge_neo import ForgeNeoHost
from .standalone import StandaloneHost


def default_hosts() -> HostRegistry:
    """Every host this build knows, in detection order (standalone last: it is always there)."""
    return HostRegistry([
        ForgeNeoHost(),
        A1111Host(),
        StandaloneHost(),
    ])


def detect_host() -> Host:
    """The host this process runs in."""
    return default_hosts().detect()


__all__ = ["A1111Host", "ForgeNeoHost", "Host", "HostRegistry", "StandaloneHost", "default_hosts", "detect_host"]
