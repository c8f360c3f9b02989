"""The one place that talks to tor, through stem: start a tor this deployment owns, or attach to
a running tor through its ControlPort with cookie authentication.

Everything else reaches tor through :class:`TorControl` (its one implementation is :class:`Tor`).
stem is synchronous and starts threads of its own: call this module from a thread or a command,
never bare in a view.

Threats answered here: tor listens on loopback only (a control port reachable from the network
would hand out the onion keys); a control port without authentication is refused, not used;
option values that could smuggle a second torrc line or break stem's quoting are refused.
"""

from __future__ import annotations

import logging
import queue
import re
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

import stem
import stem.connection
import stem.control
import stem.process
from stem.control import EventType

from .errors import TorFailed, TorNotRunning

log = logging.getLogger(__name__)
# stem logs every control-port exchange at DEBUG, and keeps its own logger at its lowest level so
# those reach any handler: keep it to warnings, so onion paths and descriptors stay out of logs.
logging.getLogger("stem").setLevel(logging.WARNING)

LOOPBACK = "127.0.0.1"
SECONDS = 1.0

#: torrc option name -> value, or values for an option given several times. Order is kept.
TorOptions = Mapping[str, str | Sequence[str]]
#: One line of a hidden service block: ("HiddenServicePort", "80 127.0.0.1:8080").
OptionLine = tuple[str, str]
#: HiddenServiceDir -> the lines that follow it, in order.
HiddenServiceConf = dict[str, list[OptionLine]]

#: Where an owned tor writes its control port ("PORT=127.0.0.1:NNNN"), inside its DataDirectory.
CONTROL_PORT_FILE = "control-port"

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_UNSAFE = re.compile(r'[\x00-\x1f"\\]')
_PROGRESS = re.compile(r"PROGRESS=(\d+)")
_SUMMARY = re.compile(r'SUMMARY="([^"]*)"')


def check_option(key: str, value: str) -> None:
    """Refuse an option that could add a torrc line or break stem's ``key="value"`` quoting."""
    if not _KEY.match(key):
        raise TorFailed(f"not a tor option name: {key!r}")
    if _UNSAFE.search(value) or value != value.strip():
        raise TorFailed(f"unsafe value for tor option {key}: {value!r}")


def option_lines(options: TorOptions) -> list[OptionLine]:
    """Flatten options into (key, value) lines, in order, each checked."""
    lines: list[OptionLine] = []
    for key, values in options.items():
        for value in [values] if isinstance(values, str) else values:
            check_option(key, value)
            lines.append((key, value))
    return lines


def render_torrc(options: TorOptions) -> str:
    """The torrc text for ``options``: one ``Key value`` line per value, in order."""
    return "".join(f"{key} {value}\n" for key, value in option_lines(options))


def server_options(
    data_dir: Path, *, socks_port: int | None = None, log_file: Path | None = None
) -> dict[str, str | list[str]]:
    """Options for a tor the deployment owns: it publishes onions and is a client of nothing.

    ControlPort on 127.0.0.1 (a free port, written to ``data_dir/control-port``) with cookie
    authentication, SOCKS off unless ``socks_port`` is given, notice logs to ``log_file``.
    """
    options: dict[str, str | list[str]] = {
        "DataDirectory": str(data_dir),
        "ControlPort": f"{LOOPBACK}:auto",
        "ControlPortWriteToFile": str(data_dir / CONTROL_PORT_FILE),
        "CookieAuthentication": "1",
        "SocksPort": f"{LOOPBACK}:{socks_port}" if socks_port else "0",
    }
    if log_file is not None:
        options["Log"] = [f"notice file {log_file}"]
    return options


def known_options(tor_cmd: str = "tor") -> frozenset[str]:
    """The torrc options a tor binary knows (``tor --list-torrc-options``), before starting it."""
    try:
        done = subprocess.run([tor_cmd, "--list-torrc-options"], capture_output=True, timeout=30,
                              check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise TorFailed(f"cannot run {tor_cmd}: {exc}") from exc
    return frozenset(line.split()[0] for line in done.stdout.decode().splitlines() if line.strip())


def read_control_port(data_dir: Path) -> int:
    """The control port an owned tor wrote into its DataDirectory; refuses non-loopback ones."""
    try:
        text = (data_dir / CONTROL_PORT_FILE).read_text(encoding="ascii").strip()
    except FileNotFoundError as exc:
        raise TorNotRunning(f"no {CONTROL_PORT_FILE} in {data_dir}: tor has not run here") from exc
    match = re.fullmatch(r"PORT=127\.0\.0\.1:(\d+)", text)
    if not match:
        raise TorNotRunning(f"{data_dir / CONTROL_PORT_FILE}: not a loopback control port: {text!r}")
    return int(match.group(1))


class UploadWatch(Protocol):
    """HS_DESC upload events collected from ``__enter__`` on (subscribe before a change)."""

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...

    def wait(self, addresses: set[str], timeout: float) -> None:
        """Block until a descriptor of each address (without ``.onion``) reached an HSDir."""


class TorControl(Protocol):
    """What CPCP needs from a tor. Every call blocks; all of them raise :class:`TorFailed`."""

    @property
    def version(self) -> str:
        """tor's version, e.g. ``0.4.8.13``."""

    def supports_option(self, name: str) -> bool:
        """Whether this tor knows the torrc option ``name`` (feature detection, not a version guess)."""

    def bootstrap_progress(self) -> tuple[int, str]:
        """Bootstrap percentage (100 when ready) and tor's summary of the current phase."""

    def wait_bootstrapped(self, timeout: float) -> float:
        """Block until bootstrap reaches 100%; return the seconds waited, or raise on timeout."""

    def socks_port(self) -> int | None:
        """The loopback SOCKS port, or None when tor has none."""

    def set_options(self, lines: Sequence[OptionLine]) -> None:
        """SETCONF the lines at once (several values of one key replace that key's values)."""

    def hidden_services(self) -> HiddenServiceConf:
        """Every hidden service block tor has, keyed by HiddenServiceDir."""

    def set_hidden_services(self, conf: Mapping[str, Sequence[OptionLine]]) -> None:
        """Replace *all* hidden service blocks with ``conf`` (tor treats them as one group)."""

    def descriptor_uploads(self) -> UploadWatch:
        """Start collecting HS_DESC upload events; use as a context manager around a change."""

    def close(self) -> None:
        """Let go of tor; a tor we own is stopped and waited for."""


class DescriptorUploads:
    """:class:`UploadWatch` on a stem controller."""

    def __init__(self, controller: Any) -> None:
        self._controller = controller
        self._events: queue.Queue[tuple[str, str, str]] = queue.Queue()
        self._uploaded: set[str] = set()
        self._failures: dict[str, str] = {}

    def _listener(self, event: Any) -> None:
        self._events.put((str(event.action), str(event.address), str(event.reason or "")))

    def __enter__(self) -> Self:
        self._controller.add_event_listener(self._listener, EventType.HS_DESC)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._controller.remove_event_listener(self._listener)
        except stem.ControllerError:
            pass  # tor went away; nothing left to unsubscribe from

    def wait(self, addresses: set[str], timeout: float) -> None:
        """Block until a descriptor of each address (without ``.onion``) reached an HSDir."""
        deadline = time.monotonic() + timeout
        while not addresses <= self._uploaded:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = sorted(addresses - self._uploaded)
                why = "; ".join(f"{a}: {self._failures[a]}" for a in missing if a in self._failures)
                raise TorFailed(f"onion descriptors not published after {timeout:.0f}s: "
                                f"{', '.join(missing)}{' (' + why + ')' if why else ''}")
            try:
                action, address, reason = self._events.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            if action == "UPLOADED":
                self._uploaded.add(address)
            elif action == "FAILED" and address in addresses:
                self._failures[address] = reason


class Tor:
    """A tor reached through its control port: one we launched (``owned``) or one we attached to.

    Build it with :meth:`launch` or :meth:`attach`; use it as a context manager or call
    :meth:`close`.
    """

    def __init__(self, controller: Any, process: subprocess.Popen[bytes] | None, *, name: str) -> None:
        self._controller = controller
        self._process = process
        self._options: frozenset[str] | None = None
        self.name = name

    # --- construction ------------------------------------------------------------------------

    @classmethod
    def launch(
        cls,
        *,
        data_dir: Path,
        options: TorOptions,
        tor_cmd: str = "tor",
        take_ownership: bool = True,
        name: str = "tor",
        timeout: float = 90 * SECONDS,
    ) -> Tor:
        """Start tor with ``options`` (which must set ``ControlPort 127.0.0.1:auto``,
        ``ControlPortWriteToFile`` inside ``data_dir`` and ``CookieAuthentication 1``, as
        :func:`server_options` does) and connect to it.

        Returns once tor runs and the controller is authenticated, before bootstrap; call
        :meth:`wait_bootstrapped`. With ``take_ownership`` tor exits when this process does, or
        when this controller disconnects, so a crash leaves no tor behind.
        """
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        data_dir.chmod(0o700)
        config: dict[str, str | list[str]] = {}
        for key, value in option_lines(options):
            previous = config.get(key)
            if previous is None:
                config[key] = value
            else:
                config[key] = [previous, value] if isinstance(previous, str) else [*previous, value]
        port_file = data_dir / CONTROL_PORT_FILE
        if config.get("ControlPortWriteToFile") != str(port_file):
            raise TorFailed(f"{name}: ControlPortWriteToFile must be {port_file}")
        port_file.unlink(missing_ok=True)
        said: list[str] = []
        # stem's start-up timeout is a SIGALRM, which only the main thread may set.
        in_main = threading.current_thread() is threading.main_thread()
        try:
            process = stem.process.launch_tor_with_config(
                config=config, tor_cmd=tor_cmd, completion_percent=0,
                timeout=timeout if in_main else None,
                take_ownership=take_ownership, init_msg_handler=said.append,
            )
        except OSError as exc:
            tail = "\n  ".join(said[-5:])
            raise TorFailed(f"{name}: tor did not start: {exc}\n  {tail}") from exc
        try:
            deadline = time.monotonic() + 10 * SECONDS
            while not port_file.exists():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise TorFailed(f"{name}: tor wrote no control port file")
                time.sleep(0.05)
            controller = _connect(port=read_control_port(data_dir), name=name)
        except BaseException:
            _stop(process)
            raise
        return cls(controller, process, name=name)

    @classmethod
    def attach(cls, *, control_port: int | None = None, control_socket: Path | None = None,
               name: str = "tor") -> Tor:
        """Attach to a running tor: a loopback ``control_port`` or a ``control_socket`` file.

        The control port must ask for cookie authentication; one open to anybody is refused.
        """
        if (control_port is None) == (control_socket is None):
            raise TorFailed("attach needs exactly one of control_port and control_socket")
        return cls(_connect(port=control_port, socket=control_socket, name=name), None, name=name)

    @classmethod
    def attach_data_dir(cls, data_dir: Path, *, name: str = "tor") -> Tor:
        """Attach to the tor running on ``data_dir`` (one :meth:`launch` started, maybe elsewhere)."""
        return cls.attach(control_port=read_control_port(data_dir), name=name)

    # --- TorControl ----------------------------------------------------------------------------

    @property
    def owned(self) -> bool:
        return self._process is not None

    @property
    def running(self) -> bool:
        """False once a tor we launched has exited (always True for an attached tor)."""
        return self._process is None or self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The tor process id when we launched it."""
        return None if self._process is None else self._process.pid

    @property
    def version(self) -> str:
        return str(self._call(self._controller.get_version).version_str)

    def supports_option(self, name: str) -> bool:
        if self._options is None:
            names = self._call(self._controller.get_info, "config/names")
            self._options = frozenset(line.split()[0] for line in names.splitlines() if line.strip())
        return name in self._options

    def bootstrap_progress(self) -> tuple[int, str]:
        phase = str(self._call(self._controller.get_info, "status/bootstrap-phase"))
        progress = _PROGRESS.search(phase)
        summary = _SUMMARY.search(phase)
        return (int(progress.group(1)) if progress else 0, summary.group(1) if summary else phase)

    def wait_bootstrapped(self, timeout: float) -> float:
        start = time.monotonic()
        while True:
            if self._process is not None and self._process.poll() is not None:
                raise TorFailed(f"{self.name}: tor exited with status {self._process.returncode}")
            progress, summary = self.bootstrap_progress()
            if progress >= 100:
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise TorFailed(f"{self.name}: bootstrap stuck at {progress}% ({summary}) "
                                f"after {timeout:.0f}s")
            time.sleep(0.2)

    def consensus_relays(self) -> int:
        """How many relays tor's current consensus lists (0 without a consensus)."""
        try:
            entries = self._controller.get_info("ns/all", "")
        except stem.ControllerError:
            return 0
        return sum(1 for line in str(entries).splitlines() if line.startswith("r "))

    def socks_port(self) -> int | None:
        listeners = self._call(self._controller.get_listeners, stem.control.Listener.SOCKS, [])
        for host, port in listeners:
            if host == LOOPBACK:
                return int(port)
        return None

    def set_options(self, lines: Sequence[OptionLine]) -> None:
        for key, value in lines:
            check_option(key, value)
        self._call(self._controller.set_options, list(lines))

    def hidden_services(self) -> HiddenServiceConf:
        response = self._call(self._controller.msg, "GETCONF HiddenServiceOptions")
        conf: HiddenServiceConf = {}
        current: list[OptionLine] | None = None
        for _code, _divider, content in response.content():
            key, sep, value = str(content).partition("=")
            if not sep:
                continue  # "HiddenServiceOptions": nothing configured
            if value.startswith('"') and value.endswith('"'):
                value = value[1:-1]
            if key == "HiddenServiceDir":
                current = conf.setdefault(value, [])
            elif current is not None:
                current.append((key, value))
        return conf

    def set_hidden_services(self, conf: Mapping[str, Sequence[OptionLine]]) -> None:
        if not conf:
            self._call(self._controller.reset_conf, "HiddenServiceDir")
            return
        lines: list[OptionLine] = []
        for directory, block in conf.items():
            lines.append(("HiddenServiceDir", directory))
            lines.extend(block)
        self.set_options(lines)

    def descriptor_uploads(self) -> DescriptorUploads:
        return DescriptorUploads(self._controller)

    def close(self) -> None:
        try:
            self._controller.close()
        finally:
            if self._process is not None:
                _stop(self._process)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- helpers ---------------------------------------------------------------------------------

    def _call(self, method: Any, *args: Any) -> Any:
        try:
            return method(*args)
        except stem.SocketClosed as exc:
            raise TorNotRunning(f"{self.name}: tor closed the control connection") from exc
        except stem.ControllerError as exc:
            raise TorFailed(f"{self.name}: tor refused: {exc}") from exc


def _connect(*, port: int | None = None, socket: Path | None = None, name: str) -> Any:
    """An authenticated stem Controller; refuses a control port that asks for no authentication."""
    try:
        if socket is not None:
            controller = stem.control.Controller.from_socket_file(str(socket))
        else:
            controller = stem.control.Controller.from_port(address=LOOPBACK, port=port)
    except stem.SocketError as exc:
        where = socket or f"{LOOPBACK}:{port}"
        raise TorNotRunning(f"{name}: no tor control port at {where}: {exc}") from exc
    try:
        # tor answers one PROTOCOLINFO per connection before authentication: reuse it.
        info = stem.connection.get_protocolinfo(controller)
        methods = set(info.auth_methods)
        if stem.connection.AuthMethod.NONE in methods:
            raise TorFailed(f"{name}: tor's control port asks for no authentication; "
                            "refusing to use it (set CookieAuthentication 1)")
        if not methods & {stem.connection.AuthMethod.COOKIE, stem.connection.AuthMethod.SAFECOOKIE}:
            raise TorFailed(f"{name}: tor's control port does not offer cookie authentication")
        controller.authenticate(protocolinfo_response=info)
    except TorFailed:
        controller.close()
        raise
    except (stem.ControllerError, stem.connection.AuthenticationFailure) as exc:
        controller.close()
        raise TorFailed(f"{name}: could not authenticate to tor's control port: {exc}") from exc
    return controller


def _stop(process: subprocess.Popen[bytes], timeout: float = 15 * SECONDS) -> None:
    """Stop a tor we started: SIGTERM (tor exits at once), then SIGKILL; always reap it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            stream.close()
