"""Test-wide settings: headless MuJoCo, one torch thread (CI has 2 shared cores), deterministic seeds."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # robust on a shared 2-core runner; small-batch solves are fastest on one thread


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_report_header(config):
    return f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} thread(s)"
