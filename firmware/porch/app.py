"""The firmware process: builds the parts from the config, runs them on one loop.

Parts start in order (event log, door hardware, intercom, call plan, web) and
stop in reverse. The relay is forced off on every way out. A changed config is
applied live: only the parts whose section changed are rebuilt.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import signal
import socket
import sys
import time
from argparse import Namespace
from pathlib import Path
from typing import Any

from porch import __version__, components, config
from porch.codes import CodeMatcher
from porch.config import Config, ConfigError
from porch.drivers.gpio import DoorIO, Pins
from porch.drivers.reader import SerialReader
from porch.drivers.reader_protocol import Card, Garbage, Key, ReaderEvent
from porch.events import EventLog
from porch.intercom import DoorPolicy, Intercom
from porch.provisioning.server import WebServer
from porch.service import Notifier, setup_logging
from porch.sip.ua import UserAgent

log = logging.getLogger("porch")

STOP_BUDGET = 2.5  # seconds: SIGTERM must end the process well within 3 s
SIM_PRESS_SECONDS = 0.15
SIM_PINS_FILE = "sim-pins.json"


def door_policy(cfg: Config) -> DoorPolicy:
    return DoorPolicy(
        targets=list(cfg.call.targets),
        strategy=cfg.call.strategy,
        ring_timeout=float(cfg.call.ring_timeout),
        button_hangup=cfg.call.button_hangup,
        unlock_seconds=float(cfg.door.unlock_seconds),
        info_unlock=cfg.door.info_unlock,
        cards=list(cfg.door.cards),
    )


def board_pins(cfg: Config) -> Pins:
    g = cfg.gpio
    return Pins(
        button=g.button,
        relay=g.relay,
        led_ready=g.led_ready,
        led_call=g.led_call,
        door_contact=g.door_contact,
        exit_button=g.exit_button,
        tamper=g.tamper,
        relay_active_high=g.relay_active_high,
        inputs_pull_up=g.inputs_pull_up,
        button_hold_seconds=float(g.button_hold_seconds),
    )


class App:
    """One door station: the parts, their order, and the API's view of them."""

    def __init__(
        self, cfg: Config, *, state_dir: Path, config_path: Path | None, sim: bool
    ) -> None:
        self.cfg = cfg
        self.state_dir = state_dir
        self.config_path = config_path
        self.sim = sim
        self.started_at = time.monotonic()
        self.events = EventLog(state_dir)
        self.intercom = Intercom(
            door_policy(cfg),
            CodeMatcher(
                list(cfg.door.dtmf_codes),
                lockout_attempts=cfg.door.lockout_attempts,
                lockout_seconds=float(cfg.door.lockout_seconds),
            ),
            self.events,
        )
        self.notifier = Notifier()
        self.door: DoorIO | None = None
        self.plan: UserAgent | None = None
        self.reader: SerialReader | None = None
        self.components: dict[str, str] = {}
        self.web = WebServer(self, state_dir)
        self.web_url = ""
        self._stopping = False
        self._config_lock = asyncio.Lock()
        self.intercom.on_change(self._status_changed)

    # lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.events.append("start", version=__version__, sim=self.sim)
        self._check_components()
        self._start_door(loop)
        await self._start_reader()
        await self._start_plan()
        await self._start_web()
        self.notifier.ready()
        self.notifier.start_watchdog()
        self._status_changed()

    def _check_components(self) -> None:
        self.components, missing = components.check()
        log.info("components: %s", ", ".join(f"{k} {v}" for k, v in self.components.items()))
        for dist, error in missing.items():
            log.error("component %s unusable: %s", dist, error)
            self.events.append("error", part=dist, reason=error)

    async def _start_reader(self) -> None:
        if self.cfg.serial.reader:
            self.reader = SerialReader(
                self.cfg.serial.reader, self.cfg.serial.baudrate, self._reader_event
            )
            await self.reader.start()

    async def _stop_reader(self) -> None:
        if self.reader is not None:
            await self.reader.stop()
            self.reader = None

    def _reader_event(self, event: ReaderEvent) -> None:
        if isinstance(event, Card):
            self.intercom.card(event.id)
        elif isinstance(event, Key):
            self.intercom.keypad(event.key)
        elif isinstance(event, Garbage):
            log.warning("card reader sent %r: %s", event.data[:32], event.reason)

    def _start_door(self, loop: asyncio.AbstractEventLoop) -> None:
        self.door = DoorIO(
            board_pins(self.cfg),
            loop,
            self.intercom.on_input,
            sim=self.sim,
            on_relay=self.intercom.relay_changed,
        )
        self.intercom.attach(self.door, self.plan)

    async def _start_plan(self) -> None:
        self.plan = UserAgent(
            self.cfg,
            self.intercom,
            state_dir=self.state_dir,
            sim=self.sim,
            get_config=lambda: self.cfg,
        )
        self.intercom.attach(self.door, self.plan)
        await self.plan.start()

    async def _start_web(self) -> None:
        host, port = self.cfg.web.listen_host, self.cfg.web.listen_port
        try:
            bound_host, bound_port = await self.web.start(host, port)
        except OSError as exc:
            problem = f"web.listen: cannot listen on {host}:{port}: {exc}"
            # An address the device no longer has (DHCP gave it another) must not lock the
            # installer out: the page comes up on the default address, same port.
            fallback = config.defaults(sim=self.sim).web.listen_host
            if fallback == host:
                raise StartupError(problem) from exc
            try:
                bound_host, bound_port = await self.web.start(fallback, port)
            except OSError:
                raise StartupError(problem) from exc
            log.error("%s; the page is on %s:%s instead", problem, fallback, port)
            self.events.append("web_listen_fallback", reason=problem, listen=f"{fallback}:{port}")
        shown = "127.0.0.1" if bound_host in ("0.0.0.0", "::") else bound_host
        shown = f"[{shown}]" if ":" in shown else shown
        self.web_url = f"http://{shown}:{bound_port}/"
        log.info("web page and API at %s", self.web_url)

    async def stop(self) -> None:
        """Hang up, stop the parts in reverse order; the relay ends off whatever fails."""
        if self._stopping:
            return
        self._stopping = True
        self.notifier.stopping()
        self.notifier.stop_watchdog()
        if self.door is not None:
            self.door.relay.release()
        steps = [
            ("web", self.web.stop()),
            ("calls", self._stop_plan()),
            ("reader", self._stop_reader()),
        ]
        for name, step in steps:
            try:
                await asyncio.wait_for(step, timeout=STOP_BUDGET / 2)
            except Exception as exc:  # stopping must go on to the relay
                log.warning("stopping %s: %s", name, exc)
        self._close_door()
        self.events.append("stop")

    async def _stop_plan(self) -> None:
        if self.plan is not None:
            self.plan.hang_up("shutdown")
            await self.plan.stop()

    def _close_door(self) -> None:
        if self.door is None:
            return
        if self.sim:
            self._write_sim_pins()
        self.door.close()
        self.door = None
        self.intercom.attach(None, self.plan)

    def _write_sim_pins(self) -> None:
        """Leave the mocked relay's history behind, for tests and for the curious."""
        assert self.door is not None
        self.door.relay.release()
        pin = self.door.sim_pin("relay")
        history = [[round(t, 4), bool(s)] for t, s in pin.states]
        doc = {"relay_states": history, "relay_final": bool(pin.state)}
        with contextlib.suppress(OSError):
            (self.state_dir / SIM_PINS_FILE).write_text(json.dumps(doc) + "\n")

    # status -------------------------------------------------------------------

    def _status_changed(self) -> None:
        s = self.intercom.status()
        self.notifier.status(
            f"registration {s['registration']}; call {s['call']}; door {s['door']}"
        )

    def status(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "name": self.cfg.device.name,
            **self.intercom.status(),
            "sim": self.sim,
            "reader": None
            if self.reader is None
            else {
                "connected": self.reader.connected,
                "error": self.reader.last_error,
            },
            "components": self.components,
            "uptime": round(time.monotonic() - self.started_at, 1),
        }

    # the API's view -----------------------------------------------------------

    def config_document(self) -> dict[str, Any]:
        return self.cfg.to_document()

    async def replace_config(self, document: dict[str, Any]) -> list[str]:
        """Validate, save atomically, then apply what changed; raises ConfigError."""
        async with self._config_lock:
            new = config.validate(document, sim=self.sim)
            web = new.web
            if (web.listen_host, web.listen_port) != (
                self.cfg.web.listen_host,
                self.cfg.web.listen_port,
            ):
                ours = self.web.bound[1] if self.web.bound is not None else None
                _check_bindable(web.listen_host, web.listen_port, ours)
            if self.config_path is not None:
                config.write(self.config_path, new)
            changed = sorted(config.changed_sections(self.cfg, new))
            self.cfg = new
            await self._apply(changed)
            self.events.append("config", changed=changed)
            log.info("config applied: %s", ", ".join(changed) or "no change")
            return changed

    async def _apply(self, changed: list[str]) -> None:
        loop = asyncio.get_running_loop()
        if "door" in changed or "call" in changed:
            self.intercom.policy = door_policy(self.cfg)
            self.intercom.matcher.set_codes(list(self.cfg.door.dtmf_codes))
            self.intercom.matcher.lockout_attempts = self.cfg.door.lockout_attempts
            self.intercom.matcher.lockout_seconds = float(self.cfg.door.lockout_seconds)
        if "gpio" in changed:
            self._close_door()
            self._start_door(loop)
        if "serial" in changed:
            await self._stop_reader()
            await self._start_reader()
        if "sip" in changed or "audio" in changed:
            await self._stop_plan()
            await self._start_plan()
        if "web" in changed:
            # Answer this request first, then move the server to its new address.
            loop.call_later(0.3, lambda: loop.create_task(self._restart_web()))

    async def _restart_web(self) -> None:
        old = self.web.bound
        await self.web.stop()
        try:
            await self._start_web()
        except StartupError as exc:  # taken since the check: stay reachable where we were
            log.error("%s", exc)
            self.events.append("error", part="web", reason=str(exc))
            if old is not None:
                with contextlib.suppress(OSError):
                    await self.web.start(*old)
                    log.warning("web page stays at %s", self.web_url)

    def request_call(self, source: str) -> bool:
        return self.intercom.start_call(source)

    def hang_up(self, reason: str) -> bool:
        return self.intercom.hang_up(reason)

    def unlock(self, cause: str) -> float:
        return self.intercom.unlock(cause)

    def events_since(self, seq: int, limit: int) -> list[dict[str, Any]]:
        return self.events.since(seq, limit)

    # simulation ---------------------------------------------------------------

    def _sim_door(self) -> DoorIO:
        if not self.sim or self.door is None:
            raise RuntimeError("simulation only")
        return self.door

    async def sim_button(self) -> None:
        door = self._sim_door()
        door.sim_drive("button", True)
        await asyncio.sleep(SIM_PRESS_SECONDS)
        door.sim_drive("button", False)
        await asyncio.sleep(0)  # let the loop take the edge events

    def sim_input(self, name: str, value: bool) -> None:
        self._sim_door().sim_drive(name, value)

    def sim_outputs(self) -> dict[str, Any]:
        return self._sim_door().outputs()

    def sim_card(self, card_id: str) -> bool:
        return self.intercom.card(card_id)


def _check_bindable(host: str, port: int, ours: int | None = None) -> None:
    """ConfigError naming web.listen when nothing could listen there (no such address on
    this device, a port in use): refused before it is saved, so the page stays reachable.
    A port in use by our own server (`ours`: moving from 0.0.0.0:80 to 10.0.0.5:80, say)
    is fine: it is released before the server moves."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE and port == ours:
            return
        raise ConfigError([f"web.listen: cannot listen on {host}:{port}: {exc.strerror}"]) from None


class StartupError(Exception):
    """A part could not start; the message names the config key to fix."""


def resolve_paths(args: Namespace) -> tuple[Path | None, Path]:
    """Config path and state dir from the command line (SPEC 3)."""
    state_dir = args.state_dir
    if state_dir is None:
        state_dir = Path(".porch-sim") if args.sim else Path("/var/lib/porch")
    config_path = args.config
    if config_path is None:
        if args.sim:
            config_path = state_dir / "porch.toml"
        else:
            config_path = Path("/etc/porch/porch.toml")
    return config_path, state_dir


async def serve(app: App) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        t0 = time.monotonic()
        await app.start()
        log.info(
            "porch %s ready in %.2f s%s: open %s",
            __version__,
            time.monotonic() - t0,
            " (simulation)" if app.sim else "",
            app.web_url,
        )
        await stop.wait()
        log.info("stopping")
    except StartupError as exc:
        log.error("%s", exc)
        return 2
    finally:
        try:
            await asyncio.wait_for(app.stop(), timeout=STOP_BUDGET)
        except (TimeoutError, Exception) as exc:
            log.error("stop did not finish cleanly: %s", exc)
            if app.door is not None:
                app.door.close()
    return 0


def run_from_cli(args: Namespace) -> int:
    setup_logging(logging.DEBUG if os.environ.get("PORCH_DEBUG") else logging.INFO)
    config_path, state_dir = resolve_paths(args)
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"porch: cannot create state dir {state_dir}: {exc}", file=sys.stderr)
        return 2
    try:
        if args.config is None and not config_path.exists():
            # First boot: no config yet. Start on defaults so the installer can reach
            # the web page; the first save writes the file.
            log.warning("no config at %s yet: running on defaults", config_path)
            cfg = config.defaults(sim=args.sim)
        else:
            cfg = config.load(config_path, sim=args.sim)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    app = App(cfg, state_dir=state_dir, config_path=config_path, sim=args.sim)
    return asyncio.run(serve(app))
