"""The serial RFID/keypad reader on the event loop, through pyserial.

The port is read with ``loop.add_reader`` where it has a file descriptor (a
tty, a USB adapter) and polled otherwise (pyserial URLs such as
``rfc2217://``). A reader that is unplugged or missing is reopened every few
seconds; it never stops the firmware.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import serial

from porch.drivers.reader_protocol import KEY_IDLE, ReaderDecoder, ReaderEvent

log = logging.getLogger(__name__)

REOPEN_SECONDS = 3.0
POLL_SECONDS = 0.05


class SerialReader:
    """Cards and keys from a serial reader, delivered on the loop."""

    def __init__(
        self,
        url: str,
        baudrate: int,
        on_event: Callable[[ReaderEvent], None],
        *,
        reopen_seconds: float = REOPEN_SECONDS,
    ) -> None:
        self.url = url
        self.baudrate = baudrate
        self.on_event = on_event
        self.reopen_seconds = reopen_seconds
        self.connected = False
        self.last_error = ""
        self._port: serial.SerialBase | None = None
        self._decoder = ReaderDecoder()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd: int | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._poller: asyncio.Task[None] | None = None
        self._stopped = False

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = False
        self._open()

    async def stop(self) -> None:
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
        self._close()

    def _open(self) -> None:
        assert self._loop is not None
        try:
            port = serial.serial_for_url(self.url, baudrate=self.baudrate, timeout=0)
        except (serial.SerialException, OSError, ValueError) as exc:
            self._failed(f"cannot open {self.url}: {exc}")
            return
        self._port = port
        self._decoder = ReaderDecoder()
        try:
            self._fd = port.fileno()
        except (AttributeError, NotImplementedError, serial.SerialException, OSError):
            self._fd = None
        if self._fd is not None:
            self._loop.add_reader(self._fd, self._readable)
        else:
            self._poller = self._loop.create_task(self._poll_port())
        self.connected = True
        self.last_error = ""
        log.info("card reader open on %s", self.url)

    def _failed(self, reason: str) -> None:
        if reason != self.last_error:
            log.warning("card reader: %s; retrying every %.0f s", reason, self.reopen_seconds)
        self.last_error = reason
        self.connected = False
        self._close()
        if not self._stopped and self._loop is not None:
            self._timer = self._loop.call_later(self.reopen_seconds, self._open)

    def _close(self) -> None:
        if self._fd is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._fd = None
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None
        if self._port is not None:
            with contextlib.suppress(Exception):
                self._port.close()
            self._port = None

    def _readable(self) -> None:
        port = self._port
        if port is None:
            return
        try:
            data = port.read(max(1, port.in_waiting))
        except (serial.SerialException, OSError) as exc:
            self._failed(f"read failed on {self.url}: {exc}")
            return
        if not data and self._fd is not None:
            # readable but empty on a tty: the other side hung up (USB reader unplugged)
            self._failed(f"{self.url} closed")
            return
        self._deliver(self._decoder.feed(data, time.monotonic()))
        self._schedule_key_flush()

    async def _poll_port(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            self._readable()

    def _schedule_key_flush(self) -> None:
        if self._loop is not None:
            self._loop.call_later(KEY_IDLE + 0.01, self._flush)

    def _flush(self) -> None:
        self._deliver(self._decoder.poll(time.monotonic()))

    def _deliver(self, events: list[ReaderEvent]) -> None:
        for event in events:
            try:
                self.on_event(event)
            except Exception:  # a policy bug must not kill the reader
                log.exception("card reader event handler failed")
