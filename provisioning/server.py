"""The provisioning web server and HTTP API (SPEC 5), on the firmware's event loop."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from porch.provisioning.auth import LoginThrottle, PasswordError, PasswordStore, Sessions

from porch.config import ConfigError

log = logging.getLogger(__name__)

COOKIE = "porch_session"
OPEN_PATHS = frozenset({"/api/setup", "/api/login"})
MAX_BODY = 64 * 1024
PASSWORD_MASK = "\u2022" * 8
SIM_INPUTS = ("button", "exit_button", "door_contact", "tamper")


class Controller(Protocol):
    """What the API needs from the running firmware (porch.app.App implements it)."""

    sim: bool

    def status(self) -> dict[str, Any]: ...

    def config_document(self) -> dict[str, Any]: ...

    async def replace_config(self, document: dict[str, Any]) -> list[str]: ...

    def request_call(self, source: str) -> bool: ...

    def hang_up(self, reason: str) -> bool: ...

    def unlock(self, cause: str) -> float: ...

    def events_since(self, seq: int, limit: int) -> list[dict[str, Any]]: ...

    async def sim_button(self) -> None: ...

    def sim_input(self, name: str, value: bool) -> None: ...

    def sim_outputs(self) -> dict[str, Any]: ...

    def sim_card(self, card_id: str) -> bool: ...


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


async def _json_body(request: web.Request) -> Any:
    """The request body as JSON, or a 400 that says what is wrong with it."""
    try:
        text = await request.text()
    except UnicodeDecodeError:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "body is not UTF-8"}), content_type="application/json"
        ) from None
    try:
        return json.loads(text) if text.strip() else {}
    except ValueError as exc:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"body is not valid JSON: {exc}"}),
            content_type="application/json",
        ) from None


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise web.HTTPUnprocessableEntity(
            text=json.dumps({"error": "body must be a JSON object"}),
            content_type="application/json",
        )
    return body


class WebServer:
    """Serves the page and the API; start/stop with the rest of the firmware."""

    def __init__(self, controller: Controller, state_dir: Path) -> None:
        self.controller = controller
        self.passwords = PasswordStore(state_dir)
        self.sessions = Sessions()
        self.throttle = LoginThrottle()
        self._setup_lock = asyncio.Lock()
        self._runner: web.AppRunner | None = None
        self.bound: tuple[str, int] | None = None
        self.app = self._build_app()

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth_middleware], client_max_size=MAX_BODY)
        r = app.router
        r.add_get("/", self.page)
        r.add_post("/api/setup", self.setup)
        r.add_post("/api/login", self.login)
        r.add_post("/api/logout", self.logout)
        r.add_get("/api/status", self.status)
        r.add_get("/api/config", self.get_config)
        r.add_put("/api/config", self.put_config)
        r.add_post("/api/call", self.call)
        r.add_post("/api/hangup", self.hangup)
        r.add_post("/api/door/unlock", self.door_unlock)
        r.add_get("/api/events", self.events)
        r.add_post("/api/sim/button", self.sim_button)
        r.add_post("/api/sim/input", self.sim_input)
        r.add_get("/api/sim/outputs", self.sim_outputs)
        r.add_post("/api/sim/card", self.sim_card)
        return app

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await site.start()
        sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
        bound = sockets[0].getsockname() if sockets else (host, port)
        self.bound = (bound[0], bound[1])
        return self.bound

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # authentication -----------------------------------------------------------

    def _token(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            return header[7:].strip()
        return request.cookies.get(COOKIE)

    @web.middleware
    async def _auth_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        path = request.path
        if path.startswith("/api/") and path not in OPEN_PATHS:
            if not self.sessions.valid(self._token(request)):
                hint = (
                    "" if self.passwords.is_set() else " (no admin password yet: POST /api/setup)"
                )
                return web.json_response(
                    {"error": f"authentication required{hint}"},
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="porch"'},
                )
        return await handler(request)

    def _with_session(self, status: int = 200) -> web.Response:
        token = self.sessions.issue()
        response = web.json_response({"token": token}, status=status)
        response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", path="/")
        return response

    async def setup(self, request: web.Request) -> web.Response:
        if self.passwords.is_set():
            return _error(409, "the admin password is already set; use /api/login")
        body = _object(await _json_body(request))
        async with self._setup_lock:  # two first-boot setups at once: only one sets it
            if self.passwords.is_set():
                return _error(409, "the admin password is already set; use /api/login")
            try:
                await asyncio.to_thread(self.passwords.set, body.get("password"))
            except PasswordError as exc:
                return _error(422, str(exc))
        log.info("admin password set")
        return self._with_session(201)

    async def login(self, request: web.Request) -> web.Response:
        address = request.remote or "?"
        wait = self.throttle.retry_after(address)
        if wait > 0:
            return web.json_response(
                {"error": "too many failed logins", "retry_after": round(wait, 1)},
                status=429,
                headers={"Retry-After": str(max(1, round(wait)))},
            )
        if not self.passwords.is_set():
            return _error(409, "no admin password yet: POST /api/setup first")
        body = _object(await _json_body(request))
        password = body.get("password")
        ok = isinstance(password, str) and await asyncio.to_thread(self.passwords.verify, password)
        if not ok:
            wait = self.throttle.failed(address)
            log.warning("failed admin login from %s; next attempt in %.0f s", address, wait)
            return _error(401, "wrong password", retry_after=wait)
        self.throttle.succeeded(address)
        return self._with_session()

    async def logout(self, request: web.Request) -> web.Response:
        response = web.json_response({"ok": True})
        response.del_cookie(COOKIE, path="/")
        return response

    # the page ---------------------------------------------------------------

    async def page(self, request: web.Request) -> web.Response:
        html = resources.files("porch.provisioning").joinpath("static/index.html").read_text()
        return web.Response(text=html, content_type="text/html")

    # API ----------------------------------------------------------------------

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self.controller.status())

    async def get_config(self, request: web.Request) -> web.Response:
        document = self.controller.config_document()
        sip = document.get("sip", {})
        if sip.get("password"):
            sip["password"] = PASSWORD_MASK
        return web.json_response(document)

    async def put_config(self, request: web.Request) -> web.Response:
        document = _object(await _json_body(request))
        sip = document.get("sip")
        if isinstance(sip, dict) and sip.get("password") == PASSWORD_MASK:
            current = self.controller.config_document().get("sip", {})
            sip["password"] = current.get("password", "")
        try:
            restarted = await self.controller.replace_config(document)
        except ConfigError as exc:
            return web.json_response({"errors": exc.problems}, status=422)
        return web.json_response({"ok": True, "applied": restarted})

    async def call(self, request: web.Request) -> web.Response:
        started = self.controller.request_call("api")
        status = self.controller.status()
        if not started:
            why = (
                "call.targets is empty: nothing to dial"
                if status["call"] == "idle"
                else f"cannot start a call while {status['call']}"
            )
            return _error(409, why, call=status["call"])
        return web.json_response({"ok": True, "call": status["call"]})

    async def hangup(self, request: web.Request) -> web.Response:
        ended = self.controller.hang_up("api")
        return web.json_response({"ok": ended, "call": self.controller.status()["call"]})

    async def door_unlock(self, request: web.Request) -> web.Response:
        seconds = self.controller.unlock("api")
        if seconds <= 0:
            return _error(503, "the door relay is not available")
        return web.json_response({"ok": True, "seconds": round(seconds, 2)})

    async def events(self, request: web.Request) -> web.Response:
        try:
            since = int(request.query.get("since", "0"))
            limit = int(request.query.get("limit", "200"))
        except ValueError:
            return _error(400, "since and limit must be integers")
        if since < 0 or not 1 <= limit <= 1000:
            return _error(400, "since must be >= 0 and limit 1..1000")
        return web.json_response({"events": self.controller.events_since(since, limit)})

    # simulation ---------------------------------------------------------------

    def _require_sim(self) -> None:
        if not self.controller.sim:
            raise web.HTTPNotFound(
                text=json.dumps({"error": "only in simulation (porch run --sim)"}),
                content_type="application/json",
            )

    async def sim_button(self, request: web.Request) -> web.Response:
        self._require_sim()
        await self.controller.sim_button()
        return web.json_response({"ok": True, "call": self.controller.status()["call"]})

    async def sim_input(self, request: web.Request) -> web.Response:
        self._require_sim()
        body = _object(await _json_body(request))
        name, value = body.get("name"), body.get("value")
        if name not in SIM_INPUTS:
            return _error(422, f"name: must be one of {', '.join(SIM_INPUTS)}")
        if not isinstance(value, bool):
            return _error(422, "value: must be true or false")
        try:
            self.controller.sim_input(name, value)
        except LookupError as exc:
            return _error(409, str(exc))
        return web.json_response({"ok": True})

    async def sim_outputs(self, request: web.Request) -> web.Response:
        self._require_sim()
        return web.json_response(self.controller.sim_outputs())

    async def sim_card(self, request: web.Request) -> web.Response:
        self._require_sim()
        body = _object(await _json_body(request))
        card_id = body.get("id")
        if isinstance(card_id, int) and not isinstance(card_id, bool):
            card_id = str(card_id)
        if not isinstance(card_id, str) or not card_id:
            return _error(422, "id: must be a non-empty string")
        accepted = self.controller.sim_card(card_id)
        return web.json_response({"ok": True, "accepted": accepted})
