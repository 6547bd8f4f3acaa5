"""The jemalloc re-exec of the front doors: when it applies, and that it happens."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from recbert import allocator
from tests.conftest import REPO


def test_fast_allocator_env_rules(monkeypatch):
    monkeypatch.setattr(allocator.ctypes.util, "find_library", lambda name: "libjemalloc.so.2")
    env = allocator.fast_allocator_env({"PATH": "/bin"})
    assert env["LD_PRELOAD"] == "libjemalloc.so.2" and env["MALLOC_CONF"] == allocator.JEMALLOC_CONF
    assert allocator.fast_allocator_env(env) is None  # already re-executed: no loop
    assert allocator.fast_allocator_env({"RECBERT_ALLOCATOR": "system"}) is None
    assert allocator.fast_allocator_env({"LD_PRELOAD": "/x/libjemalloc.so"}) is None
    kept = allocator.fast_allocator_env({"LD_PRELOAD": "libfoo.so", "MALLOC_CONF": "narenas:2"})
    assert kept["LD_PRELOAD"] == "libfoo.so libjemalloc.so.2" and kept["MALLOC_CONF"] == "narenas:2"
    monkeypatch.setattr(allocator.ctypes.util, "find_library", lambda name: None)
    assert allocator.fast_allocator_env({}) is None


def test_a_pipeline_script_reruns_itself_under_jemalloc_when_installed(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text("import os, sys\nfrom recbert.allocator import allocator_name, reexec_with_fast_allocator\n"
                      "reexec_with_fast_allocator()\nprint(allocator_name(), sys.argv[1:])\n")
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "RECBERT_ALLOCATOR_SET", "MALLOC_CONF")}
    out = subprocess.run([sys.executable, str(script), "a", "b"], capture_output=True, text=True, env=env,
                         check=True).stdout
    installed = allocator.ctypes.util.find_library("jemalloc") is not None
    assert out.startswith("jemalloc" if installed else "glibc") and "['a', 'b']" in out
    help_out = subprocess.run([sys.executable, str(REPO / "pipelines" / "train.py"), "--help"], capture_output=True,
                              text=True, env=env, check=True).stdout
    assert "Usage: recbert train" in help_out


GRU_STEPS = """
import sys, torch
from recbert.allocator import allocator_name, reexec_with_fast_allocator, release_free_memory
reexec_with_fast_allocator()
from recbert.model.blocks import build_reuse_block
torch.set_num_threads(1)
torch.manual_seed(0)
block = build_reuse_block("gru", hidden=64, dropout=0.2)
opt = torch.optim.Adam(block.parameters())
def rss_mib():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) // 1024
for step in range(1, 301):
    width = int(torch.randint(5, 51, (1,)))  # the packed widths change every batch
    lengths = torch.randint(1, width + 1, (128,))
    lengths[0] = width
    mask = torch.arange(width)[None, :] < lengths[:, None]
    block(torch.randn(128, width, 64), mask, causal=True).sum().backward()
    opt.step()
    opt.zero_grad()
    if step % 25 == 0:
        released = release_free_memory()
    if step == 50:
        start = rss_mib()
print(allocator_name().split()[0], released, rss_mib() - start)
"""


def test_releasing_kept_pages_bounds_a_gru_blocks_memory_under_jemalloc(tmp_path):
    """Without the release this loop grows by 40 MiB over its last 250 steps under the
    kept-pages setting (training with a GRU block grew ~100 MB per Beauty epoch, without
    bound); with it, by nothing."""
    if allocator.ctypes.util.find_library("jemalloc") is None:
        pytest.skip("jemalloc is not installed")
    script = tmp_path / "gru_steps.py"
    script.write_text(GRU_STEPS)
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "RECBERT_ALLOCATOR_SET", "MALLOC_CONF")}
    name, released, growth = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                                            check=True).stdout.split()
    assert (name, released) == ("jemalloc", "True")
    assert int(growth) < 10, f"RSS grew by {growth} MiB over 250 steps"


def test_release_is_a_no_op_off_jemalloc(monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "")
    assert allocator.release_free_memory() is False
