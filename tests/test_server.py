"""``lvr1 serve``'s API over real HTTP: videos, questions streamed live, traces, and every
refusal the security rules ask for (one JSON line with a status, never a stack trace)."""

from __future__ import annotations

import json
import threading
import urllib.parse
from pathlib import Path

import pytest
from helpers_eval import caption_text
from helpers_server import call, events, live, make_data_dir, options_for
from scripted_server import Say, ScriptedChatServer

from longvideo_r1.agent.trace import Trace
from longvideo_r1.cli.main import main
from longvideo_r1.cli.serve import check_exposure, is_loopback
from longvideo_r1.errors import ConfigError
from longvideo_r1.server.events import trace_events
from longvideo_r1.server.paths import DataDir, PathRefused
from longvideo_r1.server.runs import Run

GET_2_3 = "<think>The second quarter may show it.</think><tool>get_caption((2, 3))</tool>"
GET_2_3_1 = "<think>Look closer.</think><tool>get_caption((2, 3, 1))</tool>"
ANSWER_B = "<think>The captions say so.</think><answer>B</answer>"
QUESTION = {"question": "What colour is the box?", "choices": ["A. red", "B. yellow"]}


@pytest.fixture(scope="module")
def data(tmp_path_factory, test_video) -> Path:
    return make_data_dir(tmp_path_factory.mktemp("serve") / "data", test_video.path)


@pytest.fixture(scope="module")
def server(data, testbench_store, tmp_path_factory):
    """A server on the data folder without a reasoning model (questions are tested apart)."""
    traces = tmp_path_factory.mktemp("traces")
    with live(options_for(data, testbench_store, [traces])) as url:
        yield url


@pytest.fixture(scope="module")
def video_id(server) -> str:
    _, listing, _ = call(f"{server}/api/videos")
    (entry,) = [v for v in listing["videos"] if v["name"] == "testvideo.mp4"]
    return entry["id"]


def assert_one_line_error(status: int, payload, expected: int) -> str:
    assert status == expected, payload
    assert set(payload) == {"error"}, payload
    line = payload["error"]
    assert "\n" not in line and "Traceback" not in line
    return line


# the data folder guard --------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["../outside/secret.srt", "/etc/passwd", "sub/../../x.mp4", "C:\\Windows\\x.mp4",
     "..\\outside\\secret.srt", "linked-out.mp4", "secret.srt", "a\x00b.mp4"],
)  # fmt: skip
def test_the_guard_refuses_paths_out_of_the_data_folder(data, path):
    with pytest.raises(PathRefused):
        DataDir.open(data).resolve(path)


def test_the_guard_resolves_names_inside_and_refuses_a_missing_folder(data, tmp_path):
    guard = DataDir.open(data)
    assert guard.resolve("./testvideo.mp4") == (data / "testvideo.mp4").resolve()
    with pytest.raises(ConfigError, match="data folder not found"):
        DataDir.open(tmp_path / "nope")


# videos -------------------------------------------------------------------------------


def test_videos_lists_the_folders_videos_and_nothing_that_leads_out(server):
    status, listing, _ = call(f"{server}/api/videos")
    names = {v["name"] for v in listing["videos"]}
    assert status == 200 and "testvideo.mp4" in names
    assert not names & {"linked-out.mp4", ".hidden.mp4", "notes.txt"}
    known = {v["name"]: v["known"] for v in listing["videos"]}
    assert known["testvideo.mp4"] and not known["fake.mp4"]  # the store has met the first


def test_tree_has_spans_and_the_cached_captions(server, video_id, test_video):
    status, tree, _ = call(f"{server}/api/videos/{video_id}")
    assert status == 200
    assert tree["video"] == "testvideo.mp4" and tree["width"] == 4
    assert tree["duration"] == pytest.approx(test_video.manifest["duration"], abs=0.05)
    first = tree["nodes"][0]
    assert first["id"] == [1] and first["start"] == 0.0
    assert first["caption"] == caption_text((1,))
    assert len([n for n in tree["nodes"] if len(n["id"]) == 1]) == 4
    assert str(test_video.path.parent) not in json.dumps(tree)  # the server's paths stay its own


@pytest.mark.parametrize("route", ["", "/file", "/thumbs/1", "/ask"])
def test_an_unknown_video_id_is_a_404(server, route):
    method, body = ("POST", QUESTION) if route == "/ask" else ("GET", None)
    status, payload, _ = call(f"{server}/api/videos/0123456789abcdef{route}", method, body)
    assert "0123456789abcdef" in assert_one_line_error(status, payload, 404)


def test_register_by_path_inside_the_data_folder(server, video_id):
    status, entry, _ = call(f"{server}/api/videos", "POST", {"path": "testvideo.mp4"})
    assert status == 201 and entry["id"] == video_id


@pytest.mark.parametrize(
    "path", ["../outside/secret.srt", "/etc/passwd", "linked-out.mp4", "secret.srt", "a/../../b"]
)
def test_register_refuses_traversal_absolute_paths_and_links_out(server, path):
    status, payload, _ = call(f"{server}/api/videos", "POST", {"path": path})
    assert_one_line_error(status, payload, 403)


def test_register_refuses_a_missing_file_and_a_file_that_is_no_video(server):
    status, payload, _ = call(f"{server}/api/videos", "POST", {"path": "nope.mp4"})
    assert_one_line_error(status, payload, 404)
    status, payload, _ = call(f"{server}/api/videos", "POST", {"path": "fake.mp4"})
    assert_one_line_error(status, payload, 422)


def test_a_malformed_body_and_an_unknown_route_are_json_errors(server):
    status, payload, _ = call(f"{server}/api/videos", "POST", {"where": "x"})
    assert "path" in assert_one_line_error(status, payload, 422)
    status, payload, _ = call(f"{server}/api/nothing-here")
    assert_one_line_error(status, payload, 404)


def test_thumbnails_are_one_decoded_frame_cached(server, video_id):
    url = f"{server}/api/videos/{video_id}/thumbs/(2,%203)"
    status, image, headers = call(url)
    assert status == 200 and headers["content-type"] == "image/jpeg"
    assert image[:2] == b"\xff\xd8"
    status, again, _ = call(url)
    assert again == image
    status, payload, _ = call(f"{server}/api/videos/{video_id}/thumbs/9.9.9")
    assert "node" in assert_one_line_error(status, payload, 400)
    status, payload, _ = call(f"{server}/api/videos/{video_id}/thumbs/..%2F..%2Fetc")
    assert_one_line_error(status, payload, 404)  # a slash is no part of a node id: no route


def test_the_video_file_is_served_with_range_requests(server, video_id, test_video):
    status, part, headers = call(
        f"{server}/api/videos/{video_id}/file", headers={"Range": "bytes=0-99"}
    )
    assert status == 206 and len(part) == 100
    assert part == test_video.path.read_bytes()[:100]


# uploads ------------------------------------------------------------------------------


@pytest.fixture
def small_server(tmp_path, testbench_store, test_video):
    """A server whose upload limit is 300 KB, on a data folder of its own."""
    folder = make_data_dir(tmp_path / "data", test_video.path)
    with live(options_for(folder, testbench_store, [tmp_path / "t"], max_upload=300_000)) as url:
        yield url, folder


def leftovers(folder: Path) -> list[str]:
    uploads = folder / "uploads"
    return sorted(p.name for p in uploads.iterdir()) if uploads.exists() else []


def test_an_upload_that_decodes_is_kept_and_listed(small_server, bad_inputs):
    url, folder = small_server
    sample = bad_inputs["sample"].read_bytes()
    name = urllib.parse.quote("../../evil clip.mp4")
    status, entry, _ = call(f"{url}/api/videos/upload?name={name}", "POST", raw=sample)
    assert status == 201, entry
    assert entry["name"].startswith("uploads/") and "/" not in entry["name"][len("uploads/") :]
    assert (folder / entry["name"]).read_bytes() == sample
    _, listing, _ = call(f"{url}/api/videos")
    assert entry["id"] in {v["id"] for v in listing["videos"]}
    assert leftovers(folder) == [Path(entry["name"]).name]


def test_an_oversized_upload_is_refused_and_nothing_is_left(small_server):
    url, folder = small_server
    status, payload, _ = call(f"{url}/api/videos/upload?name=big.mp4", "POST", raw=b"\0" * 400_000)
    assert "too large" in assert_one_line_error(status, payload, 413)
    assert leftovers(folder) == []


def test_an_oversized_upload_without_a_length_is_cut_off_while_streaming(small_server):
    url, folder = small_server
    chunks = iter([b"\0" * 100_000] * 5)
    status, payload, _ = call(f"{url}/api/videos/upload?name=big.mp4", "POST", raw=chunks)
    assert "too large" in assert_one_line_error(status, payload, 413)
    assert leftovers(folder) == []


@pytest.mark.parametrize(
    ("name", "content"),
    [("notes.mp4", b"plain text, not a video\n" * 50), ("empty.mp4", b""), ("clip.txt", b"x")],
)
def test_an_upload_that_is_no_video_is_refused_and_nothing_is_left(small_server, name, content):
    url, folder = small_server
    status, payload, _ = call(f"{url}/api/videos/upload?name={name}", "POST", raw=content)
    line = assert_one_line_error(status, payload, 422)
    assert str(folder) not in line
    assert leftovers(folder) == []


# the token and the host ----------------------------------------------------------------


def test_a_server_with_a_token_refuses_requests_without_it(data, testbench_store, tmp_path):
    options = options_for(data, testbench_store, [tmp_path], token="s3cret-token")
    with live(options) as url:
        for headers, query in (
            ({}, ""),
            ({"Authorization": "Bearer wrong-token"}, ""),
            ({}, "?token=nope"),
        ):
            status, payload, _ = call(f"{url}/api/videos{query}", headers=headers)
            assert "token" in assert_one_line_error(status, payload, 401)
        assert call(f"{url}/api/videos", headers={"Authorization": "Bearer s3cret-token"})[0] == 200
        assert call(f"{url}/api/videos?token=s3cret-token")[0] == 200
        assert call(f"{url}/")[0] == 200  # the page itself holds no data


def test_a_loopback_server_refuses_other_host_names(server):
    """A page elsewhere cannot reach it by pointing its own name at 127.0.0.1."""
    status, _, _ = call(f"{server}/api/videos", headers={"Host": "evil.example:80"})
    assert status == 400


def test_serve_refuses_to_listen_beyond_loopback_without_a_token(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("LVR1_TOKEN", raising=False)
    code = main(["serve", "--host", "0.0.0.0", "--data", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--token" in err
    assert is_loopback("127.0.0.1") and is_loopback("::1") and not is_loopback("0.0.0.0")
    check_exposure("0.0.0.0", "long-enough-token")
    with pytest.raises(ConfigError, match="too short"):
        check_exposure("127.0.0.1", "short")


def test_serve_refuses_a_port_in_use_in_one_line(capsys, tmp_path, server, monkeypatch):
    monkeypatch.setenv("LVR1_CONFIG", str(tmp_path / "none.yaml"))
    (tmp_path / "none.yaml").write_text("{}\n")
    port = urllib.parse.urlsplit(server).port
    code = main(
        [
            "serve",
            "--port",
            str(port),
            "--data",
            str(tmp_path),
            "--store",
            str(tmp_path / "s.sqlite"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "cannot listen on 127.0.0.1" in err and len(err.strip().splitlines()) == 1


# questions, live ------------------------------------------------------------------------


@pytest.fixture
def asking(data, testbench_store, tmp_path):
    """A server whose reasoning model is a scripted one; yields (url, llm, trace folder)."""
    script = [Say(GET_2_3, delay=0.2), Say(GET_2_3_1, delay=0.2), ANSWER_B]
    with (
        ScriptedChatServer(script) as llm,
        live(options_for(data, testbench_store, [tmp_path], reasoning=llm.base_url)) as url,
    ):
        yield url, llm, tmp_path


def ask(url: str, video: str, body=QUESTION) -> list[dict]:
    status, started, _ = call(f"{url}/api/videos/{video}/ask", "POST", body)
    assert status == 202, started
    return events(url + started["events"])


def test_a_question_streams_its_rounds_then_the_answer(asking, video_id):
    url, llm, traces = asking
    got = ask(url, video_id)
    kinds = [e["kind"] for e in got]
    assert kinds[:2] == ["status", "status"] and kinds[-1] == "answer"
    assert kinds[2:] == ["opening", "round", "round", "round", "answer"]
    opening = got[2]
    assert [n["id"] for n in opening["nodes"]] == [[1], [2], [3], [4]]
    assert opening["nodes"][0]["caption"] == caption_text((1,)) and opening["nodes"][0]["cache_hit"]
    rounds = [e for e in got if e["kind"] == "round"]
    assert [r["node"] and r["node"]["id"] for r in rounds] == [[2, 3], [2, 3, 1], None]
    assert rounds[0]["think"] == "The second quarter may show it."
    assert rounds[0]["action"] == "get_caption" and rounds[0]["observation"]
    assert caption_text((2, 3)) in rounds[0]["observation"]
    assert rounds[1]["node"]["start"] < rounds[1]["node"]["end"]
    assert [r["cost"]["rounds"] for r in rounds] == [1, 2, 3]
    assert rounds[1]["cost"]["captions_cached"] == 6
    answer = got[-1]
    assert answer["status"] == "answered" and answer["answer"] == "B"
    assert [e["node_id"] for e in answer["evidence"]] == [[2, 3], [2, 3, 1]]
    assert answer["cost"]["rounds"] == 3
    # the trace is kept, listed for this video, and replays as the same events
    status, listing, _ = call(f"{url}/api/traces?video={video_id}")
    assert answer["trace"] in [t["id"] for t in listing["traces"]]
    status, trace, _ = call(f"{url}/api/traces/{answer['trace']}")
    assert status == 200 and trace["answer"] == "B" and len(trace["rounds"]) == 3
    _, replay, _ = call(f"{url}/api/traces/{answer['trace']}/events")
    replayed = [e["node"] and e["node"]["id"] for e in replay["events"] if e["kind"] == "round"]
    assert replayed == [[2, 3], [2, 3, 1], None]
    ats = [e["at"] for e in replay["events"]]
    assert ats == sorted(ats) and ats[-1] > 0.2
    assert len(list(traces.glob("*.json"))) == 1


def test_concurrent_questions_queue_rather_than_interleave(
    data, testbench_store, tmp_path, video_id
):
    """Two questions at once: the second waits, so the model sees one conversation at a time."""
    second = {"question": "Who rides the bike?", "choices": ["A. a cyclist", "B. a cat"]}
    script = [Say(GET_2_3, delay=0.3), Say(ANSWER_B, delay=0.3)] * 2
    with ScriptedChatServer(script) as llm:
        with live(options_for(data, testbench_store, [tmp_path], reasoning=llm.base_url)) as url:
            results: dict[str, list[dict]] = {}
            first = threading.Thread(target=lambda: results.update(a=ask(url, video_id)))
            first.start()
            while not llm.requests:  # the first question is with the model
                threading.Event().wait(0.02)
            results["b"] = ask(url, video_id, second)
            first.join(30)
        asked = [body["messages"][1]["content"] for body in llm.requests]
    assert results["b"][0]["text"] == "queued behind 1 question"
    assert [e["kind"] for e in results["a"]][-1] == "answer"
    order = ["box" if "colour is the box" in str(m) else "bike" for m in asked]
    assert order == ["box", "box", "bike", "bike"]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"question": "  "}, 400, "question is empty"),
        ({"question": "Which?", "choices": ["A. only one"]}, 400, "2 to 26 choices"),
        ({"choices": ["A. x", "B. y"]}, 422, "question"),
    ],
)
def test_a_bad_question_is_refused_before_any_model_call(server, video_id, body, status, words):
    got, payload, _ = call(f"{server}/api/videos/{video_id}/ask", "POST", body)
    assert words in assert_one_line_error(got, payload, status)


def test_an_unknown_run_is_a_404(server):
    status, payload, _ = call(f"{server}/api/runs/nope/events")
    assert_one_line_error(status, payload, 404)


# traces -----------------------------------------------------------------------------------


def test_traces_of_ask_and_eval_folders_are_listed_and_fetched(
    data, testbench_store, tmp_path, video_id
):
    fingerprint = video_id + "0" * 48
    trace = Trace(question="Where is the cup?", duration=151.6, width=4, fingerprint=fingerprint,
                  status="answered", answer="A")  # fmt: skip
    own, out = tmp_path / "own", tmp_path / "evalout"
    trace.save(own / "one.json")
    trace.save(out / "agent" / "traces" / "q1.json")
    (out / "agent" / "results").mkdir(parents=True)
    (out / "agent" / "results" / "q1.json").write_text('{"id": "q1"}')  # a record, not a trace
    (out / "agent" / "run.json").write_text("{}")
    with live(options_for(data, testbench_store, [own, out])) as url:
        _, listing, _ = call(f"{url}/api/traces")
        sources = sorted(t["source"] for t in listing["traces"])
        assert sources == ["evalout/agent/traces/q1.json", "own/one.json"]
        _, mine, _ = call(f"{url}/api/traces?video={video_id}")
        assert len(mine["traces"]) == 2
        status, fetched, _ = call(f"{url}/api/traces/{listing['traces'][0]['id']}")
        assert status == 200 and fetched["question"] == "Where is the cup?"
        for bad in ("nope", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd"):
            status, payload, _ = call(f"{url}/api/traces/{bad}")
            assert status == 404, payload
        status, payload, _ = call(f"{url}/api/traces?video=0123456789abcdef")
        assert_one_line_error(status, payload, 404)


def test_a_trace_replays_at_the_times_it_ran():
    trace = Trace.model_validate(
        {"question": "Q?", "duration": 100.0, "width": 4, "status": "answered", "answer": "A",
         "high_captions": [{"node_id": [i], "start": 0, "end": 1, "text": f"c{i}", "cache_hit": i > 2}
                           for i in range(1, 5)],
         "rounds": [{"index": 1, "kind": "get_caption", "node_id": [3], "model_seconds": 2.0,
                     "tool_seconds": 1.0, "cache_hit": False},
                    {"index": 2, "kind": "answer", "answer": "A", "model_seconds": 1.5}],
         "cost": {"tool_seconds": 1.5, "end_to_end_seconds": 5.0}}
    )  # fmt: skip
    got = trace_events(trace, "t1")
    assert [e["kind"] for e in got] == ["opening", "round", "round", "answer"]
    assert [e["at"] for e in got] == [0.5, 3.5, 5.0, 5.0]
    assert got[0]["cost"]["captions_made"] == 2 and got[0]["cost"]["captions_cached"] == 2
    assert got[1]["node"] == {"id": [3], "level": "high", "start": 50.0, "end": 75.0}
    assert got[1]["cost"]["captions_made"] == 3
    assert got[-1]["trace"] == "t1"


def test_the_page_and_its_files_are_served(server):
    status, page, headers = call(f"{server}/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"app.js" in page
    for name in ("app.js", "style.css"):
        assert call(f"{server}/static/{name}")[0] == 200
    assert call(f"{server}/static/..%2F..%2Fapp.py")[0] == 404


def test_a_stopping_server_lets_its_event_readers_go():
    """Ctrl-C must not wait for a run to end: open streams end with one last event."""
    run = Run("r1", "v1", None, "Q?", None)  # type: ignore[arg-type]  # no session needed
    got: list = []
    reader = threading.Thread(target=lambda: got.extend(run.follow(wait=30)))
    reader.start()
    run.emit({"kind": "status", "text": "starting"})
    run.stopping.set()
    run.let_go()
    reader.join(5)
    assert not reader.is_alive()
    kinds = [e["kind"] for e in got if e is not None]
    assert kinds == ["status", "error"] and "stopping" in got[-1]["message"]
