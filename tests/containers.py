"""Booted Debian 12 hosts for the deployment tests: systemd-nspawn containers, each in its own
network namespace, reached by ansible through community.docker's ``nsenter`` connection.

    with HostNetwork() as lan, Container("server", 1, lan, workdir) as server:
        server.run(["systemctl", "is-system-running"])

- The base root is made once with ``debootstrap --variant=minbase`` and cached under
  ``CPCP_TEST_ROOT_CACHE`` (default /var/cache/cpcp-test); each container boots a copy of it.
- ``HostNetwork`` gives every container a veth pair to the test host (10.213.N.2, gateway
  10.213.N.1), NAT to the host's default route (apt and PyPI), and a host address every container
  can reach, ``TOR_ADDRESS`` (on lo), where the private Tor network listens. Its nftables table
  and that address are the only host state it touches, and it removes both.
- The apt and pip caches are shared by the containers (bind mounts), so the second and third
  host download nothing.

Needs root, debootstrap, systemd-nspawn (systemd-container), nsenter, ip and nft.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

CACHE = Path(os.environ.get("CPCP_TEST_ROOT_CACHE", "/var/cache/cpcp-test"))
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# What a freshly installed Debian 12 server has that minbase lacks: systemd as init, D-Bus, the
# python3 ansible needs, sudo for ansible's become.
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "sudo")
SUBNET = "10.213"
TOR_ADDRESS = f"{SUBNET}.0.1"
NFT_TABLE = "cpcp_test_hosts"
BOOT_TIMEOUT = 120.0
FORWARDING = Path("/proc/sys/net/ipv4/ip_forward")
INOTIFY = Path("/proc/sys/fs/inotify/max_user_instances")
TOOLS = ("debootstrap", "systemd-nspawn", "nsenter", "ip", "nft", "ansible-playbook")


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def base_root() -> Path:
    """The cached minbase root (made on first use, ~70 s; later runs reuse it)."""
    name = f"{SUITE}-minbase-" + "-".join(BASE_PACKAGES)
    root = CACHE / name
    with _locked(CACHE / f"{name}.lock"):
        if (root / ".cpcp-complete").exists():
            return root
        partial = CACHE / f"{name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        _check(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                SUITE, str(partial), MIRROR], timeout=900)
        (partial / ".cpcp-complete").touch()
        shutil.rmtree(root, ignore_errors=True)
        partial.rename(root)
    return root


def _check(args: Sequence[str], *, timeout: float = 120, input: bytes | None = None) -> str:
    done = subprocess.run(list(args), input=input, capture_output=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {done.returncode}:\n"
                           f"{done.stdout.decode(errors='replace')}{done.stderr.decode(errors='replace')}")
    return done.stdout.decode()


def _default_interface() -> str:
    routes = json.loads(_check(["ip", "-j", "route", "show", "default"]))
    if not routes:
        raise RuntimeError("the test host has no default route: containers could not reach apt")
    return str(routes[0]["dev"])


@dataclass
class HostNetwork:
    """NAT for 10.213.0.0/16 and the address the private Tor network listens on."""

    _forwarding: str = ""
    _inotify: str = ""

    def __enter__(self) -> Self:
        self.close()  # what a killed earlier run left
        self._forwarding = FORWARDING.read_text().strip()
        # Every booted systemd takes inotify instances from root's limit (128 by default), and
        # so does every gpg-agent on the host; booting then fails with "Too many open files".
        self._inotify = INOTIFY.read_text().strip()
        if int(self._inotify) < 2048:
            INOTIFY.write_text("2048\n")
        # On lo: this kernel has no dummy interfaces; packets from the veths still arrive.
        _check(["ip", "addr", "add", f"{TOR_ADDRESS}/32", "dev", "lo"])
        rules = (f"table ip {NFT_TABLE} {{\n"
                 f"  chain post {{ type nat hook postrouting priority 100;\n"
                 f"    ip saddr {SUBNET}.0.0/16 oifname \"{_default_interface()}\" masquerade\n  }}\n"
                 f"}}\n")
        _check(["nft", "-f", "-"], input=rules.encode())
        FORWARDING.write_text("1\n")
        return self

    def close(self) -> None:
        subprocess.run(["nft", "delete", "table", "ip", NFT_TABLE], capture_output=True, check=False)
        subprocess.run(["ip", "addr", "del", f"{TOR_ADDRESS}/32", "dev", "lo"], capture_output=True, check=False)
        if self._forwarding:
            FORWARDING.write_text(self._forwarding + "\n")
        if self._inotify:
            INOTIFY.write_text(self._inotify + "\n")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


@dataclass
class Container:
    """One booted Debian host: ``index`` picks its subnet 10.213.<index>.0/24 (1..250)."""

    name: str
    index: int
    workdir: Path
    root: Path = field(init=False)
    netns: str = field(init=False)
    address: str = field(init=False)
    log: Path = field(init=False)
    _nspawn: subprocess.Popen[bytes] | None = None
    _pid: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.index <= 250:
            raise ValueError("container index must be 1..250")
        self.root = self.workdir / f"{self.name}-root"
        self.netns = f"cpcp-{self.name}"
        self.address = f"{SUBNET}.{self.index}.2"
        self.log = self.workdir / f"{self.name}-console.log"

    @property
    def pid(self) -> int:
        """The container's init (systemd), as the host sees it: ansible's ``nsenter_pid``."""
        if not self._pid:
            raise RuntimeError(f"{self.name} is not running")
        return self._pid

    # --- life cycle --------------------------------------------------------------------------

    def create(self, base: Path) -> None:
        """Copy ``base`` into this container's root (reflinks where the file system has them)."""
        shutil.rmtree(self.root, ignore_errors=True)
        _check(["cp", "-a", "--reflink=auto", str(base), str(self.root)], timeout=300)
        (self.root / ".cpcp-complete").unlink(missing_ok=True)
        (self.root / "etc/hostname").write_text(f"cpcp-{self.name}\n")
        # Debian's /etc/resolv.conf of the host is reachable through the NAT.
        (self.root / "etc/resolv.conf").unlink(missing_ok=True)
        shutil.copyfile("/etc/resolv.conf", self.root / "etc/resolv.conf")
        # pip inside trusts what pip on the test host trusts (a registry proxy's CA, say).
        bundle = Path(os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt")
        if bundle.is_file():
            shutil.copyfile(bundle, self.root / "etc/cpcp-test-ca.crt")
            (self.root / "etc/pip.conf").write_text("[global]\ncert = /etc/cpcp-test-ca.crt\n")

    def boot(self) -> None:
        self._make_netns()
        apt_cache = CACHE / "apt-archives"
        pip_cache = CACHE / "pip"
        (apt_cache / "partial").mkdir(parents=True, exist_ok=True)
        pip_cache.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as console:
            self._nspawn = subprocess.Popen(
                ["systemd-nspawn", "--register=no", "--keep-unit", "--quiet",
                 "-D", str(self.root), f"--machine=cpcp-{self.name}",
                 f"--network-namespace-path=/run/netns/{self.netns}",
                 "--console=passive", "--resolv-conf=off", "--timezone=off",
                 # nftables.service loads the host's firewall inside its own network namespace.
                 "--capability=CAP_NET_ADMIN",
                 f"--bind={apt_cache}:/var/cache/apt/archives",
                 f"--bind={pip_cache}:/root/.cache/pip",
                 "-b"],
                stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                start_new_session=True)
        deadline = time.monotonic() + BOOT_TIMEOUT
        while not self._pid:
            self._pid = self._find_init()
            if self._nspawn.poll() is not None:
                raise RuntimeError(f"{self.name}: systemd-nspawn exited {self._nspawn.returncode}; "
                                   f"see {self.log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: no init process after {BOOT_TIMEOUT:.0f}s")
            time.sleep(0.2)
        state = self.wait_running(deadline - time.monotonic())
        if state not in ("running", "degraded"):
            raise RuntimeError(f"{self.name}: systemd says {state!r} after boot")
        # Keep the .debs in the shared apt cache for the next container.
        self.run(["sh", "-c", ("echo 'APT::Keep-Downloaded-Packages \"true\";' "
                               "> /etc/apt/apt.conf.d/01cpcp-test-keep-debs")])

    def wait_running(self, timeout: float) -> str:
        """systemd's state once booting is over ("running", "degraded"), or the last answer."""
        deadline = time.monotonic() + timeout
        answer = ""
        while time.monotonic() < deadline:
            # Right after PID 1 appears its bus socket may not be there yet: ask again.
            done = self.run(["systemctl", "is-system-running", "--wait"], check=False,
                            timeout=max(deadline - time.monotonic(), 5))
            answer = done.stdout.strip() or done.stderr.strip()
            if answer in ("running", "degraded"):
                return answer
            time.sleep(0.5)
        return answer

    def stop(self) -> None:
        """Power the container off (SIGTERM to nspawn halts it cleanly), then drop its netns."""
        if self._nspawn is not None and self._nspawn.poll() is None:
            self._nspawn.send_signal(signal.SIGTERM)
            try:
                self._nspawn.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self._nspawn.pid, signal.SIGKILL)
                self._nspawn.wait(timeout=30)
        self._nspawn = None
        self._pid = 0
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, check=False)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        self.create(base_root())
        try:
            self.boot()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if os.environ.get("CPCP_TEST_KEEP_CONTAINERS") == "1":
            self.stop()
        else:
            self.remove()

    # --- inside ------------------------------------------------------------------------------

    def run(self, args: Sequence[str], *, check: bool = True, timeout: float = 120,
            input: bytes | None = None, user: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command inside the container (all of its namespaces), as root or ``user``."""
        inner = list(args)
        if user is not None:
            inner = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups",
                     "--reset-env", "--"] + inner
        done = subprocess.run(["nsenter", "-t", str(self.pid), "-a", "--"] + inner, input=input,
                              capture_output=True, timeout=timeout, check=False)
        result = subprocess.CompletedProcess(done.args, done.returncode,
                                             done.stdout.decode(errors="replace"),
                                             done.stderr.decode(errors="replace"))
        if check and done.returncode != 0:
            raise RuntimeError(f"{self.name}: {' '.join(inner)} exited {done.returncode}:\n"
                               f"{result.stdout}{result.stderr}")
        return result

    def path(self, inside: str) -> Path:
        """A path inside the container, as the host sees it."""
        return self.root / inside.lstrip("/")

    def inventory_vars(self) -> dict[str, object]:
        return {"ansible_connection": "community.docker.nsenter", "ansible_nsenter_pid": self.pid,
                "ansible_python_interpreter": "/usr/bin/python3"}

    # --- internals ---------------------------------------------------------------------------

    def _make_netns(self) -> None:
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, check=False)
        host_if, inner_if = f"cpv{self.index}h", f"cpv{self.index}c"
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, check=False)
        gateway = f"{SUBNET}.{self.index}.1"
        for args in (["ip", "netns", "add", self.netns],
                     ["ip", "link", "add", host_if, "type", "veth", "peer", "name", inner_if],
                     ["ip", "link", "set", inner_if, "netns", self.netns],
                     ["ip", "addr", "add", f"{gateway}/24", "dev", host_if],
                     ["ip", "link", "set", host_if, "up"],
                     ["ip", "-n", self.netns, "link", "set", "lo", "up"],
                     ["ip", "-n", self.netns, "addr", "add", f"{self.address}/24", "dev", inner_if],
                     ["ip", "-n", self.netns, "link", "set", inner_if, "up"],
                     ["ip", "-n", self.netns, "route", "add", "default", "via", gateway]):
            _check(args)

    def _find_init(self) -> int:
        """The descendant of nspawn that is PID 1 of its own PID namespace."""
        assert self._nspawn is not None
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            children.setdefault(int(fields["PPid"].strip()), []).append(int(entry.name))
            ns_pids = fields.get("NSpid", "").split()
            if len(ns_pids) >= 2 and ns_pids[-1] == "1" and fields["Name"].strip() == "systemd":
                children.setdefault(-1, []).append(int(entry.name))
        inits = set(children.get(-1, []))
        todo = [self._nspawn.pid]
        while todo:
            pid = todo.pop()
            if pid in inits:
                return pid
            todo.extend(children.get(pid, []))
        return 0
