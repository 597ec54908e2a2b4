"""The HTTP API of a running firmware: auth, setup, login throttling, config, bad input."""

import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from porch_harness import PASSWORD, free_port, start_porch


def test_everything_but_setup_and_login_needs_a_token(porch):
    for method, path in [
        ("GET", "/api/status"),
        ("GET", "/api/config"),
        ("PUT", "/api/config"),
        ("POST", "/api/call"),
        ("POST", "/api/hangup"),
        ("POST", "/api/door/unlock"),
        ("GET", "/api/events"),
        ("GET", "/api/sim/outputs"),
    ]:
        status, body, headers = porch.request(method, path, token=None)
        assert status == 401, (method, path, body)
        assert "Bearer" in headers.get("WWW-Authenticate", "")
    status, _, _ = porch.request("GET", "/api/status", token="not-a-real-token")
    assert status == 401


def test_setup_once_then_409(porch):
    status, body, _ = porch.request("POST", "/api/setup", {"password": "short"}, token=None)
    assert status == 422 and "password" in body["error"]
    token = porch.setup()
    status, body, _ = porch.request("GET", "/api/status", token=token)
    assert status == 200
    assert {"version", "registration", "call", "door", "peer"} <= body.keys()
    assert body["call"] == "idle" and body["door"] == "locked" and body["peer"] is None
    assert body["registration"] in ("disabled", "registering", "registered", "failed")
    status, _, _ = porch.request("POST", "/api/setup", {"password": "another password"}, token=None)
    assert status == 409
    # the password survives a restart of the API's view: login works
    status, body, _ = porch.request("POST", "/api/login", {"password": PASSWORD}, token=None)
    assert status == 200 and body["token"]
    stored = (porch.state_dir / "admin.json").read_text()
    assert PASSWORD not in stored and "scrypt" in stored


def test_wrong_passwords_are_slowed_down(porch):
    porch.setup()
    status, body, _ = porch.request("POST", "/api/login", {"password": "wrong one!"}, token=None)
    assert status == 401 and body["retry_after"] >= 1
    # even the right password is refused until the wait is over
    status, body, headers = porch.request("POST", "/api/login", {"password": PASSWORD}, token=None)
    assert status == 429 and int(headers["Retry-After"]) >= 1
    time.sleep(1.1)
    status, body, _ = porch.request("POST", "/api/login", {"password": "wrong two!"}, token=None)
    assert status == 401 and body["retry_after"] >= 2  # the wait doubles
    status, _, _ = porch.request("POST", "/api/login", {"password": PASSWORD}, token=None)
    assert status == 429
    time.sleep(2.1)
    status, body, _ = porch.request("POST", "/api/login", {"password": PASSWORD}, token=None)
    assert status == 200 and body["token"]


def test_bad_config_document_is_422_and_changes_nothing(porch):
    porch.setup()
    before_disk = porch.config_path.read_bytes()
    status, before, _ = porch.request("GET", "/api/config")
    assert status == 200
    bad = {**before, "door": {**before.get("door", {}), "unlock_seconds": 45}}
    bad["sip"] = {**before.get("sip", {}), "registrar": "pbx"}
    status, body, _ = porch.request("PUT", "/api/config", bad)
    assert status == 422
    assert any(e.startswith("door.unlock_seconds:") for e in body["errors"]), body
    assert any(e.startswith("sip.registrar:") for e in body["errors"]), body
    status, body, _ = porch.request("PUT", "/api/config", {**before, "nonsense": {"x": 1}})
    assert status == 422 and any(e.startswith("nonsense") for e in body["errors"])
    status, body, _ = porch.request("PUT", "/api/config", raw="{not json")
    assert status == 400 and "JSON" in body["error"]
    status, body, _ = porch.request("PUT", "/api/config", ["a", "list"])
    assert status == 422
    assert porch.config_path.read_bytes() == before_disk
    assert porch.request("GET", "/api/config")[1] == before


def test_good_config_is_saved_and_applied_live(porch):
    porch.setup()
    _, doc, _ = porch.request("GET", "/api/config")
    doc.setdefault("door", {})["unlock_seconds"] = 0.5
    doc["device"] = {**doc.get("device", {}), "name": "Back gate"}
    status, body, _ = porch.request("PUT", "/api/config", doc)
    assert status == 200, body
    assert "door" in body["applied"]
    assert 'name = "Back gate"' in porch.config_path.read_text()
    assert porch.request("GET", "/api/status")[1]["name"] == "Back gate"
    status, body, _ = porch.request("POST", "/api/door/unlock")
    assert status == 200 and body["seconds"] == pytest.approx(0.5, abs=0.01)


def test_sip_password_is_not_echoed(porch):
    porch.setup()
    _, doc, _ = porch.request("GET", "/api/config")
    doc["sip"] = {
        **doc.get("sip", {}),
        "registrar": "sip:127.0.0.1:5070",
        "username": "door",
        "password": "doorpass",
    }
    assert porch.request("PUT", "/api/config", doc)[0] == 200
    _, shown, _ = porch.request("GET", "/api/config")
    assert shown["sip"]["password"] != "doorpass"
    # sending the masked value back keeps the stored password
    assert porch.request("PUT", "/api/config", shown)[0] == 200
    assert 'password = "doorpass"' in porch.config_path.read_text()


def test_bad_api_input_gets_clear_errors(porch):
    porch.setup()
    status, body, _ = porch.request("GET", "/api/events?since=abc")
    assert status == 400 and "since" in body["error"]
    status, body, _ = porch.request("POST", "/api/sim/input", {"name": "relay", "value": True})
    assert status == 422 and body["error"].startswith("name:")
    status, body, _ = porch.request("POST", "/api/sim/input", {"name": "tamper", "value": "yes"})
    assert status == 422 and body["error"].startswith("value:")
    status, body, _ = porch.request("POST", "/api/sim/card", {})
    assert status == 422 and body["error"].startswith("id:")
    status, body, _ = porch.request("POST", "/api/login", raw="\xff garbage", token=None)
    assert status in (400, 409)


def test_gpio_and_web_changes_are_applied_without_a_restart(porch):
    from porch_harness import free_port

    porch.setup()
    pid = porch.proc.pid
    _, doc, _ = porch.request("GET", "/api/config")
    doc["gpio"] = {**doc.get("gpio", {}), "relay": 16}
    status, body, _ = porch.request("PUT", "/api/config", doc)
    assert status == 200 and "gpio" in body["applied"]
    assert "relay = 16" in porch.config_path.read_text()
    assert porch.request("POST", "/api/door/unlock")[0] == 200
    assert porch.request("GET", "/api/sim/outputs")[1]["relay"] is True
    # two functions on one pin is refused and changes nothing
    doc["gpio"]["button"] = 16
    status, body, _ = porch.request("PUT", "/api/config", doc)
    assert status == 422 and any(e.startswith("gpio.") for e in body["errors"])
    # the web server moves to its new address
    new_port = free_port()
    doc["gpio"].pop("button")
    doc["web"] = {"listen": f"127.0.0.1:{new_port}"}
    status, body, _ = porch.request("PUT", "/api/config", doc)
    assert status == 200 and "web" in body["applied"]
    old_port, porch.port = porch.port, new_port
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if porch.request("GET", "/api/status")[0] == 200:
                break
        except OSError:
            time.sleep(0.1)
    assert porch.request("GET", "/api/status")[0] == 200
    porch.port = old_port
    with pytest.raises(OSError):
        porch.request("GET", "/api/status")
    porch.port = new_port
    assert porch.proc.pid == pid and porch.proc.poll() is None


def test_two_setups_at_once_set_the_password_once(porch):
    """First boot, two browsers: one setup wins, the other gets 409, the winner's password
    is the one stored."""
    passwords = ["first password 1", "second password 2"]
    with ThreadPoolExecutor(2) as pool:
        results = list(
            pool.map(
                lambda p: porch.request("POST", "/api/setup", {"password": p}, token=None),
                passwords,
            )
        )
    statuses = sorted(r[0] for r in results)
    assert statuses == [201, 409], results
    winner = passwords[[r[0] for r in results].index(201)]
    loser = passwords[1 - passwords.index(winner)]
    assert porch.request("POST", "/api/login", {"password": winner}, token=None)[0] == 200
    assert porch.request("POST", "/api/login", {"password": loser}, token=None)[0] == 401


def test_web_listen_that_cannot_be_bound_is_refused_and_not_saved(porch):
    porch.setup()
    before = porch.config_path.read_text() if porch.config_path.exists() else None
    _, doc, _ = porch.request("GET", "/api/config")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        in_use = f"127.0.0.1:{taken.getsockname()[1]}"
        for listen in ("192.0.2.77:8080", in_use):  # not this device's address; in use
            doc["web"] = {"listen": listen}
            status, body, _ = porch.request("PUT", "/api/config", doc)
            assert status == 422, body
            assert body["errors"][0].startswith(f"web.listen: cannot listen on {listen}"), body
    after = porch.config_path.read_text() if porch.config_path.exists() else None
    assert after == before
    assert porch.request("GET", "/api/status")[0] == 200


def test_api_call_without_targets_says_why(porch):
    porch.setup()
    status, body, _ = porch.request("POST", "/api/call")
    assert status == 409 and "call.targets is empty" in body["error"], body


def test_a_web_address_the_device_does_not_have_falls_back_to_the_default(tmp_path):
    """A static web.listen address the device lost (DHCP gave it another): the page comes
    up on the default address, same port, and says why."""
    port = free_port()
    porch = start_porch(tmp_path, {"web": {"listen": f"192.0.2.77:{port}"}}, port=port)
    try:
        porch.setup()
        fallback = porch.wait_event("web_listen_fallback")
        assert fallback["listen"] == f"127.0.0.1:{port}", fallback
        assert fallback["reason"].startswith(f"web.listen: cannot listen on 192.0.2.77:{port}")
    finally:
        assert porch.stop()[0] == 0
