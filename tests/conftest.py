"""Shared fixtures: the real test video and the bad-input files.

Both are built once into the data directory (``$LVR1_DATA`` or ``<repo>/data``)
and reused by later sessions: the test video takes about 20 s the first time
(it needs ``espeak-ng`` and ``apt-get download opencv-doc``), the bad inputs
about 4 s (bundled ffmpeg only). When the test video cannot be built here the
tests that need it are skipped with the one-line reason, unless
``LVR1_REQUIRE_TESTVIDEO=1`` turns that into a failure (for CI).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from longvideo_r1.errors import VideoError
from longvideo_r1.testvideo import (
    BuiltVideo,
    build_bad_inputs,
    default_data_dir,
    load_test_video,
)

# Property tests check what is generated, not how fast: on a shared 2-core machine one
# draw can stall for seconds, which Hypothesis's timing checks would report as a failure.
settings.register_profile("lvr1", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("lvr1")


@pytest.fixture(scope="session")
def test_video() -> BuiltVideo:
    """The real test video (path, .srt, manifest), built on first use."""
    try:
        return load_test_video()
    except VideoError as exc:
        if os.environ.get("LVR1_REQUIRE_TESTVIDEO") == "1":
            pytest.fail(f"cannot build the test video: {exc}")
        pytest.skip(f"cannot build the test video here: {exc}")


@pytest.fixture(scope="session")
def bad_inputs() -> dict[str, Path]:
    """Small synthetic files that each break one assumption, by name (see testvideo)."""
    return build_bad_inputs(default_data_dir() / "bad_inputs")
