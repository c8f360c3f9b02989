"""Content-free alerts and overdue reminders, against real receivers started here: an SMTP
server (aiosmtpd) and an HTTP endpoint (Quart on Hypercorn, loopback) that Apprise posts JSON
to. Tips go in through the real source app; the alerter runs on an injected clock."""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import json
import random
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from hypercorn.asyncio import serve
from hypercorn.config import Config
from quart import Quart, request
from sqlalchemy import func, select, update

from cpcp.admin import deploy, init_deployment
from cpcp.alertconfig import load_alert_config
from cpcp.alerts import Alerter, new_tips_text, overdue_text
from cpcp.errors import ConfigError
from cpcp.models import AuditEntry, Case, Officer
from cpcp.services import CoreServices, build_core
from cpcp.settings import load_settings

from .conftest import FPR, Deployment, gpg_encrypt, write_deployment
from .helpers import codename_of, csrf, multipart
from .servers import free_port

SADAR = ("Sadar Bazar Police Station", "थाना सदर बाजार")
SECRET_WORDS = ("सफेद गाड़ी", "UP27", "रेलवे स्टेशन", "criminal_activity", "information")


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.arrived: list[float] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(msg, email.message.EmailMessage)
        self.messages.append(msg)
        self.arrived.append(time.monotonic())
        return "250 OK"

    def texts(self) -> list[str]:
        out = []
        for msg in self.messages:
            body = msg.get_body(("plain",))
            assert body is not None
            out.append(" ".join(str(body.get_content()).split()))  # type: ignore[attr-defined]
        return out


@dataclass
class Hook:
    """What Apprise's json:// posted, by path; ``fail`` paths answer 500 that many times."""

    posts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    fail: dict[str, int] = field(default_factory=dict)
    port: int = 0

    def url(self, path: str) -> str:
        return f"json://127.0.0.1:{self.port}/{path}"

    def messages(self, path: str) -> list[str]:
        return [" ".join(p["message"].split()) for p in self.posts.get(path, [])]


def one_line(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    found = Hook(port=free_port())
    app = Quart("hook")

    @app.post("/<path>")
    async def receive(path: str) -> tuple[str, int]:
        if found.fail.get(path, 0) > 0:
            found.fail[path] -= 1
            return "down", 500
        found.posts.setdefault(path, []).append(json.loads(await request.get_data(as_text=True)))
        return "ok", 200

    config = Config()
    config.bind = [f"127.0.0.1:{found.port}"]
    config.accesslog = None
    stop = asyncio.Event()
    task = asyncio.create_task(serve(app, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
    for _ in range(100):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", found.port)
            writer.close()
            break
        except OSError:
            await asyncio.sleep(0.05)
    yield found
    stop.set()
    await task


def alert_lines(root: Path, *, mail_port: int, hook: Hook, targets: str = "", delays: str = "",
                cyber: str = "") -> None:
    """Alerts for Sadar Bazar (mail and JSON), head officer-a (JSON), the oversight (JSON)."""
    path = root / "deployment.toml"
    text = path.read_text(encoding="utf-8")
    mail = f"mailto://127.0.0.1:{mail_port}?from=cpcp@test.invalid&to=sho@test.invalid"
    text = text.replace('key_file = "officer-a.asc"\n',
                        f'key_file = "officer-a.asc"\nalerts = ["{hook.url("head")}"]\n')
    text = text.replace('name_hi = "थाना सदर बाजार"\nofficers = ["officer-a"]\n',
                        f'name_hi = "थाना सदर बाजार"\nofficers = ["officer-a"]\n'
                        f'alerts = ["{mail}", "{hook.url("sadar")}"]\nhead = "officer-a"\n')
    text = text.replace('name_hi = "साइबर सेल"\nofficers = ["officer-b"]\n',
                        f'name_hi = "साइबर सेल"\nofficers = ["officer-b"]\n{cyber}')
    text += f'\n[oversight]\nalerts = ["{hook.url("oversight")}"]\n'
    text += "\n[alerts]\n" + (delays or "min_delay = 10\nmax_delay = 20") + "\n"
    if targets:
        text += f"\n[targets]\n{targets}\n"
    path.write_text(text, encoding="utf-8")


@dataclass
class Setup:
    deployment: Deployment
    core: CoreServices
    app: Quart


@pytest.fixture
async def setup(tmp_path: Path, database_url: str, mailbox: tuple[Mailbox, int],
                hook: Hook) -> AsyncIterator[Setup]:
    from source_app import create_app

    config = write_deployment(tmp_path, database_url)
    alert_lines(tmp_path, mail_port=mailbox[1], hook=hook,
                targets='default = "24h"\ninformation = "2h"\n"information.women_safety" = "1h"')
    settings = load_settings(config, env={})
    await asyncio.to_thread(init_deployment, settings)
    core = build_core(settings)
    app = create_app(settings, core=core)
    async with app.test_app():
        yield Setup(Deployment(root=tmp_path, config=config, settings=settings), core, app)
    await core.close()


async def submit_tip(app: Quart, unit: str, kind: str = "information",
                     category: str = "criminal_activity") -> None:
    """A new source's first tip, through the source app's pages."""
    client = app.test_client()
    page = await (await client.get("/generate")).get_data(as_text=True)
    codename_of(page)
    r = await client.post("/create", form={"csrf_token": csrf(page)})
    assert r.status_code == 303
    html = await (await client.get("/submit")).get_data(as_text=True)
    body, ctype = multipart([("csrf_token", csrf(html)), ("unit", unit), ("kind", kind),
                             ("category", category), ("place", "रेलवे स्टेशन के पास"),
                             ("text", "सफेद गाड़ी UP27 AB 1234")])
    r = await client.post("/submit", data=body, headers={"Content-Type": ctype})
    assert r.status_code == 303, await r.get_data(as_text=True)


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


def alerter(s: Setup, clock: Clock, **kwargs: Any) -> Alerter:
    settings = s.deployment.settings
    assert settings.deployment_file is not None
    return Alerter(sessions=s.core.sessions, audit=s.core.audit,
                   config=load_alert_config(settings.deployment_file), clock=clock,
                   rng=random.Random(7), **kwargs)


async def audit_of(core: CoreServices, action: str) -> list[dict[str, Any]]:
    async with core.sessions() as db:
        rows = (await db.scalars(select(AuditEntry).where(AuditEntry.action == action)
                                 .order_by(AuditEntry.id))).all()
    return [json.loads(r.details) for r in rows]


def assert_content_free(texts: list[str], core_words: tuple[str, ...] = SECRET_WORDS) -> None:
    for text in texts:
        for word in core_words:
            assert word not in text


async def test_three_tips_in_one_window_are_one_content_free_alert(
        setup: Setup, mailbox: tuple[Mailbox, int], hook: Hook) -> None:
    box, _ = mailbox
    clock = Clock()
    first = alerter(setup, clock)
    await first.run_once()  # the cursors start here
    for _ in range(3):
        await submit_tip(setup.app, "ps-sadar-bazar")
    await submit_tip(setup.app, "cell-cyber")  # a unit without alerts
    await first.run_once()
    clock.advance(seconds=9.9)  # before min_delay: nothing yet
    await first.run_once()
    assert box.messages == [] and hook.posts == {}
    clock.advance(seconds=10.2)  # past max_delay
    await first.run_once()
    expected = one_line(new_tips_text(3, *SADAR))
    assert expected == "3 new tips for Sadar Bazar Police Station थाना सदर बाजार के लिए 3 नई सूचनाएँ"
    assert box.texts() == [expected]
    assert str(box.messages[0]["Subject"]) == "CPCP"
    assert hook.messages("sadar") == [expected] and hook.posts["sadar"][0]["title"] == "CPCP"
    assert set(hook.posts) == {"sadar"}  # nothing for the cyber cell, the head or the oversight
    async with setup.core.sessions() as db:
        public_ids = (await db.scalars(select(Case.public_id))).all()
    raw = [m.as_string() for m in box.messages] + [json.dumps(p) for p in hook.posts["sadar"]]
    assert_content_free(raw, (*SECRET_WORDS, *public_ids, "http"))
    assert [(e["unit"], e["tips"]) for e in await audit_of(setup.core, "alert_new_tips")] == [
        ("ps-sadar-bazar", 3)]

    # A restart repeats nothing; the next tip is its own alert, in the singular.
    clock.advance(minutes=5)
    second = alerter(setup, clock)
    await second.run_once()
    clock.advance(minutes=5)
    await second.run_once()
    assert len(box.messages) == 1 and len(hook.posts["sadar"]) == 1
    await submit_tip(setup.app, "ps-sadar-bazar")
    await second.run_once()
    clock.advance(seconds=21)
    await second.run_once()
    assert box.texts()[1] == "1 new tip for Sadar Bazar Police Station थाना सदर बाजार के लिए 1 नई सूचना"
    assert len(hook.posts["sadar"]) == 2
    assert (await setup.core.audit.verify()).ok


async def test_a_failed_delivery_is_retried_and_holds_back_no_other_unit(
        tmp_path: Path, database_url: str, mailbox: tuple[Mailbox, int], hook: Hook) -> None:
    from source_app import create_app

    config = write_deployment(tmp_path, database_url)
    alert_lines(tmp_path, mail_port=mailbox[1], hook=hook,
                cyber=f'alerts = ["{hook.url("cyber")}"]\n')
    hook.fail["cyber"] = 2
    settings = load_settings(config, env={})
    await asyncio.to_thread(init_deployment, settings)
    core = build_core(settings)
    app = create_app(settings, core=core)
    try:
        async with app.test_app():
            s = Setup(Deployment(root=tmp_path, config=config, settings=settings), core, app)
            clock = Clock()
            alerts = alerter(s, clock, retry_seconds=30)
            await alerts.run_once()
            await submit_tip(app, "ps-sadar-bazar")
            await submit_tip(app, "cell-cyber")
            await alerts.run_once()
            clock.advance(seconds=21)
            await alerts.run_once()  # cyber fails (500); sadar goes out all the same
            assert hook.messages("sadar") == [one_line(new_tips_text(1, *SADAR))]
            assert "cyber" not in hook.posts
            clock.advance(seconds=29)
            await alerts.run_once()  # back-off: 30 s, not yet
            clock.advance(seconds=2)
            await alerts.run_once()  # second failure; next in 60 s
            clock.advance(seconds=61)
            await alerts.run_once()
            assert hook.messages("cyber") == ["1 new tip for Cyber Cell साइबर सेल के लिए 1 नई सूचना"]
            assert len(hook.posts["sadar"]) == 1 and hook.fail["cyber"] == 0
            assert [e["unit"] for e in await audit_of(core, "alert_new_tips")] == [
                "ps-sadar-bazar", "cell-cyber"]
    finally:
        await core.close()


async def test_overdue_case_reminds_the_head_then_escalates_to_the_oversight(
        setup: Setup, hook: Hook, mailbox: tuple[Mailbox, int]) -> None:
    clock = Clock()
    alerts = alerter(setup, clock)
    await alerts.run_once()
    await submit_tip(setup.app, "ps-sadar-bazar", "information", "criminal_activity")  # 2h
    await submit_tip(setup.app, "ps-sadar-bazar", "complaint", "traffic")  # default 24h
    await submit_tip(setup.app, "cell-cyber", "information", "women_safety")  # 1h, no alerts set
    async with setup.core.sessions() as db:
        cases = (await db.scalars(select(Case).order_by(Case.id))).all()
    info, complaint, cyber = cases
    assert info.reply_due_at is not None and complaint.reply_due_at is not None
    assert info.reply_due_at - info.received_at == dt.timedelta(hours=2)
    assert complaint.reply_due_at - complaint.received_at == dt.timedelta(hours=24)
    assert cyber.reply_due_at is not None
    assert cyber.reply_due_at - cyber.received_at == dt.timedelta(hours=1)
    base = info.received_at

    clock.now = base + dt.timedelta(hours=1, minutes=59)
    await alerts.run_once()
    assert "head" not in hook.posts
    clock.now = base + dt.timedelta(hours=2, minutes=1)
    await alerts.run_once()
    assert hook.messages("head") == [one_line(overdue_text(1, *SADAR))]
    assert hook.messages("head")[0] == ("1 case overdue for Sadar Bazar Police Station "
                                        "थाना सदर बाजार का 1 मामला अतिदेय")
    await alerts.run_once()
    clock.now = base + dt.timedelta(hours=3)
    await alerts.run_once()
    assert len(hook.posts["head"]) == 1  # once per stage
    # The cyber cell's 1h case, due at 1h and reminded at 2h01, is escalated from 2h on.
    assert hook.messages("oversight") == [one_line(overdue_text(1, "Cyber Cell", "साइबर सेल"))]
    reminders = await audit_of(setup.core, "overdue_reminder")
    # The cyber cell has no head and no alert URLs: its stage is passed and audited as such.
    assert sorted((r["unit"], r["recipient"], r["delivered"]) for r in reminders) == [
        ("cell-cyber", "unit", False), ("ps-sadar-bazar", "head officer-a", True)]
    sadar = next(r for r in reminders if r["unit"] == "ps-sadar-bazar")
    assert sadar["cases"] == [{"id": info.id, "rule": "first reply within 2h"}]

    # Escalation: as long again as the target (no escalate_after), to the oversight.
    clock.now = base + dt.timedelta(hours=4, minutes=1)
    await alerts.run_once()
    assert hook.messages("oversight")[1:] == [one_line(overdue_text(1, *SADAR))]
    escalations = await audit_of(setup.core, "overdue_escalation")
    assert {e["unit"]: e["cases"] for e in escalations} == {
        "ps-sadar-bazar": [{"id": info.id, "rule": "first reply within 2h, escalated 2h after"}],
        "cell-cyber": [{"id": cyber.id, "rule": "first reply within 1h, escalated 1h after"}]}
    sent = len(hook.posts["oversight"])
    clock.now = base + dt.timedelta(hours=10)
    await alerts.run_once()
    assert len(hook.posts["oversight"]) == sent and len(hook.posts["head"]) == 1
    # The complaint's own day: reminded, with its own rule.
    clock.now = base + dt.timedelta(hours=24, minutes=1)
    await alerts.run_once()
    assert len(hook.posts["head"]) == 2
    assert (await audit_of(setup.core, "overdue_reminder"))[-1]["cases"] == [
        {"id": complaint.id, "rule": "first reply within 24h"}]
    assert_content_free([json.dumps(hook.posts)], (*SECRET_WORDS, info.public_id))
    # Reminders go to the head, not the unit's mailbox (which had its new-tips alert).
    assert mailbox[0].texts() == [one_line(new_tips_text(2, *SADAR))]
    check = await setup.core.audit.verify()
    assert check.ok
    verify = subprocess.run([str(Path(__file__).parents[1] / ".venv/bin/cpcp-admin"), "--config",
                             str(setup.deployment.config), "audit-verify"],
                            capture_output=True, text=True, check=False)
    assert verify.returncode == 0 and "audit log intact" in verify.stdout


async def test_a_replied_case_is_never_reminded(setup: Setup, hook: Hook) -> None:
    from cpcp.models import Reply

    clock = Clock()
    alerts = alerter(setup, clock)
    await submit_tip(setup.app, "ps-sadar-bazar", "information", "women_safety")  # 1h
    async with setup.core.sessions.begin() as db:
        case = await db.scalar(select(Case))
        assert case is not None
        db.add(Reply(case_id=case.id, object_name="x-reply.gpg", size=1))
        due = case.reply_due_at
    assert due is not None
    clock.now = due + dt.timedelta(hours=5)
    await alerts.run_once()
    assert "head" not in hook.posts and "oversight" not in hook.posts
    assert await audit_of(setup.core, "overdue_reminder") == []


async def test_bad_alert_url_or_head_is_refused_at_deploy_with_nothing_changed(
        deployment: Deployment) -> None:
    path = deployment.root / "deployment.toml"
    good = path.read_text(encoding="utf-8")
    newcomer = (f'\n[[officers]]\nhandle = "officer-new"\nname = "New"\n'
                f'fingerprint = "{FPR["custodian"]}"\nkey_file = "custodian.asc"\n')
    cases = [
        (good.replace('officers = ["officer-b"]\n',
                      'officers = ["officer-b"]\nalerts = ["nonsense://user:hunter2@x"]\n'),
         "unit cell-cyber: alerts[0] (nonsense://...) is not an Apprise URL"),
        (good.replace('officers = ["officer-b"]\n', 'officers = ["officer-b"]\nhead = "nobody"\n'),
         "unit cell-cyber: head 'nobody' is not a serving officer"),
        (good.replace('key_file = "officer-b.asc"\n', 'key_file = "officer-b.asc"\nalerts = "x"\n'),
         "officer officer-b: alerts must be a list"),
        (good + '\n[oversight]\nalerts = ["json://"]\n', "[oversight]: alerts[0]"),
        (good + '\n[targets]\ninformation = "2 hours"\n', "[targets] information"),
    ]
    (deployment.root / "keys" / "custodian.asc").exists()
    for text, message in cases:
        path.write_text(newcomer + text, encoding="utf-8")
        with pytest.raises(ConfigError) as refused:
            await deploy(deployment.settings)
        assert message in str(refused.value)
        assert "hunter2" not in str(refused.value)
    core = build_core(deployment.settings)
    try:
        async with core.sessions() as db:
            assert await db.scalar(select(func.count()).select_from(Officer)
                                   .where(Officer.handle == "officer-new")) == 0
    finally:
        await core.close()


async def test_gateway_shows_when_a_reply_is_due_and_overdue_until_one_is_sent(
        setup: Setup, officer_gnupg: Path) -> None:
    from journalist_app.gateway import create_app

    from .test_gateway import auth, enrol, token_for

    gateway = create_app(setup.deployment.settings, core=setup.core)
    async with gateway.test_app():
        await submit_tip(setup.app, "ps-sadar-bazar", "information", "criminal_activity")  # 2h
        await submit_tip(setup.app, "control-room", "suggestion", "other")  # default 24h
        token = await token_for(gateway, "officer-a", await enrol(setup.core, "officer-a"))
        client = gateway.test_client()

        async def listing() -> dict[str, dict[str, Any]]:
            r = await client.get("/api/v1/cases", headers=auth(token))
            return {c["unit"]: c for c in (await r.get_json())["cases"]}

        cases = await listing()
        sadar = cases["ps-sadar-bazar"]
        received = dt.datetime.fromisoformat(sadar["received_at"])
        due = dt.datetime.fromisoformat(sadar["reply_due_at"])
        assert due - received == dt.timedelta(hours=2) and sadar["overdue"] is False
        room = cases["control-room"]
        assert (dt.datetime.fromisoformat(room["reply_due_at"])
                - dt.datetime.fromisoformat(room["received_at"])) == dt.timedelta(hours=24)
        setup.core.casework.clock = lambda: due - dt.timedelta(seconds=1)
        assert (await listing())["ps-sadar-bazar"]["overdue"] is False
        setup.core.casework.clock = lambda: due
        cases = await listing()
        assert cases["ps-sadar-bazar"]["overdue"] is True and cases["control-room"]["overdue"] is False
        one = await (await client.get(f"/api/v1/cases/{sadar['id']}", headers=auth(token))).get_json()
        assert one["overdue"] is True and one["reply_due_at"] == sadar["reply_due_at"]

        key = await (await client.get(f"/api/v1/cases/{sadar['id']}/source-key",
                                      headers=auth(token))).get_json()
        subprocess.run(["gpg", "--homedir", str(officer_gnupg), "--batch", "--import"],
                       input=key["armored"].encode(), check=True, capture_output=True)
        armored = gpg_encrypt(officer_gnupg, b"thank you", [key["fingerprint"], FPR["officer-a"]],
                              armor=True).decode()
        r = await client.post(f"/api/v1/cases/{sadar['id']}/replies", headers=auth(token),
                              json={"armored": armored})
        assert r.status_code == 201
        after = (await listing())["ps-sadar-bazar"]
        assert after["overdue"] is False and after["reply_due_at"] == sadar["reply_due_at"]
        # A closed case owes no reply.
        async with setup.core.sessions.begin() as db:
            await db.execute(update(Case).where(Case.id == room["id"]).values(status="closed"))
        setup.core.casework.clock = lambda: due + dt.timedelta(days=2)
        assert (await listing())["control-room"]["overdue"] is False


async def test_delay_from_tip_to_smtp_delivery_with_no_random_delay(
        tmp_path: Path, database_url: str, mailbox: tuple[Mailbox, int], hook: Hook,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The real clock and sleep, a 0.5 s poll, the random delay set to 0: what is left is the
    poll and Apprise's SMTP round trip."""
    from source_app import create_app

    box, port = mailbox
    config = write_deployment(tmp_path, database_url)
    alert_lines(tmp_path, mail_port=port, hook=hook, delays="min_delay = 0\nmax_delay = 0")
    settings = load_settings(config, env={})
    await asyncio.to_thread(init_deployment, settings)
    core = build_core(settings)
    app = create_app(settings, core=core)
    assert settings.deployment_file is not None
    alerts = Alerter(sessions=core.sessions, audit=core.audit,
                     config=load_alert_config(settings.deployment_file), poll_seconds=0.5)
    stop = asyncio.Event()
    try:
        async with app.test_app():
            await alerts.run_once()
            task = asyncio.create_task(alerts.run(stop))
            delays = []
            for n in range(3):
                await submit_tip(app, "ps-sadar-bazar")
                sent = time.monotonic()
                for _ in range(200):
                    if len(box.arrived) > n:
                        break
                    await asyncio.sleep(0.02)
                assert len(box.arrived) == n + 1
                delays.append(box.arrived[n] - sent)
                await asyncio.sleep(0.6)  # let the hook's post of the same batch finish
            stop.set()
            await task
    finally:
        await core.close()
    assert box.texts() == [one_line(new_tips_text(1, *SADAR))] * 3
    with capsys.disabled():
        print(f"\ntip -> SMTP delivery, random delay 0, poll 0.5 s: "
              f"{', '.join(f'{d:.2f}' for d in delays)} s")
    assert max(delays) < 3.0


def test_targets_and_alert_settings_are_checked() -> None:
    from cpcp.alertconfig import parse_alert_config
    from cpcp.targets import parse_targets

    targets = parse_targets({"targets": {"default": "24h", "information": "2h",
                                         "information.women_safety": "90m"}})
    assert targets.target_for("information", "women_safety") == dt.timedelta(minutes=90)
    assert targets.target_for("information", "traffic") == dt.timedelta(hours=2)
    assert targets.target_for("suggestion", None) == dt.timedelta(hours=24)
    assert parse_targets({}).target_for("information", None) is None
    for bad in ({"information": "0h"}, {"information": 2}, {"gossip": "1h"},
                {"information.weather": "1h"}, {"default": "9000d"}):
        with pytest.raises(ConfigError):
            parse_targets({"targets": bad})
    for bad_alerts in ({"min_delay": 30, "max_delay": 10}, {"min_delay": -1}, {"max_delay": True},
                       {"jitter": 5}):
        with pytest.raises(ConfigError):
            parse_alert_config({"alerts": bad_alerts})
    retired_head = {"officers": [{"handle": "old", "retired": True}],
                    "units": [{"slug": "ps-x", "head": "old"}]}
    with pytest.raises(ConfigError, match="head 'old' is not a serving officer"):
        parse_alert_config(retired_head)


async def test_cpcp_alerts_runs_as_a_process_and_never_prints_an_alert_url(
        tmp_path: Path, database_url: str, mailbox: tuple[Mailbox, int], hook: Hook) -> None:
    """The console script against a real deployment: a tip reaches the mailbox; a unit whose
    receiver is down is retried, and neither its URL nor its password reaches the output;
    SIGTERM stops it cleanly."""
    import signal
    import sys

    from source_app import create_app

    box, port = mailbox
    config = write_deployment(tmp_path, database_url)
    dead = free_port()
    alert_lines(tmp_path, mail_port=port, hook=hook, delays="min_delay = 0\nmax_delay = 0",
                cyber=f'alerts = ["json://alerter:hunter2@127.0.0.1:{dead}/x"]\n')
    settings = load_settings(config, env={})
    await asyncio.to_thread(init_deployment, settings)
    out = tmp_path / "alerts.out"
    with out.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cpcp.alerts_cli", "--config", str(config), "--poll", "0.3",
            stdout=sink, stderr=subprocess.STDOUT)
    core = build_core(settings)
    app = create_app(settings, core=core)
    try:
        for _ in range(100):  # started: its cursors are there
            async with core.sessions() as db:
                from cpcp.models import AlertCursor
                if await db.scalar(select(func.count()).select_from(AlertCursor)) == 2:
                    break
            await asyncio.sleep(0.1)
        async with app.test_app():
            await submit_tip(app, "ps-sadar-bazar")
            await submit_tip(app, "cell-cyber")
            for _ in range(100):
                if box.messages and "sadar" in hook.posts:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(1)  # the cyber cell's first try has failed by now
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 15)
        await core.close()
    assert code == 0
    assert box.texts() == [one_line(new_tips_text(1, *SADAR))]
    printed = out.read_text()
    assert "1 unit(s) with alerts" not in printed and "2 unit(s) with alerts" in printed
    assert "cell-cyber not delivered; will retry" in printed
    assert "hunter2" not in printed and str(dead) not in printed and str(port) not in printed


async def test_deploy_copies_the_targets_to_the_database_for_the_source_app(setup: Setup) -> None:
    """The source app sets due times from the database: it needs nothing of the deployment
    file (which holds alert URLs)."""
    import dataclasses

    from cpcp.targetstore import read_targets
    from source_app import create_app

    stored = await read_targets(setup.core.sessions)
    assert stored.target_for("information", "women_safety") == dt.timedelta(hours=1)
    assert stored.target_for("complaint", None) == dt.timedelta(hours=24)
    assert len(await audit_of(setup.core, "targets_set")) == 1
    await deploy(setup.deployment.settings)  # unchanged: no entry
    assert len(await audit_of(setup.core, "targets_set")) == 1
    path = setup.deployment.root / "deployment.toml"
    path.write_text(path.read_text(encoding="utf-8").replace('information = "2h"', 'information = "3h"'),
                    encoding="utf-8")
    await deploy(setup.deployment.settings)
    changed = await audit_of(setup.core, "targets_set")
    assert len(changed) == 2 and changed[-1]["minutes"]["information"] == 180
    assert changed[-1]["before"]["information"] == 120
    without_file = create_app(dataclasses.replace(setup.deployment.settings, deployment_file=None),
                              core=setup.core)
    async with without_file.test_app():
        await submit_tip(without_file, "ps-sadar-bazar", "information", "traffic")
    async with setup.core.sessions() as db:
        case = await db.scalar(select(Case))
    assert case is not None and case.reply_due_at is not None
    assert case.reply_due_at - case.received_at == dt.timedelta(hours=3)
    assert (await setup.core.audit.verify()).ok


async def test_a_tip_committed_after_a_newer_one_is_still_alerted(setup: Setup, hook: Hook) -> None:
    """On PostgreSQL a submission's id is drawn before its (maybe long) upload commits, so a
    lower id can appear after a higher one was alerted for: it is alerted for all the same."""
    from cpcp.models import Submission

    clock = Clock()
    alerts = alerter(setup, clock)
    await alerts.run_once()
    for _ in range(3):
        await submit_tip(setup.app, "ps-sadar-bazar")
    await alerts.run_once()
    clock.advance(seconds=21)
    await alerts.run_once()
    assert hook.messages("sadar") == [one_line(new_tips_text(3, *SADAR))]
    async with setup.core.sessions.begin() as db:
        middle = sorted((await db.scalars(select(Submission.id))).all())[1]
        # As if it had committed only now, unseen by the alert that went out.
        await db.execute(update(Submission).where(Submission.id == middle).values(alerted=False))
    await alerts.run_once()
    clock.advance(seconds=21)
    await alerts.run_once()
    assert hook.messages("sadar")[1:] == [one_line(new_tips_text(1, *SADAR))]
    assert [e["submissions"] for e in await audit_of(setup.core, "alert_new_tips")][1] == [middle]
