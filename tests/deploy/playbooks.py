"""Running the real playbooks against booted containers, and reading what they say."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from onion.tor import TorOptions

from ..containers import Container

ROOT = Path(__file__).resolve().parent.parent.parent
ANSIBLE = ROOT / "ansible"
RECAP = re.compile(r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+"
                   r"unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)", re.MULTILINE)


@dataclass(frozen=True)
class Applied:
    playbook: str
    seconds: float
    output: str
    #: host -> (ok, changed, failed) from the PLAY RECAP.
    recap: dict[str, tuple[int, int, int]]

    def changed(self) -> dict[str, int]:
        return {host: counts[1] for host, counts in self.recap.items()}

    def changed_tasks(self) -> list[str]:
        """Names of the tasks that reported a change (for a readable failure)."""
        names, current = [], ""
        for line in self.output.splitlines():
            if line.startswith("TASK ["):
                current = line[6:line.rfind("]")]
            elif line.startswith("changed:"):
                names.append(current)
        return names


def inventory(groups: Mapping[str, Container], workdir: Path) -> Path:
    data = {"all": {"children": {
        group: {"hosts": {host.name: host.inventory_vars()}} for group, host in groups.items()}}}
    path = workdir / "inventory.json"
    path.write_text(json.dumps(data, indent=1))
    return path


def apply(playbook: str, groups: Mapping[str, Container], variables: Mapping[str, object],
          workdir: Path, *, timeout: float = 1500, check: bool = True) -> Applied:
    """``ansible-playbook`` as an admin runs it; the whole output goes to a log beside it."""
    inv = inventory(groups, workdir)
    extra = workdir / f"{playbook}.vars.json"
    extra.write_text(json.dumps(dict(variables)))
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_RETRY_FILES_ENABLED": "0",
           "ANSIBLE_LOCAL_TEMP": str(workdir / "ansible-local"), "ANSIBLE_PIPELINING": "0",
           "ANSIBLE_STDOUT_CALLBACK": "default", "ANSIBLE_DISPLAY_SKIPPED_HOSTS": "0",
           "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3"}
    started = time.monotonic()
    done = subprocess.run(["ansible-playbook", "-i", str(inv), str(ANSIBLE / playbook), "-e", f"@{extra}"],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=workdir,
                          check=False)
    seconds = time.monotonic() - started
    output = done.stdout + done.stderr
    count = len(list(workdir.glob(f"{playbook}.*.log")))
    (workdir / f"{playbook}.{count}.log").write_text(output)
    recap = {m["host"]: (int(m["ok"]), int(m["changed"]), int(m["failed"]) + int(m["unreachable"]))
             for m in RECAP.finditer(output)}
    if check and (done.returncode != 0 or any(c[2] for c in recap.values())):
        raise AssertionError(f"ansible-playbook {playbook} exited {done.returncode}:\n{output[-6000:]}")
    return Applied(playbook, seconds, output, recap)


def torrc_lines(options: TorOptions) -> list[str]:
    """tor options as the plain "Option value" lines of ``cpcp_torrc_include_lines``."""
    lines = []
    for key, value in options.items():
        for one in ([value] if isinstance(value, str) else value):
            lines.append(f"{key} {one}")
    return lines


AUTH_LINE = re.compile(r"^[a-z2-7]{56}:descriptor:x25519:[A-Z2-7]{52}$", re.MULTILINE)
ONION = re.compile(r"^(source|officer|ssh) onion: ([a-z2-7]{56}\.onion)", re.MULTILINE)
