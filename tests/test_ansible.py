"""The ansible playbooks, without ansible or a remote host.

Every playbook parses; every template renders (Jinja2 as ansible's template module sets it up)
with the playbook's own variables plus example values; and what renders is what the programs
accept: cpcp.toml through ``load_settings``, desk.toml through ``load_desk_settings``, the torrc
fragment through onion's parser. The systemd units start entry points of pyproject.toml from
the venv, leave the apps on loopback and start the onions after the apps; ``systemd-analyze
verify`` checks them where it exists.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jinja2
import jinja2.nativetypes
import pytest
import yaml  # type: ignore[import-untyped]

from cpcp.admin import main as admin_main
from cpcp.settings import load_settings
from journalist_app.desk.settings import load_desk_settings
from onion.cli import build_parser
from onion.clients import auth_private_line, generate_key_pair, workstation_instructions
from onion.deployment import parse_torrc_fragment

ROOT = Path(__file__).resolve().parent.parent
ANSIBLE = ROOT / "ansible"
PLAYBOOKS = sorted(ANSIBLE.glob("*.yml"))
SCRIPTS: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
LOOPBACK = ("127.0.0.1", "::1", "localhost")

FPR = "0123456789ABCDEF0123456789ABCDEF01234567"
OFFICER_ONION = "a" * 55 + "d.onion"
AUTH_PRIVATE = auth_private_line(OFFICER_ONION, generate_key_pair("desk-1").private)
BRIDGES = ["UseBridges 1", "ClientTransportPlugin obfs4 exec /usr/bin/obfs4proxy",
           "Bridge obfs4 192.0.2.1:443 0123456789ABCDEF0123456789ABCDEF01234567 cert=x iat-mode=0"]


def environment(kind: type[jinja2.Environment] = jinja2.Environment) -> jinja2.Environment:
    # The template module's defaults (trim_blocks on); undefined variables fail, as in ansible.
    env = kind(trim_blocks=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.tests["match"] = lambda value, pattern: re.match(pattern, value) is not None
    return env


ENV = environment()
# Variables: "{{ a_list }}" stays a list, as ansible's templating of variables keeps types.
NATIVE = environment(jinja2.nativetypes.NativeEnvironment)


def load(playbook: str) -> list[dict[str, Any]]:
    plays: list[dict[str, Any]] = yaml.safe_load((ANSIBLE / playbook).read_text())
    return plays


def tasks(play: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for task in [*play.get("tasks", []), *play.get("handlers", [])]:
        if "block" in task:
            yield from tasks({"tasks": task["block"]})
            continue
        yield task
        if "ansible.builtin.import_tasks" in task:  # a tasks file, relative to the playbook
            imported = yaml.safe_load((ANSIBLE / task["ansible.builtin.import_tasks"]).read_text())
            yield from tasks({"tasks": imported})


def module(task: dict[str, Any]) -> tuple[str, Any]:
    found = [(key, value) for key, value in task.items() if key.startswith("ansible.")]
    assert len(found) == 1, f"task {task.get('name')!r}: one FQCN module expected"
    return found[0]


def render(text: str, context: dict[str, Any]) -> str:
    return ENV.from_string(text).render(context)


def resolve(value: Any, context: dict[str, Any]) -> Any:
    if isinstance(value, str) and "{{" in value:
        return NATIVE.from_string(value).render(context)
    if isinstance(value, list):
        return [resolve(item, context) for item in value]
    return value


def play_vars(playbook: str, **extra: Any) -> dict[str, Any]:
    """The play's vars, overridden by ``extra`` (as -e or set_fact would), templates resolved."""
    context = {**load(playbook)[0]["vars"], **extra}
    for _ in range(5):  # vars may refer to vars that refer to vars
        context = {key: resolve(value, context) for key, value in context.items()}
    return context


def templates(playbook: str, context: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Template file name -> (rendered dest, rendered text), for every template task."""
    out: dict[str, tuple[str, str]] = {}
    for task in tasks(load(playbook)[0]):
        name, args = module(task)
        if name != "ansible.builtin.template":
            continue
        for item in resolve(task.get("loop", [None]), context):
            ctx = {**context, "item": item}
            src = render(args["src"], ctx)
            text = render((ANSIBLE / src).read_text(), ctx)
            out[Path(src).name] = (render(args["dest"], ctx), text)
    return out


def server_vars(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return play_vars("server.yml", **{"cpcp_oversight_fingerprint": FPR,
                                      "cpcp_etc": str(tmp_path / "etc"),
                                      "cpcp_data_dir": str(tmp_path / "data"), **extra})


def workstation_vars(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    # cpcp_officer_home: what the playbook's set_fact takes from the officer's passwd entry.
    return play_vars("workstation.yml", **{"cpcp_officer_auth_private": AUTH_PRIVATE,
                                           "cpcp_officer_home": str(tmp_path / "home"), **extra})


def unit(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


# --- playbooks --------------------------------------------------------------------------------


@pytest.mark.parametrize("playbook", [p.name for p in PLAYBOOKS])
def test_playbook_structure(playbook: str) -> None:
    inventory = (ANSIBLE / "inventory.example.ini").read_text()
    for play in load(playbook):
        assert f"[{play['hosts']}]" in inventory
        handlers = {h["name"] for h in play.get("handlers", [])}
        for task in tasks(play):
            assert task.get("name"), task
            module(task)
            notify = task.get("notify", [])
            assert set([notify] if isinstance(notify, str) else notify) <= handlers, task["name"]


def test_both_playbooks_and_every_template_used(tmp_path: Path) -> None:
    assert {p.name for p in PLAYBOOKS} == {"server.yml", "workstation.yml"}
    used = {*templates("server.yml", server_vars(tmp_path)),
            *templates("workstation.yml", workstation_vars(tmp_path))}
    assert used == {p.name for p in (ANSIBLE / "templates").iterdir()}


def asserts(playbook: str, context: dict[str, Any]) -> Iterator[bool]:
    for task in tasks(load(playbook)[0]):
        name, args = module(task)
        if name == "ansible.builtin.assert":
            that = args["that"]
            for condition in [that] if isinstance(that, str) else that:
                yield bool(ENV.compile_expression(condition)(**context))


def test_asserts_take_the_real_values_and_refuse_wrong_ones(tmp_path: Path) -> None:
    assert all(asserts("server.yml", server_vars(tmp_path)))
    assert all(asserts("workstation.yml", workstation_vars(tmp_path)))
    assert not all(asserts("server.yml", server_vars(tmp_path, cpcp_oversight_fingerprint="AB")))
    # The whole add-client output pasted instead of its one auth_private line.
    pasted = workstation_instructions(OFFICER_ONION, generate_key_pair("desk-2"))
    assert not all(asserts("workstation.yml",
                           workstation_vars(tmp_path, cpcp_officer_auth_private=pasted)))


# --- what the server gets ---------------------------------------------------------------------


@pytest.mark.parametrize(("lines", "database_url"), [
    ([], ""), (BRIDGES, "postgresql+asyncpg://cpcp@127.0.0.1/cpcp"),
])
def test_server_settings_load(tmp_path: Path, lines: list[str], database_url: str) -> None:
    context = server_vars(tmp_path, cpcp_torrc_include_lines=lines, cpcp_database_url=database_url)
    rendered = templates("server.yml", context)
    etc = tmp_path / "etc"
    etc.mkdir()
    for name in ("cpcp.toml.j2", "cpcp-torrc-include.j2"):
        dest, text = rendered[name]
        if lines or name == "cpcp.toml.j2":  # the playbook writes the fragment only with lines
            Path(dest).write_text(text)
    settings = load_settings(etc / "cpcp.toml", env={})
    assert (settings.source.host, settings.source.port) == ("127.0.0.1", context["cpcp_source_port"])
    assert (settings.gateway.host, settings.gateway.port) == ("127.0.0.1",
                                                              context["cpcp_gateway_port"])
    assert settings.data_dir == tmp_path / "data"
    assert settings.keys_dir == etc / "keys"
    assert settings.deployment_file == etc / "deployment.toml"
    assert settings.oversight_fingerprint == FPR
    assert settings.database_url == (database_url or
                                     f"sqlite+aiosqlite:///{tmp_path / 'data' / 'cpcp.sqlite'}")
    if lines:
        assert settings.tor.torrc_include == etc / "torrc-include"
        known = frozenset(line.split()[0] for line in BRIDGES)
        parsed = parse_torrc_fragment(settings.tor.torrc_include.read_text(), where="include",
                                      known=known)
        assert [f"{key} {value}" for key, value in parsed] == BRIDGES
    else:
        assert settings.tor.torrc_include is None


# --- what the workstation gets ----------------------------------------------------------------


def test_desk_settings_load(tmp_path: Path) -> None:
    context = workstation_vars(tmp_path)
    home = tmp_path / "home"
    _, text = templates("workstation.yml", context)["desk.toml.j2"]
    path = tmp_path / "desk.toml"
    path.write_text(text)
    desk = load_desk_settings(path, env={})
    assert desk.gateway_url == f"http://{OFFICER_ONION}/"  # taken from the auth_private line
    assert desk.socks_proxy == "socks5h://127.0.0.1:9050"
    assert desk.gnupg_home == home / ".gnupg"
    assert desk.data_dir == home / ".local" / "share" / "cpcp-desk"
    assert desk.export_dir == home / "cpcp-exports"
    assert (desk.host, desk.port) == ("127.0.0.1", 8090)


def test_workstation_tor_gets_what_add_client_prints(tmp_path: Path) -> None:
    context = workstation_vars(tmp_path)
    auth_dir = build_parser().parse_args(["add-client", "x"]).auth_dir
    printed = workstation_instructions(OFFICER_ONION, generate_key_pair("desk-1"), auth_dir)
    _, torrc = templates("workstation.yml", context)["workstation-torrc.j2"]
    assert f"ClientOnionAuthDir {auth_dir}" in torrc.splitlines()
    assert f"ClientOnionAuthDir {auth_dir}" in printed.splitlines()
    assert not re.search(r"^\s*SocksPort", torrc, re.MULTILINE)  # Debian's 127.0.0.1:9050 stays
    copies = [args for task in tasks(load("workstation.yml")[0])
              for name, args in [module(task)] if name == "ansible.builtin.copy"]
    (key_file,) = [render(a["dest"], context) for a in copies if "auth_private" in a["dest"]]
    assert f"Save the next line, alone, as {key_file}" in printed
    bridged = workstation_vars(tmp_path, cpcp_workstation_torrc_lines=BRIDGES)
    _, torrc = templates("workstation.yml", bridged)["workstation-torrc.j2"]
    assert torrc.splitlines()[-3:] == BRIDGES


# --- systemd units ----------------------------------------------------------------------------


def units(tmp_path: Path, repo: str = "/opt/cpcp") -> dict[str, tuple[Path, str]]:
    """Unit name -> (installed path, rendered text), from both playbooks: services and timers."""
    out: dict[str, tuple[Path, str]] = {}
    for rendered in (templates("server.yml", server_vars(tmp_path, cpcp_repo_dir=repo)),
                     templates("workstation.yml", workstation_vars(tmp_path, cpcp_repo_dir=repo))):
        for dest, text in rendered.values():
            if dest.endswith((".service", ".timer")):
                out[Path(dest).name] = (Path(dest), text)
    return out


def test_units_start_entry_points_on_loopback_in_order(tmp_path: Path) -> None:
    found = units(tmp_path)
    for name in ("cpcp-retention.service", "cpcp-retention.timer"):  # see the next test
        found.pop(name)
    assert set(found) == {"cpcp-source.service", "cpcp-gateway.service", "cpcp-onion.service",
                          "cpcp-desk.service"}
    for name, (dest, text) in found.items():
        service = unit(text)["Service"]
        program, *args = service["ExecStart"].split()
        assert program == f"/opt/cpcp/.venv/bin/{name.removesuffix('.service')}"
        assert Path(program).name in SCRIPTS
        assert service["Restart"] == "on-failure"
        assert service["NoNewPrivileges"] == "true"
        # Where they listen comes from the settings checked above, never from the unit.
        assert not any(a.startswith(("--host", "--bind", "--port")) for a in args)
        assert not re.search(r"HOST|PORT|BIND", service.get("Environment", ""),
                             re.IGNORECASE)
        if dest.parent == Path("/etc/systemd/system"):
            assert service["User"] == "cpcp"
            assert service["ProtectSystem"] == "strict"
            assert service["ReadWritePaths"] == str(tmp_path / "data")
            assert service["Environment"] == f"CPCP_CONFIG={tmp_path / 'etc' / 'cpcp.toml'}"
        else:  # the desk: a user unit, run by the officer's own systemd
            assert dest.parent == Path("/etc/systemd/user")
            assert "User" not in service
            assert args == ["--config", "/etc/cpcp-desk/desk.toml"]
    onion = unit(found["cpcp-onion.service"][1])
    assert onion["Service"]["ExecStart"].split()[1:] == ["run"]
    after = onion["Unit"]["After"].split()
    assert {"cpcp-source.service", "cpcp-gateway.service"} <= set(after)


def test_retention_runs_daily_as_the_apps_do(tmp_path: Path) -> None:
    found = units(tmp_path)
    dest, text = found["cpcp-retention.service"]
    service = unit(text)["Service"]
    assert dest == Path("/etc/systemd/system/cpcp-retention.service")
    assert service["Type"] == "oneshot"
    assert service["ExecStart"].split() == ["/opt/cpcp/.venv/bin/cpcp-admin", "retention"]
    assert "cpcp-admin" in SCRIPTS
    with pytest.raises(SystemExit) as shown:  # a subcommand cpcp-admin knows
        admin_main(["retention", "--help"])
    assert shown.value.code == 0
    # The same user, settings and hardening as the gateway, line for line.
    gateway = unit(found["cpcp-gateway.service"][1])["Service"]
    for key in set(gateway) - {"ExecStart", "Restart"}:
        assert service[key] == gateway[key], key
    assert "Restart" not in service and "Install" not in unit(text)  # the timer starts it
    timer_dest, timer_text = found["cpcp-retention.timer"]
    timer = unit(timer_text)
    assert timer_dest == Path("/etc/systemd/system/cpcp-retention.timer")
    assert timer["Timer"]["OnCalendar"] == "*-*-* 03:00:00"
    assert timer["Timer"]["RandomizedDelaySec"] == "1h"
    assert timer["Timer"]["Persistent"] == "true"
    assert timer["Install"]["WantedBy"] == "timers.target"
    later = templates("server.yml", server_vars(tmp_path, cpcp_retention_on_calendar="*-*-* 04:30:00"))
    assert unit(later["cpcp-retention.timer.j2"][1])["Timer"]["OnCalendar"] == "*-*-* 04:30:00"
    # The timer is enabled and started, after the init that loads (and checks) the policy.
    names = [task["name"] for task in tasks(load("server.yml")[0])]
    enable = next(task for task in tasks(load("server.yml")[0])
                  if task["name"] == "Retention timer enabled and started")
    assert module(enable) == ("ansible.builtin.systemd", {
        "name": "cpcp-retention.timer", "enabled": True, "daemon_reload": True,
        "state": "{{ 'restarted' if cpcp_retention_timer.changed else 'started' }}"})
    assert names.index("Initialise (secrets, schema, units, pinned keys); idempotent") < names.index(
        "Retention timer enabled and started")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    folder = tmp_path / "units"
    folder.mkdir()
    # This checkout's venv, so that the ExecStart programs exist.
    for name, (_, text) in units(tmp_path, repo=str(ROOT)).items():
        (folder / name).write_text(text)
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", *sorted(folder.iterdir())],
                          check=False, capture_output=True, text=True, timeout=30)
    problems = [line for line in done.stderr.splitlines() if str(folder) in line]
    assert done.returncode == 0 and not problems, done.stderr
