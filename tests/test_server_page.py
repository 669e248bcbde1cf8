"""``lvr1 serve``'s page in a real browser: Debian's chromium driven by Playwright.

The command runs as a user starts it, on the test video with its imported
captions and a scripted reasoning server; the page is loaded, a question is
asked, the nodes light up in the scripted order while the rounds stream, the
answer appears with its evidence, and the stored trace replays the same path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers_eval import caption_text
from helpers_server import make_data_dir
from scripted_server import Say, ScriptedChatServer

sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = os.environ.get("LVR1_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCRIPT = [
    Say("<think>The box is handled in the second quarter.</think><tool>get_caption((2, 3))</tool>", delay=0.6),
    Say("<think>Closer.</think><tool>get_caption((2, 3, 1))</tool>", delay=0.6),
    Say("<think>It is yellow.</think><answer>B</answer>", delay=0.3),
]  # fmt: skip
VISITS = """() => {
  window.visits = [];
  new MutationObserver((changes) => {
    for (const c of changes) {
      const el = c.target;
      if (c.attributeName === "data-order" && el.dataset.order) window.visits.push(el.dataset.id);
      if (el.id === "answer" && !el.hidden) window.visits.push("answer");
    }
  }).observe(document.body, {attributes: true, subtree: true, attributeFilter: ["data-order", "hidden"]});
}"""


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"chromium is not installed: {CHROMIUM} (scripts/setup.sh test installs it)")
    with sync_api.sync_playwright() as playwright:
        opened = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield opened
        opened.close()


def start_serve(
    data: Path, store: Path, llm: ScriptedChatServer, home: Path
) -> tuple[subprocess.Popen, str]:
    """``lvr1 serve`` as a user runs it (any free port); returns the process and its address."""
    (home / "none.yaml").write_text("{}\n")
    env = {**os.environ, "LVR1_CONFIG": str(home / "none.yaml")}
    command = [
        sys.executable, "-m", "longvideo_r1.cli", "serve", "--port", "0", "--data", str(data),
        "--store", str(store), "--captioner", "imported:test", "--max-rounds", "5",
        "--reasoning-base-url", llm.base_url, "--reasoning-model", llm.model,
    ]  # fmt: skip
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    line = proc.stdout.readline()
    if not line.startswith("lvr1 serve: http://"):
        proc.kill()
        pytest.fail(f"lvr1 serve did not start: {line}{proc.stderr.read()}")
    return proc, line.split(": ", 1)[1].strip()


@pytest.mark.slow
def test_the_page_shows_a_question_answered_live_and_replays_it(
    browser, test_video, testbench_store, tmp_path
):
    data = make_data_dir(tmp_path / "data", test_video.path)
    store = tmp_path / "cache" / "store.sqlite"
    store.parent.mkdir()
    shutil.copy(testbench_store, store)
    with ScriptedChatServer(SCRIPT) as llm:
        proc, url = start_serve(data, store, llm, tmp_path)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(url)
            page.wait_for_selector("#video option", state="attached")
            page.select_option("#video", label="testvideo.mp4")  # fake.mp4, first, is no video
            page.wait_for_selector('.node[data-id="2.3.1"]')
            check_timeline(page)
            page.evaluate(VISITS)
            page.fill("#question", "What colour is the box?")
            page.fill("#choices", "A. red\nB. yellow")
            page.click("#ask-button")
            page.wait_for_selector("#answer:not([hidden])", timeout=30_000)
            assert page.evaluate("window.visits") == ["2.3", "2.3.1", "answer"]
            check_answer(page)
            check_hover_and_seek(page)
            page.mouse.move(5, 5)
            page.screenshot(path=str(tmp_path / "serve.png"))
            replay(page)
        finally:
            proc.terminate()
            proc.wait(15)
    assert (tmp_path / "serve.png").stat().st_size > 10_000
    assert len(list((tmp_path / "cache" / "traces").glob("*.json"))) == 1


def check_timeline(page) -> None:
    """Levels stacked, 4 + 16 + 64 nodes, each as wide as its span."""
    assert page.locator(".row[data-depth='1'] .node").count() == 4
    assert page.locator(".row[data-depth='3'] .node").count() == 64
    lane = page.locator(".row[data-depth='2'] .lane").bounding_box()
    node = page.locator('.node[data-id="2.3"]').bounding_box()
    duration = page.evaluate("state.tree.duration")
    span = page.evaluate("state.tree.nodes.find(n => n.id.join('.') === '2.3')")
    assert node["width"] == pytest.approx(
        lane["width"] * (span["end"] - span["start"]) / duration, abs=1.5
    )
    assert node["x"] - lane["x"] == pytest.approx(lane["width"] * span["start"] / duration, abs=1.5)


def check_answer(page) -> None:
    assert page.inner_text("#answer .value") == "B"
    assert page.locator("#evidence-row .evidence-span").count() == 2
    assert page.locator("#rounds li").count() == 3
    assert "get_caption(2, 3)" in page.inner_text("#rounds li >> nth=0")
    assert page.inner_text('[data-cost="rounds"]') == "3"
    assert page.inner_text('[data-cost="cached"]') == "6"
    assert page.locator(".node.visited").count() == 2
    assert page.locator("#traces li").count() == 1


def check_hover_and_seek(page) -> None:
    page.hover('.node[data-id="2.3"]')
    assert caption_text((2, 3)) in page.inner_text("#tooltip .caption")
    page.click('.node[data-id="3"]')
    start = page.evaluate("state.tree.nodes.find(n => n.id.join('.') === '3').start")
    page.wait_for_function(f"Math.abs(document.querySelector('#player').currentTime - {start}) < 1")


def replay(page) -> None:
    """The kept trace, replayed at once: the same nodes in the same order, the same answer."""
    page.select_option("#speed", "0")
    page.evaluate("window.visits = []")
    page.click("#traces li button.replay")
    page.wait_for_function("window.visits.includes('answer')")
    assert page.evaluate("window.visits") == ["2.3", "2.3.1", "answer"]
    assert page.inner_text("#answer .value") == "B"
