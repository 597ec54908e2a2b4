"""Schema rules of porch.toml: defaults, types, derived values, gpio profiles, live-apply diff."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from porch import config
from porch.config import ConfigError, changed_sections, parse_text, validate

FULL = Path(__file__).with_name("full.toml")


def problems(doc: dict, *, sim: bool = False) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate(doc, sim=sim)
    return info.value.problems


def keys(doc: dict) -> list[str]:
    return [p.split(": ", 1)[0] for p in problems(doc)]


# --- defaults -------------------------------------------------------------------------


def test_defaults_match_the_spec_table() -> None:
    cfg = validate({})
    assert cfg.device.name == "Door"
    assert (cfg.sip.registrar, cfg.sip.backup_registrar, cfg.sip.outbound_proxy) == ("", "", "")
    assert cfg.sip.listen == "0.0.0.0:5060"
    assert cfg.sip.transport == "udp"
    assert cfg.sip.register_expires == 600
    assert cfg.sip.keepalive_seconds == 25
    assert cfg.call.targets == ()
    assert cfg.call.strategy == "sequential"
    assert (cfg.call.ring_timeout, cfg.call.max_duration) == (30, 180)
    assert cfg.call.auto_answer == "allowlist"
    assert cfg.call.button_hangup is False
    assert cfg.door.info_unlock is True
    assert cfg.door.unlock_seconds == 3.0
    assert (cfg.door.lockout_attempts, cfg.door.lockout_seconds) == (5, 60)
    assert (cfg.audio.capture, cfg.audio.playback) == ("default", "default")
    assert cfg.audio.codecs == ("G722", "PCMU", "PCMA")
    assert cfg.audio.echo == "aec"
    assert cfg.gpio.board == "pi"
    assert cfg.gpio.relay_active_high is True
    assert cfg.gpio.button_hold_seconds == 2.0
    assert (cfg.serial.reader, cfg.serial.baudrate) == ("", 9600)
    assert cfg.web.listen == "0.0.0.0:80"
    assert (cfg.web.listen_host, cfg.web.listen_port) == ("0.0.0.0", 80)
    assert cfg.sip.peer_to_peer


def test_sim_defaults_listen_on_loopback() -> None:
    cfg = validate({}, sim=True)
    assert (cfg.web.listen_host, cfg.web.listen_port) == ("127.0.0.1", 8080)
    assert (cfg.sip.listen_host, cfg.sip.listen_port) == ("127.0.0.1", 5060)
    # an explicit value wins in sim mode too
    assert validate({"web": {"listen": "0.0.0.0:9000"}}, sim=True).web.listen_port == 9000


def test_defaults_resolve_the_pi_profile() -> None:
    gpio = validate({}).gpio
    assert gpio.pins() == {
        "button": 17,
        "relay": 27,
        "led_ready": 22,
        "led_call": 23,
        "door_contact": 24,
        "exit_button": 25,
        "tamper": 5,
    }


# --- the brief's message formats ------------------------------------------------------


def test_message_formats() -> None:
    assert problems({"sip": {"registrar": "pbx", "username": "d"}}) == [
        "sip.registrar: not a SIP URI: 'pbx'"
    ]
    assert problems({"door": {"unlock_seconds": 45}}) == [
        "door.unlock_seconds: must be between 0.2 and 30, got 45"
    ]
    assert problems({"foo": {"bar": 1}}) == ["foo.bar: unknown key (no section [foo])"]


def test_all_problems_are_collected_in_one_error() -> None:
    found = keys(
        {
            "device": {"name": ""},
            "sip": {"transport": "x", "register_expires": "600"},
            "door": {"unlock_seconds": 0, "cards": ["zz"]},
            "web": {"listen": "nohost"},
            "extra": 1,
        }
    )
    assert sorted(found) == sorted(
        [
            "extra",
            "device.name",
            "sip.transport",
            "sip.register_expires",
            "door.unlock_seconds",
            "door.cards[0]",
            "web.listen",
        ]
    )


# --- types ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("sip", "register_expires"),
        ("call", "ring_timeout"),
        ("door", "lockout_attempts"),
        ("serial", "baudrate"),
        ("gpio", "relay"),
        ("door", "unlock_seconds"),
    ],
)
def test_booleans_are_not_numbers(section: str, key: str) -> None:
    (problem,) = problems({section: {key: True}})
    assert problem.startswith(f"{section}.{key}: expected ")
    assert "got boolean true" in problem


def test_ints_are_accepted_for_float_keys_and_stored_as_float() -> None:
    cfg = validate({"door": {"unlock_seconds": 5}, "gpio": {"button_hold_seconds": 1}})
    assert cfg.door.unlock_seconds == 5.0 and isinstance(cfg.door.unlock_seconds, float)
    assert isinstance(cfg.gpio.button_hold_seconds, float)


def test_floats_are_not_accepted_for_int_keys() -> None:
    assert problems({"call": {"ring_timeout": 30.0}}) == [
        "call.ring_timeout: expected an integer, got float 30.0"
    ]


def test_wrong_types_name_the_expected_type() -> None:
    found = problems(
        {
            "device": {"name": 5},
            "call": {"targets": "sip:a@b", "button_hangup": 1},
            "door": {"unlock_seconds": "3"},
            "audio": {"codecs": [1]},
        }
    )
    assert "device.name: expected a string, got integer 5" in found
    assert "call.targets: expected an array of strings, got string 'sip:a@b'" in found
    assert "call.button_hangup: expected true or false, got integer 1" in found
    assert "door.unlock_seconds: expected a number, got string '3'" in found
    assert "audio.codecs[0]: expected a string, got integer 1" in found


def test_nan_and_inf_are_rejected() -> None:
    for value in (float("nan"), float("inf")):
        assert keys({"door": {"unlock_seconds": value}}) == ["door.unlock_seconds"]


def test_section_that_is_not_a_table() -> None:
    assert problems({"door": [1]}) == ["door: expected a table ([door]), got an array"]


def test_unknown_key_hints() -> None:
    assert problems({"sip": {"regsitrar": "sip:x"}}) == [
        "sip.regsitrar: unknown key (did you mean sip.registrar?)"
    ]
    assert problems({"sip": {"name": "x"}}) == [
        "sip.name: unknown key (it belongs in [device]: device.name)"
    ]
    assert problems({"registrar": "sip:x"}) == [
        "registrar: unknown key (did you mean sip.registrar?)"
    ]


def test_top_level_must_be_a_table() -> None:
    with pytest.raises(ConfigError):
        validate([])  # type: ignore[arg-type]


# --- SIP values -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        "sip:pbx.example.com",
        "sip:10.0.0.2:5070;transport=tcp",
        "SIP:pbx",
        "sip:[::1]",
        "sip:[2001:db8::1]:5060;lr",
        "sip:pbx.example.com.",
        "sip:a-b.c-d.example",
    ],
)
def test_good_server_uris(uri: str) -> None:
    transport = "tcp" if "transport=tcp" in uri else "udp"
    cfg = validate({"sip": {"registrar": uri, "username": "door", "transport": transport}})
    assert cfg.sip.registrar == uri


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("pbx.example.com", "not a SIP URI"),
        ("http://pbx", "not a SIP URI"),
        ("sip:", "missing host"),
        ("sip:pbx:0", "port must be between 1 and 65535"),
        ("sip:pbx:50a", "port is not a number"),
        ("sip:-pbx.example.com", "not a host name"),
        ("sip:300.1.1.1", "not an IPv4 address"),
        ("sip:[::g]", "not an IPv6 address"),
        ("sip:[::1", "unclosed"),
        ("sip:pbx example.com", "contains spaces"),
        ("sip:pbx;transport=ws", "transport=ws is not supported"),
        ("sip:pbx?subject=x", "headers"),
        ("sip:door@pbx", "no user part"),
        ("sip:pbx;=x", "malformed parameter"),
        ("sip:1.2.3", "not an IPv4 address"),
    ],
)
def test_bad_server_uris(uri: str, reason: str) -> None:
    (problem,) = problems({"sip": {"registrar": uri, "username": "door"}})
    assert problem.startswith("sip.registrar: ")
    assert reason in problem


def test_effective_values() -> None:
    cfg = validate({"sip": {"registrar": "sip:[2001:db8::1]:5070", "username": "door"}})
    assert cfg.sip.effective_auth_username == "door"
    assert cfg.sip.effective_domain == "[2001:db8::1]"
    cfg = validate(
        {
            "sip": {
                "registrar": "sip:pbx.example.com;transport=udp",
                "username": "door",
                "auth_username": "a1",
                "domain": "example.com",
            }
        }
    )
    assert cfg.sip.effective_auth_username == "a1"
    assert cfg.sip.effective_domain == "example.com"
    assert validate({}).sip.effective_domain == ""


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("0.0.0.0:5060", "0.0.0.0", 5060),
        ("[::]:5062", "::", 5062),
        ("[::1]:1", "::1", 1),
        ("localhost:65535", "localhost", 65535),
    ],
)
def test_listen_host_and_port(listen: str, host: str, port: int) -> None:
    cfg = validate({"sip": {"listen": listen}, "web": {"listen": listen}})
    assert (cfg.sip.listen_host, cfg.sip.listen_port) == (host, port)
    assert (cfg.web.listen_host, cfg.web.listen_port) == (host, port)


def test_same_address_for_sip_udp_and_web_is_allowed_but_not_for_tcp() -> None:
    # Different protocols (UDP vs HTTP over TCP) may share a host:port.
    validate({"sip": {"listen": "0.0.0.0:8080"}, "web": {"listen": "0.0.0.0:8080"}})
    assert keys(
        {"sip": {"listen": "0.0.0.0:8080", "transport": "tcp"}, "web": {"listen": "127.0.0.1:8080"}}
    ) == ["web.listen"]


def test_sips_needs_tls_and_transport_params_must_agree() -> None:
    validate({"sip": {"registrar": "sips:pbx", "username": "d", "transport": "tls"}})
    assert keys({"sip": {"registrar": "sips:pbx", "username": "d", "transport": "tcp"}}) == [
        "sip.registrar"
    ]
    assert keys({"sip": {"transport": "tls"}, "call": {"targets": ["sip:a@b;transport=udp"]}}) == [
        "call.targets[0]"
    ]
    assert keys({"call": {"targets": ["sips:a@b"]}}) == ["call.targets[0]"]


def test_cross_key_rules_do_not_pile_onto_a_broken_key() -> None:
    # a bad registrar is reported once, not again as "username required"
    assert keys({"sip": {"registrar": "nope"}}) == ["sip.registrar"]


def test_extensions_need_a_registrar() -> None:
    targets = ["101", "*55", "+4930123", "sip:alice@10.0.0.5"]
    assert keys({"call": {"targets": targets}}) == [
        "call.targets[0]",
        "call.targets[1]",
        "call.targets[2]",
    ]
    cfg = validate(
        {"sip": {"registrar": "sip:pbx", "username": "door"}, "call": {"targets": targets}}
    )
    assert cfg.call.targets == tuple(targets)


def test_allow_patterns() -> None:
    good = [
        "sip:*@pbx.example.com",
        "sip:100@*",
        "sip:10.0.0.*",
        "sips:*@[::1]",
        "sip:*@pbx.example.com:5060",
        "sip:*",
    ]
    assert validate({"call": {"allow": good}}).call.allow == tuple(good)
    assert keys({"call": {"allow": ["pbx.example.com", "sip:a@b;lr", "sip:a:pw@b"]}}) == [
        "call.allow[0]",
        "call.allow[1]",
        "call.allow[2]",
    ]


@pytest.mark.parametrize(
    ("pattern", "uri", "expected"),
    [
        ("sip:*@pbx.example.com", "sip:100@pbx.example.com", True),
        ("sip:*@pbx.example.com", "sips:100@PBX.Example.com", True),
        ("sip:*@pbx.example.com", "sip:100@evil.example.com", False),
        ("sip:100@*", "sip:100@anywhere", True),
        ("sip:100@*", "sip:1000@anywhere", False),
        ("sip:10.0.0.*", "sip:anyone@10.0.0.9", True),
        ("sips:*@pbx", "sip:a@pbx", False),
        ("sip:*@pbx:5060", "sip:a@pbx:5070", False),
        ("sip:*@pbx", "garbage", False),
    ],
)
def test_pattern_matches(pattern: str, uri: str, expected: bool) -> None:
    assert config.check_allow_pattern(pattern) is None
    assert config.pattern_matches(pattern, uri) is expected


# --- door -----------------------------------------------------------------------------


def test_dtmf_codes_and_cards() -> None:
    cfg = validate({"door": {"dtmf_codes": ["1234", "0000", "5"], "cards": ["00FF", "42"]}})
    assert cfg.door.dtmf_codes == ("1234", "0000", "5")
    assert keys({"door": {"dtmf_codes": ["1" * 17, "", "12 3", "١٢"]}}) == [
        "door.dtmf_codes[0]",
        "door.dtmf_codes[1]",
        "door.dtmf_codes[2]",
        "door.dtmf_codes[3]",
    ]
    assert keys({"door": {"cards": ["f" * 33, "", "0x12"]}}) == [
        "door.cards[0]",
        "door.cards[1]",
        "door.cards[2]",
    ]


# --- gpio -----------------------------------------------------------------------------


def test_every_shipped_board_profile_is_valid() -> None:
    names = config.board_names()
    assert "pi" in names and len(names) >= 2
    for name in names:
        cfg = validate({"gpio": {"board": name}})
        assert cfg.gpio.button is not None and cfg.gpio.relay is not None


def test_relay_hat_profile_switches_on_low() -> None:
    gpio = validate({"gpio": {"board": "waveshare-relay"}}).gpio
    assert (gpio.relay, gpio.relay_active_high) == (26, False)
    # an explicit key still wins over the profile
    gpio = validate({"gpio": {"board": "waveshare-relay", "relay_active_high": True}}).gpio
    assert gpio.relay_active_high is True


def test_overrides_and_not_connected() -> None:
    cfg = validate({"gpio": {"button": 4, "tamper": -1, "led_call": 5}})
    assert cfg.gpio.button == 4
    assert cfg.gpio.tamper is None
    assert cfg.gpio.led_call == 5
    assert "tamper" not in cfg.gpio.pins()
    # required functions cannot be disconnected
    assert keys({"gpio": {"relay": -1}}) == ["gpio.relay"]


def test_pin_conflicts_name_the_key_the_user_set() -> None:
    assert problems({"gpio": {"relay": 17}}) == [
        "gpio.relay: pin 17 is also used by gpio.button (from board 'pi')"
    ]
    assert problems({"gpio": {"relay": 6, "led_ready": 6}}) == [
        "gpio.led_ready: pin 6 is also used by gpio.relay"
    ]


def test_to_document_writes_only_overridden_pins() -> None:
    doc = validate({"gpio": {"relay": 6, "tamper": -1}}).to_document()
    assert doc["gpio"] == {"board": "pi", "relay": 6, "tamper": -1, "button_hold_seconds": 2.0}
    assert validate(doc) == validate({"gpio": {"relay": 6, "tamper": -1}})
    # changing the board later moves the pins the user did not set
    doc["gpio"]["board"] = "waveshare-relay"
    assert validate(doc).gpio.relay == 6
    assert validate(doc).gpio.relay_active_high is False


# --- whole documents and live apply ---------------------------------------------------


def test_full_config_round_trips_through_to_document() -> None:
    cfg = validate(parse_text(FULL.read_text(encoding="utf-8")))
    assert cfg.sip.transport == "tls"
    assert cfg.gpio.inputs_pull_up is False
    doc = cfg.to_document()
    assert set(doc) == {"device", "sip", "call", "door", "audio", "gpio", "serial", "web"}
    assert isinstance(doc["call"]["targets"], list)
    assert validate(doc) == cfg
    assert validate(doc).to_document() == doc


def test_changed_sections() -> None:
    base = validate({})
    assert changed_sections(base, validate({})) == set()
    new = validate({"door": {"unlock_seconds": 5}, "web": {"listen": "0.0.0.0:81"}})
    assert changed_sections(base, new) == {"door", "web"}
    # an explicit pin equal to the profile's changes nothing on the hardware
    assert changed_sections(base, validate({"gpio": {"relay": 27}})) == set()
    assert changed_sections(base, validate({"gpio": {"relay": 6}})) == {"gpio"}
    # sim and device defaults differ in the listen addresses and in answering direct calls
    assert changed_sections(base, validate({}, sim=True)) == {"call", "sip", "web"}
    assert validate({}, sim=True).call.auto_answer == "all"


def test_sections_are_frozen() -> None:
    cfg = validate({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.door.unlock_seconds = 10  # type: ignore[misc]
