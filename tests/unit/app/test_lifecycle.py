"""The firmware's parts start in order (door, reader, calls, web) and stop in reverse, the
relay released first; each step is watched by recording it on its way through, the real
parts doing the work."""

from __future__ import annotations

import asyncio
import functools
import json
import socket

import pytest
from porch_harness import free_port

from porch import config
from porch.app import App, _check_bindable
from porch.config import ConfigError
from porch.drivers.gpio import reset_default_factory


def recorded(app: App, log: list[str]) -> None:
    def wrap(owner, name: str, label: str) -> None:
        original = getattr(owner, name)
        if asyncio.iscoroutinefunction(original):

            @functools.wraps(original)
            async def step(*args, **kwargs):
                log.append(label)
                return await original(*args, **kwargs)

        else:

            @functools.wraps(original)
            def step(*args, **kwargs):
                log.append(label)
                return original(*args, **kwargs)

        setattr(owner, name, step)

    wrap(app, "_start_door", "start door")
    wrap(app, "_start_reader", "start reader")
    wrap(app, "_start_plan", "start calls")
    wrap(app, "_start_web", "start web")
    wrap(app.web, "stop", "stop web")
    wrap(app, "_stop_plan", "stop calls")
    wrap(app, "_stop_reader", "stop reader")
    wrap(app, "_close_door", "stop door")


def test_parts_start_in_order_and_stop_in_reverse(tmp_path):
    doc = {
        "web": {"listen": f"127.0.0.1:{free_port()}"},
        "sip": {"listen": f"127.0.0.1:{free_port()}"},
    }
    cfg = config.validate(doc, sim=True)
    steps: list[str] = []

    async def main():
        reset_default_factory()
        app = App(cfg, state_dir=tmp_path, config_path=None, sim=True)
        recorded(app, steps)
        await app.start()
        app.unlock("api")  # the relay is on when the stop begins
        assert app.door is not None and app.door.relay.active
        await app.stop()

    asyncio.run(main())
    assert steps == [
        "start door", "start reader", "start calls", "start web",
        "stop web", "stop calls", "stop reader", "stop door",
    ]  # fmt: skip
    pins = json.loads((tmp_path / "sim-pins.json").read_text())
    assert pins["relay_final"] is False and pins["relay_states"][-1][1] is False


def test_web_listen_probe_refuses_a_taken_port_unless_it_is_our_own():
    with socket.socket() as server:  # stands where the page already listens
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with pytest.raises(ConfigError) as refused:
            _check_bindable("127.0.0.1", port)
        assert refused.value.problems[0].startswith(
            f"web.listen: cannot listen on 127.0.0.1:{port}"
        )
        _check_bindable("127.0.0.1", port, ours=port)  # ours: released before the move
    with pytest.raises(ConfigError):
        _check_bindable("192.0.2.77", port, ours=port)  # not an address of this machine
