"""The ansible playbooks, without ansible or a remote host.

Every playbook parses; every template renders (Jinja2 as ansible's template module sets it up)
with the playbook's own variables plus example values; and what renders is what the programs
accept: cpcp.toml through ``load_settings``, desk.toml through ``load_desk_settings``, the torrc
fragment through onion's parser. The systemd units start entry points of pyproject.toml from
the venv, leave the apps on loopback and start the onions after the apps; ``systemd-analyze
verify`` checks them where it exists, and ``systemd-analyze security`` keeps each server unit's
exposure at 2.0 or below. The firewall drops by default and ``nft -c`` accepts it. The preflight
is run for real: ``ansible-playbook`` against a host it must never reach, stopping before the
first remote task with a message naming what is missing.
"""

from __future__ import annotations

import configparser
import json
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
    # The loader: templates include others (app-sandbox.j2), found beside them as ansible does.
    env = kind(trim_blocks=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
               loader=jinja2.FileSystemLoader(ANSIBLE / "templates"))
    env.tests["match"] = lambda value, pattern: re.match(pattern, value) is not None
    return env


ENV = environment()
# Variables: "{{ a_list }}" stays a list, as ansible's templating of variables keeps types.
NATIVE = environment(jinja2.nativetypes.NativeEnvironment)


def load(playbook: str) -> list[dict[str, Any]]:
    plays: list[dict[str, Any]] = yaml.safe_load((ANSIBLE / playbook).read_text())
    return plays


INCLUDES = ("ansible.builtin.include_tasks", "ansible.builtin.import_tasks")


def tasks(play: dict[str, Any], imports: bool = True) -> Iterator[dict[str, Any]]:
    """Every task, in blocks and (with ``imports``) in the files of import_tasks/include_tasks."""
    for task in [*play.get("tasks", []), *play.get("handlers", [])]:
        if "block" in task:
            yield from tasks({"tasks": task["block"]}, imports)
            continue
        yield task
        included = next((task[key] for key in INCLUDES if key in task), None)
        if imports and included is not None:
            yield from tasks({"tasks": yaml.safe_load((ANSIBLE / included).read_text())}, imports)


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
    context = {"playbook_dir": str(ANSIBLE), **load(playbook)[0]["vars"], **extra}
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
        handlers = {h["name"] for h in play.get("handlers", [])} | {h["listen"] for h in play.get("handlers", [])
                                                                     if "listen" in h}
        for task in tasks(play):
            assert task.get("name"), task
            module(task)
            notify = task.get("notify", [])
            assert set([notify] if isinstance(notify, str) else notify) <= handlers, task["name"]


def test_both_playbooks_and_every_template_used(tmp_path: Path) -> None:
    assert {p.name for p in PLAYBOOKS} == {"server.yml", "workstation.yml", "backup.yml"}
    used = {*templates("server.yml", server_vars(tmp_path)),
            *templates("workstation.yml", workstation_vars(tmp_path))}
    included = {name for template in used
                for name in re.findall(r"{% include '([^']+)' %}", (ANSIBLE / "templates" / template).read_text())}
    assert used | included == {p.name for p in (ANSIBLE / "templates").iterdir()}


def asserts(playbook: str, context: dict[str, Any]) -> Iterator[bool]:
    # The play's own; those of tasks/preflight.yml need ansible: test_preflight_* run it.
    for task in tasks(load(playbook)[0], imports=False):
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
    assert settings.tor.data_dir == Path(context["cpcp_tor_data_dir"])
    assert settings.tor.ssh_port == 22
    assert settings.tor.ssh_clients_file == etc / "ssh-onion-clients"
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
    assert desk.time_zone == "Asia/Kolkata"  # cpcp_time_zone's default


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
    for name in ("cpcp-retention.service", "cpcp-retention.timer",  # see the next tests
                 "cpcp-alerts.service"):
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
            assert service["ProtectSystem"] == "strict"
            if name == "cpcp-onion.service":  # tor: its own user and folder, not the apps'
                assert service["User"] == "cpcp-tor"
                assert service["ReadWritePaths"] == "/var/lib/cpcp-tor"
                assert service["InaccessiblePaths"] == f"-{tmp_path / 'data'}"
            else:  # two users of one group; each app's unit hides the other's secrets too
                data = tmp_path / "data"
                theirs = {"cpcp-source.service": ("gateway-secrets.json", "gnupg-gateway"),
                          "cpcp-gateway.service": ("secrets.json", "gnupg")}[name]
                assert service["User"] == name.removesuffix(".service")
                assert service["Group"] == "cpcp-apps"
                assert service["ReadWritePaths"] == str(data)
                assert service["InaccessiblePaths"].split() == [
                    "-/var/lib/cpcp-tor", *(f"-{data / p}" for p in theirs)]
            assert service["Environment"] == f"CPCP_CONFIG={tmp_path / 'etc' / 'cpcp.toml'}"
        else:  # the desk: a user unit, run by the officer's own systemd
            assert dest.parent == Path("/etc/systemd/user")
            assert "User" not in service
            assert args == ["--config", "/etc/cpcp-desk/desk.toml"]
    onion = unit(found["cpcp-onion.service"][1])
    assert onion["Service"]["ExecStart"].split()[1:] == ["run"]
    after = onion["Unit"]["After"].split()
    assert {"cpcp-source.service", "cpcp-gateway.service"} <= set(after)


def test_retention_runs_daily_as_the_source_app_does(tmp_path: Path) -> None:
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
    # The same user, settings and hardening as the source app, line for line: the purge
    # deletes reply keys from the source app's keyring.
    source = unit(found["cpcp-source.service"][1])["Service"]
    for key in set(source) - {"ExecStart", "Restart"}:
        assert service[key] == source[key], key
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
    assert names.index("Initialise (secrets, schema, units, pinned keys) as each app's user; idempotent") < names.index(
        "Retention timer enabled and started")


def test_alerter_runs_as_its_own_user_without_the_data_folder(tmp_path: Path) -> None:
    dest, text = units(tmp_path)["cpcp-alerts.service"]
    assert dest == Path("/etc/systemd/system/cpcp-alerts.service")
    parsed = unit(text)
    service = parsed["Service"]
    assert service["ExecStart"].split() == ["/opt/cpcp/.venv/bin/cpcp-alerts"]
    assert "cpcp-alerts" in SCRIPTS
    assert (service["User"], service["Group"], service["SupplementaryGroups"]) == (
        "cpcp-alerts", "cpcp-alerts", "cpcp")
    # The sandbox's lists reset: nothing writable, the data folder (and tor's) unseen.
    assert service["ReadWritePaths"] == "" and service["InaccessiblePaths"] == f"-{tmp_path / 'data'}"
    assert "InaccessiblePaths=-/var/lib/cpcp-tor" in text
    assert service["Restart"] == "on-failure" and service["UMask"] == "0077"
    assert service["Environment"] == f"CPCP_CONFIG={tmp_path / 'etc' / 'cpcp.toml'}"
    # Installed, enabled and run only with cpcp_alerts, after init checked the URLs.
    names = [t["name"] for t in tasks(load("server.yml")[0])]
    assert names.index("Alerter running (alerts on)") > names.index(
        "Initialise (secrets, schema, units, pinned keys) as each app's user; idempotent")
    by_name = {t["name"]: t for t in tasks(load("server.yml")[0])}
    for name in ("System user for the alerter", "Alerter service", "Alerter running (alerts on)",
                 "Alerts need PostgreSQL (the alerter cannot open the data folder's SQLite file)"):
        assert by_name[name]["when"] == "cpcp_alerts"
    assert by_name["Alerter stopped (alerts off)"]["when"] == "not cpcp_alerts"
    check = by_name["Alerts need PostgreSQL (the alerter cannot open the data folder's SQLite file)"]
    that = check["ansible.builtin.assert"]["that"]
    assert not ENV.compile_expression(that)(**server_vars(tmp_path, cpcp_alerts=True))
    assert ENV.compile_expression(that)(**server_vars(
        tmp_path, cpcp_alerts=True, cpcp_database_url="postgresql+asyncpg://cpcp@127.0.0.1/cpcp"))


def test_tors_user_revokes_retired_officers_workstation_keys_after_init(tmp_path: Path) -> None:
    play = load("server.yml")[0]
    names = [task["name"] for task in tasks(play)]
    sync = next(task for task in tasks(play) if task["name"] == SYNC_TASK)
    name, command = module(sync)
    assert name == "ansible.builtin.command"
    context = server_vars(tmp_path)
    program, *args = render(command, context).split()
    assert program == "/opt/cpcp/current/.venv/bin/cpcp-onion" and Path(program).name in SCRIPTS
    assert args == ["--config", f"{tmp_path / 'etc'}/cpcp.toml", "sync-workstations"]
    assert build_parser().parse_args(args).command == "sync-workstations"  # a real subcommand
    # As tor's user, as the status is, the one who can write the onion's client keys.
    status = next(task for task in tasks(play) if task["name"] == "Onion status")
    assert (sync["become"], sync["become_user"]) == (True, status["become_user"]) == (True, "{{ cpcp_tor_user }}")
    assert ENV.compile_expression(sync["changed_when"])(
        cpcp_workstation_sync={"stdout": "revoked workstation desk-1 (officer x retired)"})
    assert not ENV.compile_expression(sync["changed_when"])(cpcp_workstation_sync={"stdout": ""})
    # After the init that retires in the database, and once cpcp-onion runs and has its keys.
    assert (names.index("Initialise (secrets, schema, units, pinned keys) as each app's user; idempotent")
            < names.index("Source app, gateway and onions running") < names.index("Restart what changed")
            < names.index("Onion status") < names.index(SYNC_TASK))


SYNC_TASK = "Retired officers' workstation keys revoked (as tor's user)"


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


#: `systemd-analyze security` calls <= 2.0 "OK"; the server units must stay there.
EXPOSURE_LIMIT = 2.0


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_server_units_sandboxed(tmp_path: Path) -> None:
    """The offline exposure score of each server unit, as rendered, is "OK" or better; the
    apps may reach loopback only, and none keeps a capability."""
    folder = tmp_path / "units"
    folder.mkdir()
    for name, (dest, text) in units(tmp_path).items():
        if dest.parent != Path("/etc/systemd/system") or dest.suffix != ".service":
            continue
        service = unit(text)["Service"]
        assert service["CapabilityBoundingSet"] == "" and service["AmbientCapabilities"] == ""
        assert service["UMask"] == "0077"
        assert service["ProtectSystem"] == "strict" and service["MemoryDenyWriteExecute"] == "true"
        if name == "cpcp-alerts.service":  # out to mail and HTTPS; the firewall narrows it
            assert (service["IPAddressDeny"], service["IPAddressAllow"]) == ("", "")
        elif name != "cpcp-onion.service":  # tor alone must reach the Tor network
            assert (service["IPAddressDeny"], service["IPAddressAllow"]) == ("any", "localhost")
        path = folder / name
        path.write_text(text)
        done = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                               str(path)], check=False, capture_output=True, text=True, timeout=30)
        found = re.search(rf"Overall exposure level for {re.escape(name)}: (\d+\.\d+)", done.stdout)
        assert found, done.stdout + done.stderr
        assert float(found[1]) <= EXPOSURE_LIMIT, done.stdout


# --- preflight: a real ansible-playbook run that stops before the first remote task ------------

TEST_KEYS = ROOT / "keys" / "test"
TEST_FPR = dict(line.split() for line in (TEST_KEYS / "FINGERPRINTS").read_text().splitlines()
                if line.strip())


def deployment_toml(*officers: str) -> str:
    entries = [f'[[officers]]\nhandle = "{who}"\nname = "{who}"\nfingerprint = "{TEST_FPR[who]}"\n'
               f'key_file = "{who}.asc"\n' for who in officers]
    return "\n".join(entries) + ('\n[[units]]\nslug = "ps-x"\nkind = "police_station"\n'
                                 'name_en = "X"\nname_hi = "X"\nofficers = ["officer-a"]\n')


def admin_vars() -> dict[str, Any]:
    public = generate_key_pair("laptop").public
    return {"cpcp_admin_ssh_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBexample admin@laptop"],
            "cpcp_admin_onion_clients": {"laptop": f"descriptor:x25519:{public}"}}


PREFLIGHT_CASES = {
    "all there": (deployment_toml("officer-a", "officer-b"), ["officer-a", "officer-b", "oversight"],
                  {}, None),
    "keys wrong or missing": (deployment_toml("officer-a", "officer-b"), ["officer-a"],
                              {"cpcp_oversight_key_file": "officer-a.asc"},
                              ["oversight key: ", "does not hold the key " + TEST_FPR["oversight"],
                               "officer officer-b: key file ", "officer-b.asc is missing"]),
    "no officer": ("", ["oversight"], {}, ["deployment.toml lists no officer"]),
    "no admin SSH keys": (deployment_toml("officer-a"), ["officer-a", "oversight"],
                          {"cpcp_admin_ssh_keys": []}, ["cpcp_admin_ssh_keys: "]),
    "bad admin onion key": (deployment_toml("officer-a"), ["officer-a", "oversight"],
                            {"cpcp_admin_onion_clients": {"laptop": "x25519:AAAA"}},
                            ["cpcp_admin_onion_clients: "]),
    "backup key not there": (deployment_toml("officer-a"), ["officer-a", "oversight"],
                             {"cpcp_backup_key_file": "backup.asc",
                              "cpcp_backup_fingerprint": TEST_FPR["custodian"]},
                             ["backup key: key file ", "backup.asc is missing"]),
}


@pytest.mark.skipif(shutil.which("ansible-playbook") is None, reason="no ansible-playbook here")
@pytest.mark.parametrize("case", list(PREFLIGHT_CASES))
def test_preflight_stops_before_any_change_naming_what_is_missing(tmp_path: Path, case: str) -> None:
    deployment, keys, extra, problems = PREFLIGHT_CASES[case]
    shutil.copytree(ANSIBLE, tmp_path / "ansible", ignore=shutil.ignore_patterns("files"))
    files = tmp_path / "ansible" / "files"
    (files / "keys").mkdir(parents=True)
    if deployment is not None:
        (files / "deployment.toml").write_text(deployment)
    for who in keys:
        shutil.copy(TEST_KEYS / f"{who}.pub.asc", files / "keys" / f"{who}.asc")
    # Port 1 on loopback: any task that reaches for the server fails at once, unreachable.
    (tmp_path / "inventory.ini").write_text(
        "[cpcp_server]\nserver ansible_host=127.0.0.1 ansible_port=1 ansible_user=nobody\n")
    variables = {"cpcp_oversight_fingerprint": TEST_FPR["oversight"], **admin_vars(), **extra}
    (tmp_path / "vars.json").write_text(json.dumps(variables))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"), "ANSIBLE_HOST_KEY_CHECKING": "False",
           "ANSIBLE_RETRY_FILES_ENABLED": "False"}
    done = subprocess.run(["ansible-playbook", "-i", "inventory.ini", "ansible/server.yml",
                           "-e", "@vars.json"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    out = done.stdout + done.stderr
    ran = re.findall(r"^TASK \[(.*?)\]", done.stdout, re.MULTILINE)
    preflight = [t for t in ran if t.startswith(("Fail early", "Preflight"))]
    if problems is None:
        # Every check passed; the first remote task was the first to reach for the server.
        assert len(preflight) == 6 and ran[len(preflight)] == "Debian packages", out
        assert re.search(r"unreachable=1\s+failed=0", out), out
    else:
        assert ran == preflight, out  # stopped inside the preflight: nothing was changed
        assert re.search(r"changed=0\s+unreachable=0\s+failed=1", out), out
        assert all(problem in out for problem in problems), out


# --- the firewall -------------------------------------------------------------------------------


def test_firewall_drops_by_default_and_lets_only_tor_and_apt_connect_out(tmp_path: Path) -> None:
    _, text = templates("server.yml", server_vars(tmp_path))["nftables.conf.j2"]
    chains = dict(re.findall(r"chain (\w+) \{(.*?)\n\t\}", text, re.DOTALL))
    assert set(chains) == {"input", "forward", "output"}
    for body in chains.values():
        assert "policy drop;" in body
    for chain, iface in (("input", "iif"), ("output", "oif")):
        rules = [line.strip() for line in chains[chain].splitlines()[2:]
                 if line.strip() and not line.strip().startswith("#")]
        assert rules[:2] == [f'{iface} "lo" accept', "ct state established,related accept"]
        assert rules[-1] == f"counter name dropped_{'in' if chain == 'input' else 'out'} drop"
        # Nothing else is let in or out wholesale: every other accept names what it is for.
        assert all(re.search(r"icmpv6 type|udp sport (67|68|546|547)|skuid", r)
                   for r in rules[2:-1]), rules
    (users,) = re.findall(r"ct state new meta skuid \{ (.*) \} accept", chains["output"])
    assert users == '"cpcp-tor", "_apt"'
    assert "skuid" not in chains["input"]


def test_firewall_lets_the_alerter_out_to_mail_and_https_only_when_alerts_are_on(
        tmp_path: Path) -> None:
    def output(**extra: Any) -> list[str]:
        _, text = templates("server.yml", server_vars(tmp_path, **extra))["nftables.conf.j2"]
        chains = dict(re.findall(r"chain (\w+) \{(.*?)\n\t\}", text, re.DOTALL))
        return [line.strip() for line in chains["output"].splitlines()
                if "cpcp-alerts" in line and not line.strip().startswith("#")]

    assert output() == []
    assert output(cpcp_alerts=True) == [
        'ct state new meta skuid "cpcp-alerts" tcp dport { 25, 465, 587, 443 } accept',
        'ct state new meta skuid "cpcp-alerts" meta l4proto { tcp, udp } th dport 53 accept']
    assert output(cpcp_alerts=True, cpcp_alerts_ports=[587])[0].endswith("tcp dport { 587 } accept")


@pytest.mark.skipif(shutil.which("nft") is None, reason="no nft here")
def test_firewall_rules_load(tmp_path: Path) -> None:
    """``nft -c`` (what the playbook's validate runs), with users this machine has."""
    context = server_vars(tmp_path, cpcp_tor_user="root", cpcp_firewall_output_users=["root"],
                          cpcp_alerts=True, cpcp_alerts_user="root")
    _, text = templates("server.yml", context)["nftables.conf.j2"]
    path = tmp_path / "nftables.conf"
    path.write_text(text)
    done = subprocess.run(["nft", "-c", "-f", str(path)], check=False, capture_output=True,
                          text=True, timeout=30)
    if "Operation not permitted" in done.stderr:
        pytest.skip("nft -c needs CAP_NET_ADMIN")
    assert done.returncode == 0, done.stderr
