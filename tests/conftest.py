import os

import pytest
from hypothesis import HealthCheck, settings

_QUIET = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
settings.register_profile("ci", max_examples=60, deadline=None, suppress_health_check=_QUIET)
settings.register_profile("dev", max_examples=30, deadline=None, suppress_health_check=_QUIET)
settings.register_profile("long", max_examples=2000, deadline=None, suppress_health_check=_QUIET)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture
def kcat_bin():
    """kcat's path: optional on a developer's machine, never in CI."""
    import shutil

    from helpers import require_tool

    return require_tool(shutil.which("kcat") or shutil.which("kafkacat"), "kcat", "apt-get install kcat")


@pytest.fixture
def data_dir(tmp_path):
    return str(tmp_path / "data")


def pytest_collection_modifyitems(config, items):
    """``slow`` and ``fuzz`` tests (long runs) are skipped unless a ``-m``
    expression selects tests: ``pytest -m slow tests/hardening`` runs them."""
    if config.getoption("markexpr"):
        return
    skip = pytest.mark.skip(reason="long run: select it with -m slow or -m fuzz (tools/README.md)")
    for item in items:
        if "slow" in item.keywords or "fuzz" in item.keywords:
            item.add_marker(skip)
