"""Admission of TLS connections to the federation server: who may talk, how long, how often.

Every connection the server accepts goes through one ``Gate`` before it reaches the coordinator:

- **rate limit**: at most ``deploy.connect_rate`` connections per certificate identity (or per
  address when the peer shows none) in any ``deploy.connect_window`` seconds; a peer over it is
  refused before its hello is read;
- **the hello** (``tls.accept``): revoked certificates (the federation CRL, re-read whenever the
  file changes, so a revocation takes effect at the revoked client's next connection without a
  restart, and a member already connected under a certificate the new list revokes is cut off;
  a CRL that fails verification refuses every connection until it is fixed) and
  certificates of the CA that are not on the roster are refused before a byte is read; a member's hello is held
  to 4 KiB, to ``deploy.hello_timeout`` seconds and to ``codec.MAX_JSON_DEPTH`` levels of JSON;
- **keepalive**: TCP keepalive on every admitted socket, so a peer that vanished without a FIN is
  noticed between rounds (``deploy.keepalive``);
- **shutdown**: every connection task is tracked; ``close()`` cancels those still in their hello
  (or serving) and awaits them, so a server stopping with half-open connections prints no
  traceback.

Each refusal is logged with its reason through the ``log`` callable and kept in ``refusals``.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ..crypto.certs import load_revoked
from ..errors import ConfigError, RemoteProtocolError
from ..protocols.tls import Connection, accept, peer_identity, peer_serial

__all__ = ["Gate", "RateLimiter", "set_keepalive"]

_MAX_KEPT_REFUSALS = 1000


class RateLimiter:
    """At most ``limit`` events per key in any ``window`` seconds (a sliding window per key)."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1 or window <= 0:
            raise ConfigError(f"a rate limit needs limit >= 1 and window > 0, got {limit} per {window}")
        self.limit, self.window, self._clock = limit, window, clock
        self._seen: dict[str, deque[float]] = {}

    def allow(self, key: str) -> bool:
        now = self._clock()
        if len(self._seen) > 4096:  # forget keys that went quiet, so strangers cannot grow the table
            self._seen = {k: q for k, q in self._seen.items() if q and q[-1] > now - self.window}
        times = self._seen.setdefault(key, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) >= self.limit:
            return False
        times.append(now)
        return True


def set_keepalive(writer: asyncio.StreamWriter, idle: float) -> None:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        seconds = max(1, int(idle))
        for name, value in (("TCP_KEEPIDLE", seconds), ("TCP_KEEPINTVL", max(1, seconds // 3)), ("TCP_KEEPCNT", 3)):
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    except OSError:
        pass  # a socket that is already gone: the read loop will see it


class Gate:
    """See the module docstring. ``handler(serve)`` is the ``asyncio.start_server`` callback that
    admits a connection and hands the authenticated ``Connection`` to ``serve``."""

    def __init__(self, *, federation_id: str, allowed: set[str] | frozenset[str], max_size: int,
                 read_timeout: float, hello_timeout: float, connect_rate: int, connect_window: float,
                 keepalive: float, revoked: frozenset[int] = frozenset(), crl: Path | None = None,
                 ca: Path | None = None, log: Callable[[str], None] = print,
                 on_refusal: Callable[[str], None] | None = None) -> None:
        self.federation_id = federation_id
        self.allowed = frozenset(allowed)
        self.revoked = revoked
        self.max_size = max_size
        self.read_timeout = read_timeout
        self.hello_timeout = hello_timeout
        self.keepalive = keepalive
        self.rate = RateLimiter(connect_rate, connect_window)
        self.log = log
        self.on_refusal = on_refusal
        self.refusals: deque[str] = deque(maxlen=_MAX_KEPT_REFUSALS)
        self._tasks: set[asyncio.Task] = set()
        self._admitted: dict[asyncio.StreamWriter, tuple[str, int]] = {}  # live member: (identity, serial)
        self._closing = False
        if crl is not None and ca is None:
            raise ConfigError("a CRL is checked against the federation CA: pass ca")
        self._crl, self._ca = crl, ca
        self._crl_stamp: tuple[int, int] | None = None
        self._crl_error: str | None = None
        self._static_revoked = revoked

    def refresh_crl(self) -> None:
        """Re-read the CRL when its file changed (size or mtime)."""
        if self._crl is None:
            return
        try:
            st = self._crl.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp == self._crl_stamp:
            return
        self._crl_stamp = stamp
        if stamp is None:
            self.revoked, self._crl_error = self._static_revoked, None
            return
        try:
            self.revoked = self._static_revoked | load_revoked(self._crl, self._ca)
            self._crl_error = None
            self.log(f"revocation list {self._crl}: {len(self.revoked)} certificate(s) revoked")
        except ConfigError as exc:
            self._crl_error = str(exc)
            return
        for writer, (identity, serial) in list(self._admitted.items()):
            if serial in self.revoked:  # its connection is closed; the server sees the peer lost
                reason = f"{identity}'s certificate (serial {serial:x}) was revoked while it was connected"
                self.refusals.append(reason)
                if self.on_refusal is not None:
                    self.on_refusal(reason)
                self.log(f"cut off {identity}: {reason}")
                self._admitted.pop(writer, None)
                writer.close()

    def _refused(self, reason: str) -> None:
        self.refusals.append(reason)
        if self.on_refusal is not None:
            self.on_refusal(reason)
        self.log(f"refused a connection: {reason[:300]}")

    async def admit(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Connection | None:
        """The authenticated member's connection, or None (refused, logged, closed)."""
        try:
            key = peer_identity(writer.get_extra_info("ssl_object"))
        except RemoteProtocolError:
            key = str((writer.get_extra_info("peername") or ("?",))[0])
        if not self.rate.allow(key):
            self._refused(f"{key}: more than {self.rate.limit} connections in {self.rate.window:g} s")
            writer.close()
            return None
        self.refresh_crl()
        if self._crl_error is not None:  # fail closed: no admission against a list that does not verify
            self._refused(f"{key}: the server's revocation list is unusable ({self._crl_error})")
            writer.close()
            return None
        try:
            conn = await accept(reader, writer, federation_id=self.federation_id, allowed=self.allowed,
                                max_size=self.max_size, timeout=self.read_timeout,
                                hello_timeout=self.hello_timeout, revoked=self.revoked)
        except (RemoteProtocolError, ConnectionError, ssl.SSLError, OSError) as exc:
            self._refused(str(exc))
            writer.close()
            return None
        set_keepalive(writer, self.keepalive)
        self._admitted[writer] = (conn.identity, peer_serial(writer.get_extra_info("ssl_object")))
        return conn

    def handler(self, serve: Callable[[Connection], Awaitable[Any]]
                ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            if self._closing or task is None:
                writer.close()
                return
            self._tasks.add(task)
            try:
                conn = await self.admit(reader, writer)
                if conn is not None:
                    await serve(conn)
            except asyncio.CancelledError:
                # Shutdown (``close``): end quietly. Re-raising would make asyncio's stream callback
                # print a traceback per connection still in its hello.
                writer.close()
            finally:
                self._tasks.discard(task)
                self._admitted.pop(writer, None)

        return on_connection

    @property
    def pending(self) -> int:
        """Connections in their hello or being served."""
        return len(self._tasks)

    async def close(self) -> None:
        """Refuse new connections, cancel the open ones and wait until they have ended."""
        self._closing = True
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
