"""The jemalloc re-exec of the front doors: when it applies, and that it happens."""

from __future__ import annotations

import os
import subprocess
import sys

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
