"""A private Tor network on 127.0.0.1 for end-to-end tests: our own code, no copied tooling.

Three directory authorities (keys from ``tor-gencert``, relay fingerprints from
``tor --list-fingerprint``) that are also relays and loopback-only exits, a few more relays, a
client tor with a SocksPort and the onion-service tor. Every node runs with
``TestingTorNetwork 1`` and fast voting, so the network bootstraps in well under a minute.

    with PrivateTorNetwork(tmp_dir) as net:
        net.client.socks_port(); net.service  # a TorControl for onion publication

It never touches the real Tor network: no default authorities or fallbacks, loopback addresses
only, exits that accept 127.0.0.0/8 and nothing else. On exit every tor is stopped and reaped
(they also die with this process: stem's take-ownership).
"""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from .errors import TorFailed
from .tor import CONTROL_PORT_FILE, LOOPBACK, SECONDS, Tor, TorOptions, known_options

log = logging.getLogger(__name__)

#: Fast consensus: a vote every 10 s (the first after 5 s); the interval must divide 30 minutes
#: and exceed vote delay + distribution delay.
AUTHORITY_TIMING: dict[str, str] = {
    "TestingV3AuthInitialVotingInterval": "5",
    "TestingV3AuthInitialVoteDelay": "2",
    "TestingV3AuthInitialDistDelay": "2",
    "V3AuthVotingInterval": "10",
    "V3AuthVoteDelay": "2",
    "V3AuthDistDelay": "2",
    "V3AuthNIntervalsValid": "3",
}

#: Flags voted regardless of uptime or bandwidth, so a minutes-old network has guards, exits
#: and HSDirs.
AUTHORITY_VOTES: dict[str, str] = {
    "AuthoritativeDirectory": "1",
    "V3AuthoritativeDirectory": "1",
    "TestingDirAuthVoteGuard": "*",
    "TestingDirAuthVoteExit": "*",
    "TestingDirAuthVoteHSDir": "*",
    "TestingMinExitFlagThreshold": "0",
    # Vote every relay Running without probing it first (tor >= 0.4.9 needs this besides
    # AssumeReachable).
    "AuthDirTestReachability": "0",
    "TestingAuthDirTimeToLearnReachability": "0",
}

def free_port(address: str = LOOPBACK) -> int:
    """A TCP port free on ``address`` (127.0.0.1 by default) right now."""
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Authority:
    nickname: str
    data_dir: Path
    or_port: int
    dir_port: int
    v3ident: str  # fingerprint of the authority identity key (tor-gencert)
    fingerprint: str  # relay identity fingerprint (tor --list-fingerprint)
    address: str = LOOPBACK

    @property
    def dir_authority_line(self) -> str:
        return (f"{self.nickname} orport={self.or_port} no-v2 v3ident={self.v3ident} "
                f"{self.address}:{self.dir_port} {self.fingerprint}")


@dataclass
class PrivateTorNetwork:
    """Context manager: start the network under ``root``, wait for client and service tors."""

    root: Path
    authorities: int = 3
    relays: int = 2
    tor_cmd: str = "tor"
    gencert_cmd: str = "tor-gencert"
    bootstrap_timeout: float = 120 * SECONDS
    #: Each tor logs at this level to ``<root>/<node>/<level>.log``.
    log_level: str = "notice"
    #: Where authorities and relays listen (ORPort, DirPort). 127.0.0.1 unless tors in other
    #: network namespaces (the deployment tests' containers) must reach them; control and SOCKS
    #: ports stay on 127.0.0.1 whatever this is.
    address: str = LOOPBACK
    #: Seconds from the first tor started to client and service at 100%, set by ``start``.
    bootstrap_seconds: float = 0.0
    _authorities: list[Authority] = field(default_factory=list)
    _tors: dict[str, Tor] = field(default_factory=dict)
    _pids: set[int] = field(default_factory=set)
    _known: frozenset[str] = frozenset()

    # --- the parts tests use ---------------------------------------------------------------

    @property
    def client(self) -> Tor:
        """The client tor (SOCKS on 127.0.0.1: ``client.socks_port()``)."""
        return self._tors["client"]

    @property
    def service(self) -> Tor:
        """The onion-service tor (no SOCKS, no ORPort), for onion publication."""
        return self._tors["service"]

    @property
    def socks_port(self) -> int:
        port = self.client.socks_port()
        if port is None:
            raise TorFailed("the client tor has no SOCKS port")
        return port

    @property
    def pids(self) -> frozenset[int]:
        """Every tor process this network started, running or not."""
        return frozenset(self._pids)

    def dir_authority_options(self) -> TorOptions:
        """What any tor needs to join this network (and only this network)."""
        return {
            "TestingTorNetwork": "1",
            "DirAuthority": [a.dir_authority_line for a in self._authorities],
            "UseDefaultFallbackDirs": "0",
            "ClientUseIPv6": "0",
            "PathsNeededToBuildCircuits": "0.67",
            "ShutdownWaitLength": "0",
        }

    def start_client(self, name: str, extra: TorOptions | None = None, *, wait: bool = True) -> Tor:
        """Another client tor with a SOCKS port (``extra`` e.g. ``ClientOnionAuthDir``)."""
        tor = self._launch(name, {"SocksPort": f"{LOOPBACK}:auto", **(extra or {})})
        if wait:
            tor.wait_bootstrapped(self.bootstrap_timeout)
        return tor

    def start_service(self, name: str = "service", *, wait: bool = True) -> Tor:
        """(Re)start the onion-service tor on its own data directory; onions are published later."""
        old = self._tors.pop(name, None)
        if old is not None:
            old.close()
        tor = self._launch(name, {"SocksPort": "0"})
        if wait:
            tor.wait_bootstrapped(self.bootstrap_timeout)
        return tor

    def stop_tor(self, name: str) -> None:
        """Stop one tor of the network (and reap it)."""
        self._tors.pop(name).close()

    # --- life cycle --------------------------------------------------------------------------

    def start(self) -> Self:
        """Generate keys, start every node, wait until client and service are bootstrapped."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not 1 <= self.authorities <= 9:
            raise TorFailed("a private network needs between 1 and 9 authorities")
        started = time.monotonic()
        self._known = known_options(self.tor_cmd)
        try:
            self._authorities = [self._make_authority(i) for i in range(self.authorities)]
            for auth in self._authorities:
                self._launch(auth.nickname, {
                    "Nickname": auth.nickname,
                    "Address": self.address,
                    "ORPort": f"{self.address}:{auth.or_port}",
                    "DirPort": f"{self.address}:{auth.dir_port}",
                    "AssumeReachable": "1",
                    "ContactInfo": f"{auth.nickname}@test.invalid",
                    "ExitRelay": "0",
                    "ExitPolicy": "reject *:*",
                    **AUTHORITY_VOTES, **AUTHORITY_TIMING,
                })
            # Each authority published its descriptor as it started, before the later ones
            # listened; a changed descriptor makes it publish again, now to all of them.
            for auth in self._authorities:
                self._tors[auth.nickname].set_options([("ContactInfo", f"{auth.nickname}+up@test.invalid")])
            for i in range(self.relays):
                nickname = f"relay{i}"
                self._launch(nickname, {
                    "Nickname": nickname,
                    "Address": self.address,
                    "ORPort": f"{self.address}:{free_port(self.address)}",
                    "AssumeReachable": "1",
                    "ContactInfo": f"{nickname}@test.invalid",
                    "ExitRelay": "0",
                    "ExitPolicy": "reject *:*",
                })
            self._wait_for_consensus(self.authorities + self.relays)
            self.start_client("client", wait=False)
            self.start_service("service", wait=False)
            self.client.wait_bootstrapped(self.bootstrap_timeout)
            self.service.wait_bootstrapped(self.bootstrap_timeout)
        except BaseException:
            self.stop()
            raise
        self.bootstrap_seconds = time.monotonic() - started
        log.info("private Tor network bootstrapped in %.1fs", self.bootstrap_seconds)
        return self

    def stop(self) -> None:
        """Stop every tor (idempotent); raise if one of them is still alive afterwards."""
        while self._tors:
            _, tor = self._tors.popitem()
            try:
                tor.close()
            except Exception:
                log.exception("stopping %s", tor.name)
        alive = sorted(pid for pid in self._pids if _alive(pid))
        if alive:
            raise TorFailed(f"tor processes still running after stop: {alive}")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # --- internals ---------------------------------------------------------------------------

    def _launch(self, name: str, options: TorOptions) -> Tor:
        if name in self._tors:
            raise TorFailed(f"{name} is already running")
        data_dir = self.root / name
        config: dict[str, str | Sequence[str]] = {
            "DataDirectory": str(data_dir),
            "ControlPort": f"{LOOPBACK}:auto",
            "ControlPortWriteToFile": str(data_dir / CONTROL_PORT_FILE),
            "CookieAuthentication": "1",
            "SocksPort": "0",
            "Log": [f"{self.log_level} file {data_dir / (self.log_level + '.log')}"],
            **self.dir_authority_options(),
            **options,
        }
        unknown = [key for key in config if key not in self._known]
        for key in unknown:  # e.g. AuthDirTestReachability before tor 0.4.9
            log.info("%s: this tor has no %s; left out", name, key)
            del config[key]
        tor = Tor.launch(data_dir=data_dir, options=config, tor_cmd=self.tor_cmd, name=name)
        self._tors[name] = tor
        if tor.pid is not None:
            self._pids.add(tor.pid)
        return tor

    def _wait_for_consensus(self, relays: int) -> None:
        """Wait until the authorities publish a consensus listing all ``relays``.

        Clients that bootstrap from a consensus with too few relays pick the same relay twice
        for a path and spend minutes retrying; starting them after this is quicker overall.
        """
        deadline = time.monotonic() + self.bootstrap_timeout
        authority = self._tors[self._authorities[0].nickname]
        while True:
            listed = authority.consensus_relays()
            if listed >= relays:
                return
            if time.monotonic() > deadline:
                raise TorFailed(f"consensus lists {listed} of {relays} relays after "
                                f"{self.bootstrap_timeout:.0f}s")
            time.sleep(0.5)

    def _make_authority(self, index: int) -> Authority:
        nickname = f"auth{index}"
        data_dir = self.root / nickname
        keys = data_dir / "keys"
        keys.mkdir(mode=0o700, parents=True, exist_ok=True)
        data_dir.chmod(0o700)
        or_port, dir_port = free_port(self.address), free_port(self.address)
        _run([self.gencert_cmd, "--create-identity-key", "--passphrase-fd", "0", "-m", "12",
              "-a", f"{self.address}:{dir_port}",
              "-i", str(keys / "authority_identity_key"),
              "-s", str(keys / "authority_signing_key"),
              "-c", str(keys / "authority_certificate")], stdin=b"\n")
        v3ident = ""
        for line in (keys / "authority_certificate").read_text(encoding="ascii").splitlines():
            if line.startswith("fingerprint "):
                v3ident = line.split()[1]
        printed = _run([self.tor_cmd, "--list-fingerprint", "--ignore-missing-torrc", "-f", "/dev/null",
                        "--DataDirectory", str(data_dir), "--ORPort", f"{self.address}:{or_port}",
                        "--Nickname", nickname, "--Log", "err stderr"])
        fingerprint = ""
        for line in printed.splitlines():
            parts = line.split()
            if parts and parts[0] == nickname:
                fingerprint = "".join(parts[1:])
        if len(v3ident) != 40 or len(fingerprint) != 40:
            raise TorFailed(f"{nickname}: could not read the authority's fingerprints")
        return Authority(nickname, data_dir, or_port, dir_port, v3ident, fingerprint, self.address)


def _run(args: list[str], stdin: bytes = b"") -> str:
    try:
        done = subprocess.run(args, input=stdin, capture_output=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise TorFailed(f"{args[0]} failed: {exc}") from exc
    return done.stdout.decode("utf-8", "replace")


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(") ", 1)[1].split()[0] != "Z"
