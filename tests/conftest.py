"""Shared fixtures: the real test video and the bad-input files.

Both are built once into the data directory (``$LVR1_DATA`` or ``<repo>/data``)
and reused by later sessions: the test video takes about 20 s the first time
(it needs ``espeak-ng`` and ``apt-get download opencv-doc``), the bad inputs
about 4 s (bundled ffmpeg only). When the test video cannot be built here the
tests that need it are skipped with the one-line reason, unless
``LVR1_REQUIRE_TESTVIDEO=1`` turns that into a failure (for CI).

A test that needs an optional dependency (llama.cpp, TRL, Ray, an OCR model)
skips when it is missing, so a partial install still runs the rest; under
``LVR1_REQUIRE_EXTRAS=1`` (CI, where ``scripts/setup.sh test`` installs them
all) such a skip is a failure, so a missing install step cannot hide behind it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers_eval import import_captions
from hypothesis import HealthCheck, settings

from longvideo_r1.captions.store import CaptionStore
from longvideo_r1.errors import VideoError
from longvideo_r1.questions.schema import QuestionList
from longvideo_r1.testing.badinputs import build_bad_inputs
from longvideo_r1.testing.sources import default_data_dir
from longvideo_r1.testing.testbench import load_testbench
from longvideo_r1.testing.testvideo import BuiltVideo, load_test_video

# Property tests check what is generated, not how fast: on a shared 2-core machine one
# draw can stall for seconds, which Hypothesis's timing checks would report as a failure.
settings.register_profile("lvr1", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("lvr1")


_MISSING_EXTRA = re.compile(r"could not import|is not installed|not installed:", re.IGNORECASE)


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    return str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr)


def _fail_missing_extra(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Under LVR1_REQUIRE_EXTRAS=1, a skip for a missing dependency becomes a failure."""
    if not report.skipped or os.environ.get("LVR1_REQUIRE_EXTRAS") != "1":
        return
    reason = _skip_reason(report)
    if _MISSING_EXTRA.search(reason):
        report.outcome = "failed"
        report.longrepr = f"a dependency is missing where every extra must be installed: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    outcome = yield
    _fail_missing_extra(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> object:
    outcome = yield
    _fail_missing_extra(outcome.get_result())


@pytest.fixture(scope="session")
def test_video() -> BuiltVideo:
    """The real test video (path, .srt, manifest), built on first use."""
    try:
        return load_test_video()
    except VideoError as exc:
        if os.environ.get("LVR1_REQUIRE_TESTVIDEO") == "1":
            pytest.fail(f"cannot build the test video: {exc}")
        pytest.skip(f"cannot build the test video here: {exc}")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CaptionStore]:
    """An empty caption store of this test's own."""
    with CaptionStore(tmp_path / "store.sqlite") as opened:
        yield opened


@pytest.fixture(scope="module")
def testbench_store(tmp_path_factory: pytest.TempPathFactory, test_video: BuiltVideo) -> Path:
    """A store file holding the test video's reference captions, one per test module.

    Per module, not per session: evaluation runs add captions and records to it,
    and one module's runs must not change what another module's find cached.
    """
    path = tmp_path_factory.mktemp("testbench-store") / "store.sqlite"
    import_captions(test_video.path, path)
    return path


@pytest.fixture(scope="module")
def testbench(test_video: BuiltVideo) -> QuestionList:
    """The shipped test bench, its subtitles read from beside the test video."""
    return load_testbench(subtitles=test_video.path.parent)


@pytest.fixture(scope="session")
def bad_inputs() -> dict[str, Path]:
    """Small synthetic files that each break one assumption, by name (see testvideo)."""
    return build_bad_inputs(default_data_dir() / "bad_inputs")
