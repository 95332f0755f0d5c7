"""Adapters that build weight-sized changes (LoHa, LoKr, DoRA) train with large CPU blocks mapped on their own:
the freed changes go back to the system instead of staying as holes between live activations."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from torch import nn

from lora_trainer.adapters import default_adapter_kinds
from lora_trainer.adapters.base import AdapterSpec
from lora_trainer.utils.malloc import _glibc

FORWARD_LIKE = textwrap.dedent("""
    import sys, torch
    from lora_trainer.utils.malloc import large_allocations_mapped

    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * 4096

    def forward_like():
        # each layer builds a change of 1-6 MiB, keeps a 64 KiB activation until the end, frees the change
        kept = []
        for i in range(60):
            change = torch.ones(256 * 1024 * (1 + i % 6))
            kept.append(change[:16384].clone())
            del change
        return kept

    del forward_like()[:]  # the process's first forward: malloc's dynamic threshold has risen as in training
    base = rss()
    with large_allocations_mapped(sys.argv[1] == "on") as applied:
        peak = 0
        for _ in range(3):
            kept = forward_like()
            peak = max(peak, rss())
            del kept
    print(int(applied), (peak - base) / 2 ** 20)
""")


def growth_mib(mode: str, env=None):
    run = subprocess.run([sys.executable, "-c", FORWARD_LIKE, mode], capture_output=True, text=True, timeout=120,
                         env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert run.returncode == 0, run.stderr
    applied, growth = run.stdout.split()
    return bool(int(applied)), float(growth)


@pytest.mark.skipif(_glibc() is None, reason="the setting is glibc's")
def test_freed_weight_sized_changes_do_not_stay_resident():
    """60 layers keep 3.75 MiB of activations: with the setting the process grows by about that; without it,
    by the holes the freed changes leave between them (79 MiB measured on Debian's glibc)."""
    applied, growth = growth_mib("on")
    assert applied
    assert growth < 8, f"grew {growth:.1f} MiB for 3.75 MiB kept"
    _, growth_off = growth_mib("off")
    assert growth_off > 2 * growth, (growth_off, growth)


@pytest.mark.skipif(_glibc() is None, reason="the setting is glibc's")
def test_a_users_own_malloc_setting_is_left_alone():
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    applied, _ = growth_mib("on", env)
    assert not applied


@pytest.mark.parametrize("kind,args,builds", [
    ("lora", {}, False), ("locon", {}, False), ("locon", {"use_dora": True}, True),
    ("loha", {}, True), ("lokr", {"factor": 4}, True)])
def test_the_network_says_which_kinds_build_weight_sized_changes(kind, args, builds):
    """The trainer maps large blocks for exactly the kinds whose forward builds the whole change."""
    from lora_trainer.network.network import AdapterNetwork, NetworkComponent

    model = nn.Sequential(nn.Linear(16, 24), nn.Conv2d(24, 8, 3))
    adapter_kind = default_adapter_kinds().get(kind)
    component = NetworkComponent("unet", model, ["0"], lambda path: f"lora_unet_{path}", ["1"])
    network = AdapterNetwork.inject([component], AdapterSpec(adapter_kind, 4, 2.0, 0.0, dict(args)))
    assert network.builds_weight_sized_changes() is builds
