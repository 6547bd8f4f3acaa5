"""Process set-up: device resolution and the jemalloc re-exec of the front doors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from recbert import runtime
from recbert.errors import ConfigError
from tests.conftest import REPO


def test_resolve_device():
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    assert runtime.resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ConfigError, match="not a torch device"):
        runtime.resolve_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="sees no CUDA device"):
            runtime.resolve_device("cuda")


def test_fast_allocator_env_rules(monkeypatch):
    monkeypatch.setattr(runtime.ctypes.util, "find_library", lambda name: "libjemalloc.so.2")
    env = runtime.fast_allocator_env({"PATH": "/bin"})
    assert env["LD_PRELOAD"] == "libjemalloc.so.2" and env["MALLOC_CONF"] == runtime.JEMALLOC_CONF
    assert runtime.fast_allocator_env(env) is None  # already re-executed: no loop
    assert runtime.fast_allocator_env({"RECBERT_ALLOCATOR": "system"}) is None
    assert runtime.fast_allocator_env({"LD_PRELOAD": "/x/libjemalloc.so"}) is None
    kept = runtime.fast_allocator_env({"LD_PRELOAD": "libfoo.so", "MALLOC_CONF": "narenas:2"})
    assert kept["LD_PRELOAD"] == "libfoo.so libjemalloc.so.2" and kept["MALLOC_CONF"] == "narenas:2"
    monkeypatch.setattr(runtime.ctypes.util, "find_library", lambda name: None)
    assert runtime.fast_allocator_env({}) is None


def test_a_pipeline_script_reruns_itself_under_jemalloc_when_installed(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text("import os, sys\nfrom recbert.runtime import allocator_name, reexec_with_fast_allocator\n"
                      "reexec_with_fast_allocator()\nprint(allocator_name(), sys.argv[1:])\n")
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "RECBERT_ALLOCATOR_SET", "MALLOC_CONF")}
    out = subprocess.run([sys.executable, str(script), "a", "b"], capture_output=True, text=True, env=env,
                         check=True).stdout
    installed = runtime.ctypes.util.find_library("jemalloc") is not None
    assert out.startswith("jemalloc" if installed else "glibc") and "['a', 'b']" in out
    help_out = subprocess.run([sys.executable, str(REPO / "pipelines" / "train.py"), "--help"], capture_output=True,
                              text=True, env=env, check=True).stdout
    assert "Usage: recbert train" in help_out
