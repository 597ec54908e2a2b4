"""Fixtures for the system tests: the real firmware in a subprocess."""

import pytest
from porch_harness import start_porch


@pytest.fixture
def porch(tmp_path, request):
    marker = request.node.get_closest_marker("porch_config")
    sections = marker.args[0] if marker else None
    p = start_porch(tmp_path, sections)
    yield p
    if p.proc.poll() is None:
        p.proc.kill()
        p.proc.wait()
