"""Settings precedence: defaults < file < environment < flags."""

from __future__ import annotations

import pytest

from longvideo_r1.agent.session import make_captioner
from longvideo_r1.cli.common import _settings
from longvideo_r1.cli.main import build_parser, main
from longvideo_r1.config import levers_on, load_settings, navigable
from longvideo_r1.errors import ConfigError


def test_defaults_use_the_embedded_captioner(tmp_path):
    settings = load_settings(env={}, config_path=None)
    assert settings.captioner == "embedded"
    assert settings.caption.base_url is None


def test_precedence(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("caption:\n  base_url: http://file/v1\n  model: file-model\nmin_width: 3\n")
    env = {"LVR1_CAPTION_MODEL": "env-model", "LVR1_CONFIG": str(cfg)}
    settings = load_settings(env=env, overrides={"caption": {"model": None}})
    assert settings.caption.base_url == "http://file/v1"
    assert settings.caption.model == "env-model"
    assert settings.min_width == 3
    settings = load_settings(env=env, overrides={"caption": {"model": "flag-model"}})
    assert settings.caption.model == "flag-model"


def test_api_key_falls_back_to_openai_variable(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    settings = load_settings(env={})
    assert settings.reasoning.resolved_key() == "sk-test"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("[1, 2]", "mapping"), ("caption: {timeout: -1}", "caption.timeout"), ("a: [", "cannot read")],
)
def test_bad_config_files_give_one_line_errors(tmp_path, text, fragment):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=fragment) as info:
        load_settings(config_path=cfg, env={})
    assert "\n" not in str(info.value)


def test_missing_explicit_config_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(config_path=tmp_path / "nope.yaml", env={})


def test_min_width_above_max_width_is_rejected():
    with pytest.raises(ConfigError, match="min_width"):
        load_settings(env={}, overrides={"min_width": 9, "max_width": 8})


def test_constrain_and_answer_form_come_from_file_environment_or_flags(tmp_path):
    assert (load_settings(env={}).constrain, load_settings(env={}).answer_form) == ("auto", "auto")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("constrain: off\nanswer_form: letter\n")
    from_file = load_settings(config_path=cfg, env={})
    # YAML reads a bare off as false; the setting takes the word
    assert (from_file.answer_form, from_file.constrain) == ("letter", "off")
    env = {"LVR1_CONSTRAIN": "on", "LVR1_ANSWER_FORM": "text"}
    settings = load_settings(config_path=cfg, env=env)
    assert (settings.constrain, settings.answer_form) == ("on", "text")
    flags = load_settings(env=env, overrides={"constrain": "off", "answer_form": None})
    assert (flags.constrain, flags.answer_form) == ("off", "text")
    with pytest.raises(ConfigError, match="invalid setting constrain") as info:
        load_settings(env={"LVR1_CONSTRAIN": "sometimes"})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("captoner: vlm\n", "unknown setting captoner (did you mean captioner?)"),
        (
            "reasoning:\n  bse_url: http://x/v1\n",
            "unknown setting reasoning.bse_url (did you mean reasoning.base_url?)",
        ),
        ("video_qa: {model: m, timeot: 5}\n", "video_qa.timeot (did you mean video_qa.timeout?)"),
        (
            "colour: red\n",
            "unknown setting colour (known: store, captioner, levers, navigable_captions,",
        ),
    ],
    ids=["typo", "nested-typo", "inline-section", "nothing-near"],
)
def test_unknown_settings_are_refused_with_the_nearest_name(tmp_path, text, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(config_path=cfg, env={})
    assert str(info.value).startswith(f"config file {cfg}: ")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_config_file_that_is_not_utf8_is_named_in_one_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes("captioner: embedded\nstore: /tmp/caf\u00e9.sqlite\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_settings(config_path=cfg, env={})
    assert str(info.value) == (
        f"config file {cfg} is not UTF-8 text (byte 0xe9 on line 2); save it as UTF-8"
    )


@pytest.mark.parametrize(
    "content",
    [b"captoner: vlm\n", b"reasoning: {bse_url: http://x/v1}\n", b"store: caf\xe9\n"],
    ids=["typo", "nested-typo", "latin-1"],
)
def test_the_cli_refuses_a_bad_config_file_with_status_2(tmp_path, capsys, content):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(content)
    assert main(["tree", str(tmp_path / "video.mp4"), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lvr1 tree: error: config file {cfg}") and err.count("\n") == 1


def test_navigable_captions_are_unset_by_default_and_come_from_file_environment_or_flags(
    tmp_path,
):
    assert load_settings(env={}).navigable_captions is None  # the levers decide
    cfg = tmp_path / "c.yaml"
    cfg.write_text("navigable_captions: on\n")  # YAML reads a bare on as true
    assert load_settings(config_path=cfg, env={}).navigable_captions is True
    env = {"LVR1_NAVIGABLE_CAPTIONS": "off"}
    assert load_settings(config_path=cfg, env=env).navigable_captions is False
    flags = load_settings(env=env, overrides={"navigable_captions": True})
    assert flags.navigable_captions is True
    with pytest.raises(ConfigError, match="invalid setting navigable_captions") as info:
        load_settings(env={"LVR1_NAVIGABLE_CAPTIONS": "sometimes"})
    assert "\n" not in str(info.value)


SERVED = {"reasoning": {"base_url": "http://localhost:8000/v1"}}


@pytest.mark.parametrize(
    ("overrides", "on"),
    [
        ({}, True),  # the embedded navigator over embedded captions
        (SERVED, False),
        ({"captioner": "vlm"}, False),
        ({"captioner": "imported:ref"}, False),
        ({"levers": "on", **SERVED}, True),
        ({"levers": "off"}, False),
    ],
    ids=["embedded", "served", "vlm", "imported", "forced-on", "forced-off"],
)
def test_the_levers_are_on_by_default_only_for_the_embedded_navigator(overrides, on):
    assert levers_on(load_settings(env={}, overrides=overrides)) is on


def test_the_levers_come_from_file_environment_or_flags(tmp_path):
    assert load_settings(env={}).levers == "auto"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("levers: off\n")  # YAML reads a bare off as false; the setting takes the word
    assert load_settings(config_path=cfg, env={}).levers == "off"
    cfg.write_text("levers: on\n")
    assert load_settings(config_path=cfg, env={}).levers == "on"
    env = {"LVR1_LEVERS": "off"}
    assert load_settings(config_path=cfg, env=env).levers == "off"
    assert load_settings(config_path=cfg, env=env, overrides={"levers": "auto"}).levers == "auto"
    with pytest.raises(ConfigError, match="invalid setting levers") as info:
        load_settings(env={"LVR1_LEVERS": "sometimes"})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, True),
        ({"levers": "off"}, False),
        ({"levers": "off", "navigable_captions": True}, True),  # explicit wins
        ({"navigable_captions": False}, False),
        (SERVED, False),
        ({"levers": "on", "captioner": "vlm"}, False),  # never for another captioner
        ({"captioner": "imported:ref"}, False),
    ],
    ids=["auto", "levers-off", "explicit-on", "explicit-off", "served", "vlm", "imported"],
)
def test_navigable_captions_follow_the_levers_unless_set(overrides, expected):
    assert navigable(load_settings(env={}, overrides=overrides)) is expected


def test_navigable_captions_follow_levers_from_the_environment_and_file(tmp_path):
    assert navigable(load_settings(env={"LVR1_LEVERS": "off"})) is False
    cfg = tmp_path / "c.yaml"
    cfg.write_text("levers: off\nnavigable_captions: on\n")
    assert navigable(load_settings(config_path=cfg, env={})) is True


def test_explicit_navigable_captions_with_another_captioner_stay_an_error():
    settings = load_settings(env={}, overrides={"captioner": "vlm", "navigable_captions": True})
    with pytest.raises(ConfigError, match="navigable captions are made by the embedded") as info:
        make_captioner(settings)
    assert "\n" not in str(info.value)
    auto = load_settings(env={}, overrides={"captioner": "imported:ref", "levers": "on"})
    assert make_captioner(auto).identity == "imported:ref"  # the levers never ask for it


def test_the_embedded_context_window_comes_from_file_environment_or_flags(tmp_path):
    assert load_settings(env={}, config_path=None).reasoning.context is None  # model default
    cfg = tmp_path / "c.yaml"
    cfg.write_text("reasoning:\n  context: 8192\n")
    assert load_settings(env={"LVR1_CONFIG": str(cfg)}).reasoning.context == 8192
    env = {"LVR1_CONFIG": str(cfg), "LVR1_REASONING_CONTEXT": "32768"}
    assert load_settings(env=env).reasoning.context == 32768
    args = build_parser().parse_args(
        ["eval", "testbench", "--out", "o", "--reasoning-context", "4096"]
    )
    assert _settings(args).reasoning.context == 4096
    with pytest.raises(ConfigError, match="reasoning.context"):
        load_settings(env={"LVR1_REASONING_CONTEXT": "0"})
