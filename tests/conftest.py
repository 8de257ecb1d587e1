import os
import re
import sys
from pathlib import Path

import pytest

if os.environ.get("FEWSTEP_TEST_DEVICE", "cpu") == "cpu":
    # The fused FreeU kernel is checked on CPU through Triton's interpreter, which triton only
    # honours when it is on before triton's first import (tests opt in per test).
    os.environ.setdefault("TRITON_INTERPRET", "1")

# pytest.ini puts the repo root on sys.path: the maths packages are importable without ComfyUI as
# top-level `samplers` / `freeu`, the test support as `tests.support`. It is imported here, before
# any test puts ComfyUI's root (which has a `tests` package of its own) in front of the repo root.
from tests.support.comfy_host import ComfyServer, load_inprocess  # noqa: E402
# Likewise the maths packages: ComfyUI's nodes.py puts its comfy/ folder first on sys.path, where
# comfy/samplers.py would shadow ours for a test module first imported after ComfyUI loaded.
import freeu  # noqa: E402,F401
import samplers  # noqa: E402,F401


# What reaches a ComfyUI host: a host_independent test may neither use these fixtures nor import these.
HOST_FIXTURES = {"comfy", "server"}
HOST_IMPORT = re.compile(r"^\s*(from|import)\s+(comfy\w*|nodes|folder_paths|execution|server)\b", re.M)


def pytest_collection_modifyitems(config, items):
    """scripts/test.sh's later legs (FEWSTEP_HOST_DEPENDENT_ONLY=1) run only what depends on the
    host; the host_independent files (pure maths: samplers/, freeu/, batch/ on the pinned torch,
    which both hosts share) ran in the first leg. The marker is checked here on every run."""
    marked = [i for i in items if i.get_closest_marker("host_independent")]
    wrong = [i.nodeid for i in marked if HOST_FIXTURES & set(getattr(i, "fixturenames", ()))]
    wrong += sorted({str(i.path) for i in marked if HOST_IMPORT.search(i.path.read_text())})
    if wrong:
        raise pytest.UsageError(f"marked host_independent but using a ComfyUI host fixture or import: {wrong}")
    if os.environ.get("FEWSTEP_HOST_DEPENDENT_ONLY") != "1":
        return
    keep = [i for i in items if not i.get_closest_marker("host_independent")]
    dropped = [i for i in items if i.get_closest_marker("host_independent")]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    """(nodes, pack): the real ComfyUI imported in-process with the pack loaded by ComfyUI."""
    # FEWSTEP_TEST_DEVICE=gpu runs the in-process tests on ComfyUI's own device choice.
    cpu = os.environ.get("FEWSTEP_TEST_DEVICE", "cpu") == "cpu"
    return load_inprocess(tmp_path_factory.mktemp("comfy-base"), cpu=cpu)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """A running headless ComfyUI with the pack; shut down at the end, also on failure."""
    srv = ComfyServer(tmp_path_factory.mktemp("server-base"))
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def lab_user(comfy, tmp_path):
    """The lab model and its conditioning, with ComfyUI's user directory (where the schedule cache
    writes) moved to tmp_path for the test and restored after."""
    import folder_paths
    nodes, pack = comfy
    old = folder_paths.get_user_directory()
    folder_paths.set_user_directory(str(tmp_path))

    class Env:
        pass
    e = Env()
    e.nodes, e.pack, e.user, e.M = nodes, pack, tmp_path, nodes.NODE_CLASS_MAPPINGS
    e.model = e.M["FewStepLabModel"].execute("gmm", 8, 0.3, 0, "sd_discrete")[0]
    e.cond = e.M["FewStepLabConditioning"].execute()[0]
    try:
        yield e
    finally:
        folder_paths.set_user_directory(old)


@pytest.fixture
def one_thread():
    """Tiny matrices: extra torch threads only spin when the cores are shared (restored after)."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
