"""Retention: the [retention] policy of the deployment file and ``cpcp-admin retention``, on a
real database (SQLite and PostgreSQL), a real store and real gpg, with a fixed clock."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from quart import Quart
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import OperationalError

from cpcp.admin import main
from cpcp.codenames import Codename, generate_codename
from cpcp.errors import ConfigError, UnknownCodename
from cpcp.models import (
    AuditEntry,
    Case,
    CaseStatus,
    DisclosureRequest,
    DisclosureStatus,
    Document,
    Officer,
    Reply,
    SealedIdentity,
    Source,
    Submission,
)
from cpcp.purge import AUDIT_ACTION, KEY_GRACE_SECONDS, Purger, due_cases
from cpcp.retention import RetentionPolicy, Rules, due_rule, load_retention, parse_retention
from cpcp.services import CoreServices

from .conftest import Deployment
from .helpers import csrf, multipart

NOW = dt.datetime(2030, 6, 1, 12, 0, tzinfo=dt.UTC)
UNITS = [{"slug": "ps-sadar-bazar"}, {"slug": "cell-cyber"}]
POLICY = RetentionPolicy(default=Rules(closed_days=90, spam_days=7),
                         units={"cell-cyber": Rules(closed_days=365, spam_days=7)})


# -- the policy -------------------------------------------------------------------------------


def test_no_retention_table_keeps_forever() -> None:
    policy = parse_retention({"units": UNITS})
    assert policy.keeps_forever and policy == RetentionPolicy()
    assert "kept forever" in policy.describe()
    assert due_rule(policy.default, status=CaseStatus.CLOSED, spam=True,
                    updated_at=NOW - dt.timedelta(days=10_000), now=NOW) is None


def test_policy_with_a_unit_override_inherits_what_it_does_not_set() -> None:
    policy = parse_retention({"units": UNITS, "retention": {
        "closed_days": 90, "spam_days": 7, "units": {"cell-cyber": {"closed_days": 365}}}})
    assert policy == POLICY
    assert policy.rules_for("ps-sadar-bazar") == Rules(90, 7)
    assert policy.describe() == ("retention: closed cases 90 days, spam 7 days; "
                                 "cell-cyber: closed cases 365 days, spam 7 days")
    only_spam = parse_retention({"retention": {"spam_days": 3}})
    assert only_spam.default == Rules(None, 3) and "closed cases forever" in only_spam.describe()


@pytest.mark.parametrize(("table", "message"), [
    ({"closed_days": -1}, r"\[retention\]\.closed_days must be a whole number of days from 1 to 36500, not -1"),
    ({"closed_days": 0}, r"\[retention\]\.closed_days .* not 0"),
    ({"spam_days": "7"}, r"\[retention\]\.spam_days .* not '7'"),
    ({"spam_days": 7.5}, r"\[retention\]\.spam_days .* not 7\.5"),
    ({"spam_days": True}, r"\[retention\]\.spam_days .* not True"),
    ({"closed_days": 36501}, r"\[retention\]\.closed_days"),
    ({"closed_day": 90}, r"\[retention\]: unknown key\(s\) closed_day \(known: closed_days, spam_days, units\)"),
    ({"units": {"ps-nowhere": {"closed_days": 5}}}, r"\[retention\.units\.ps-nowhere\]: no such unit"),
    ({"units": {"cell-cyber": {"closed_days": -5}}}, r"\[retention\.units\.cell-cyber\]\.closed_days"),
    ({"units": {"cell-cyber": {"units": {}}}}, r"\[retention\.units\.cell-cyber\]: unknown key\(s\) units"),
    ({"units": ["cell-cyber"]}, r"\[retention\]\.units must be a table"),
])
def test_bad_values_are_refused_naming_the_key(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_retention({"units": UNITS, "retention": table})


def test_not_a_table_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "deployment.toml"
    path.write_text("retention = 90\n")
    with pytest.raises(ConfigError, match=r"\[retention\] must be a table"):
        load_retention(path)


def test_due_rule_at_the_boundaries() -> None:
    rules = Rules(closed_days=90, spam_days=7)

    def rule(status: CaseStatus, spam: bool, days: float) -> str | None:
        return due_rule(rules, status=status, spam=spam, updated_at=NOW - dt.timedelta(days=days), now=NOW)

    assert rule(CaseStatus.CLOSED, False, 90) == "closed 90 days"
    assert rule(CaseStatus.CLOSED, False, 89.999) is None
    assert rule(CaseStatus.ACTION_TAKEN, False, 1000) is None  # only closed cases
    assert rule(CaseStatus.RECEIVED, True, 7) == "spam 7 days"
    assert rule(CaseStatus.RECEIVED, True, 6.999) is None
    assert rule(CaseStatus.CLOSED, True, 8) == "spam 7 days"  # spam is checked first
    assert due_rule(Rules(closed_days=3, spam_days=30), status=CaseStatus.CLOSED, spam=True,
                    updated_at=NOW - dt.timedelta(days=5), now=NOW) == "closed 3 days"


# -- purging ----------------------------------------------------------------------------------


async def tip(core: CoreServices, unit_slug: str, *, status: CaseStatus = CaseStatus.RECEIVED,
              spam: bool = False, days_ago: float, files: int = 0) -> tuple[int, Codename]:
    """A source's tip through the real intake, then aged: last changed ``days_ago`` before NOW."""
    codename = generate_codename()
    login = await core.sources.create(codename)
    unit = await core.cases.unit_by_slug(unit_slug)
    async with core.intake.draft(unit) as draft:
        for i in range(files):
            await draft.open_file(f"f{i}.bin", "application/octet-stream")
            await draft.write_file(os.urandom(5000))
        await draft.add_message({"follow_up": False, "unit": unit_slug, "text": "secret tip", "language": "hi",
                                 "kind": "information", "category": "illegal_trade", "place": "Old market"})
        await draft.commit(source_id=login.source_id, unit=unit)
    case = await core.cases.case_of_source(login.source_id)
    assert case is not None
    async with core.sessions.begin() as db:
        await db.execute(update(Case).where(Case.id == case.id).values(
            status=status, spam=spam, updated_at=NOW - dt.timedelta(days=days_ago)))
    return case.id, codename


async def add_reply_sealed_and_disclosure(core: CoreServices, case_id: int) -> None:
    """What else a case can own: a reply, sealed contact details, a disclosed copy of them."""
    async with core.sessions.begin() as db:
        case = await db.get(Case, case_id)
        assert case is not None
        officer = await db.scalar(select(Officer.id).where(Officer.handle == "officer-a"))
        assert officer is not None
        name = core.store.write_bytes(b"reply ciphertext", case_public_id=case.public_id, role="reply")
        db.add(Reply(case_id=case_id, object_name=name, size=16))
        name = core.store.write_bytes(b"sealed ciphertext", case_public_id=case.public_id, role="sealed")
        db.add(SealedIdentity(case_id=case_id, object_name=name, size=17))
        name = core.store.write_bytes(b"disclosed ciphertext", case_public_id=case.public_id, role="disclosure")
        db.add(DisclosureRequest(case_id=case_id, requester_id=officer, reason="a witness", object_name=name,
                                 size=20, status=DisclosureStatus.DISCLOSED, decided_by_id=officer,
                                 disclosed_at=NOW))


def purger(core: CoreServices) -> Purger:
    return Purger(sessions=core.sessions, audit=core.audit, store=core.store,
                  source_keys=core.source_keys, cases=core.cases)


async def rows_of(core: CoreServices, case_id: int) -> dict[str, int]:
    async with core.sessions() as db:
        async def count(query: Any) -> int:
            return int(await db.scalar(query) or 0)

        subs = select(Submission.id).where(Submission.case_id == case_id)
        return {
            "cases": await count(select(func.count()).select_from(Case).where(Case.id == case_id)),
            "submissions": await count(select(func.count()).select_from(Submission).where(Submission.case_id == case_id)),
            "documents": await count(select(func.count()).select_from(Document).where(Document.submission_id.in_(subs))),
            "replies": await count(select(func.count()).select_from(Reply).where(Reply.case_id == case_id)),
            "sealed": await count(select(func.count()).select_from(SealedIdentity).where(SealedIdentity.case_id == case_id)),
            "disclosures": await count(select(func.count()).select_from(DisclosureRequest)
                                       .where(DisclosureRequest.case_id == case_id)),
        }


async def public_id_and_key(core: CoreServices, case_id: int) -> tuple[str, str]:
    async with core.sessions() as db:
        case = await db.get(Case, case_id)
        assert case is not None
        source = await db.get(Source, case.source_id)
        assert source is not None
        return case.public_id, source.reply_key_fingerprint


async def retention_entries(core: CoreServices) -> list[dict[str, Any]]:
    async with core.sessions() as db:
        entries = (await db.scalars(select(AuditEntry).where(AuditEntry.action == AUDIT_ACTION)
                                    .order_by(AuditEntry.id))).all()
    return [json.loads(e.details) | {"officer": e.officer_id} for e in entries]


async def test_purge_deletes_exactly_the_due_cases_with_everything_they_own(core: CoreServices) -> None:
    closed_old, codename = await tip(core, "ps-sadar-bazar", status=CaseStatus.CLOSED, days_ago=91, files=2)
    await add_reply_sealed_and_disclosure(core, closed_old)
    closed_young, _ = await tip(core, "ps-sadar-bazar", status=CaseStatus.CLOSED, days_ago=89)
    spam_old, _ = await tip(core, "control-room", spam=True, days_ago=8)
    open_ancient, _ = await tip(core, "ps-sadar-bazar", status=CaseStatus.ACTION_TAKEN, days_ago=3000)
    cyber_closed, _ = await tip(core, "cell-cyber", status=CaseStatus.CLOSED, days_ago=100)  # 365 there
    kept = [closed_young, open_ancient, cyber_closed]
    folder, fpr = await public_id_and_key(core, closed_old)
    spam_folder, spam_fpr = await public_id_and_key(core, spam_old)
    case_dir = core.store.root / folder
    assert len(list(case_dir.iterdir())) == 6  # message, 2 files, reply, sealed, disclosure
    before = {c: await rows_of(core, c) for c in kept}

    # A dry run lists, and changes nothing.
    due = await due_cases(core.sessions, POLICY, NOW)
    assert [(d.case_id, d.rule) for d in due] == [(closed_old, "closed 90 days"), (spam_old, "spam 7 days")]
    assert await due_cases(core.sessions, RetentionPolicy(), NOW) == []
    assert (await rows_of(core, closed_old))["documents"] == 3

    report = await purger(core).purge(POLICY, NOW)
    assert [(r.case_id, r.rule) for r in report.removed] == [(closed_old, "closed 90 days"),
                                                             (spam_old, "spam 7 days")]
    first = report.removed[0]
    assert (first.submissions, first.messages, first.files, first.replies, first.sealed_identity,
            first.disclosure_requests, first.objects) == (1, 1, 2, 1, 1, 1, 6)
    for gone in (closed_old, spam_old):
        assert set((await rows_of(core, gone)).values()) == {0}
    assert not case_dir.exists() and not (core.store.root / spam_folder).exists()
    for name in core.store.object_names():
        assert not name.startswith((folder, spam_folder))
    # The source went too: its codename opens nothing, its reply key is gone from the keyring.
    async with core.sessions() as db:
        assert await db.scalar(select(func.count()).select_from(Source)) == 3
    for key in (fpr, spam_fpr):
        assert core.source_keys.key_info(key) is None
    assert not {fpr, spam_fpr} & core.source_keys.secret_fingerprints()
    with pytest.raises(UnknownCodename):
        await core.sources.login(codename, caller="test")
    # The rest is untouched.
    assert {c: await rows_of(core, c) for c in kept} == before
    for case_id in kept:
        assert core.source_keys.key_info((await public_id_and_key(core, case_id))[1]) is not None

    # One audit entry per case, counts only, and the chain holds.
    entries = await retention_entries(core)
    assert entries == [
        {"case": closed_old, "unit": "ps-sadar-bazar", "rule": "closed 90 days", "submissions": 1,
         "messages": 1, "files": 2, "replies": 1, "sealed_identity": 1, "disclosure_requests": 1,
         "objects": 6, "bytes": first.bytes, "officer": None},
        {"case": spam_old, "unit": "control-room", "rule": "spam 7 days", "submissions": 1, "messages": 1,
         "files": 0, "replies": 0, "sealed_identity": 0, "disclosure_requests": 0, "objects": 1,
         "bytes": report.removed[1].bytes, "officer": None},
    ]
    assert first.bytes > 10_000
    check = await core.audit.verify()
    assert check.ok and check.entries >= 2

    # Again: nothing is due any more. A year on, the cyber cell's closed case goes too.
    assert (await purger(core).purge(POLICY, NOW)).removed == ()
    later = await purger(core).purge(POLICY, NOW + dt.timedelta(days=266))
    assert [r.case_id for r in later.removed] == [closed_young, cyber_closed]
    assert (await core.audit.verify()).ok


async def test_a_case_that_changed_after_it_was_listed_is_kept(core: CoreServices) -> None:
    case_id, _ = await tip(core, "ps-sadar-bazar", status=CaseStatus.CLOSED, days_ago=120)
    (due,) = await due_cases(core.sessions, POLICY, NOW)
    async with core.sessions.begin() as db:  # an officer reopens it meanwhile
        await db.execute(update(Case).where(Case.id == case_id).values(status=CaseStatus.UNDER_REVIEW))
    assert await purger(core).purge_case(due.case_id, POLICY, NOW) is None
    assert (await rows_of(core, case_id))["cases"] == 1
    assert await retention_entries(core) == []
    assert await purger(core).purge_case(999_999, POLICY, NOW) is None  # gone already


async def test_a_message_arriving_during_the_purge_keeps_the_case(core: CoreServices) -> None:
    """Another writer changes the case and has not committed yet when the purge reads it: the
    purge waits for it (row lock on PostgreSQL, the write lock on SQLite) and keeps the case."""
    case_id, _ = await tip(core, "ps-sadar-bazar", status=CaseStatus.CLOSED, days_ago=120)
    async with core.sessions.begin() as other:
        await other.execute(update(Case).where(Case.id == case_id).values(updated_at=NOW))
        await other.flush()
        purge = asyncio.create_task(purger(core).purge_case(case_id, POLICY, NOW))
        await asyncio.sleep(0.5)
        assert not purge.done()  # waiting for the other writer
    assert await asyncio.wait_for(purge, 15) is None
    assert (await rows_of(core, case_id))["cases"] == 1 and await retention_entries(core) == []


async def test_a_case_the_database_refuses_now_is_left_for_the_next_run(
    core: CoreServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _ = await tip(core, "ps-sadar-bazar", spam=True, days_ago=10)
    second, _ = await tip(core, "ps-sadar-bazar", spam=True, days_ago=10)
    run = purger(core)
    real = run.purge_case

    async def refuse_first(case_id: int, policy: RetentionPolicy, now: dt.datetime) -> Any:
        if case_id == first:
            raise OperationalError("DELETE ...", {}, Exception("database is locked"))
        return await real(case_id, policy, now)

    monkeypatch.setattr(run, "purge_case", refuse_first)
    report = await run.purge(POLICY, NOW)
    assert report.failed == (first,) and [r.case_id for r in report.removed] == [second]
    assert (await rows_of(core, first))["cases"] == 1
    assert [r.case_id for r in (await purger(core).purge(POLICY, NOW)).removed] == [first]


async def test_a_crash_after_the_commit_leaves_only_what_the_sweeps_remove(
    core: CoreServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    case_id, _ = await tip(core, "ps-sadar-bazar", spam=True, days_ago=30, files=1)
    folder, fpr = await public_id_and_key(core, case_id)

    def crash(*_: object) -> None:
        raise KeyboardInterrupt("killed between the commit and the files")

    killed = purger(core)
    monkeypatch.setattr(killed, "_remove_files", crash)
    with pytest.raises(KeyboardInterrupt):
        await killed.purge(POLICY, NOW)
    # Committed: no row, one audit entry; the files and the reply key are still there.
    assert set((await rows_of(core, case_id)).values()) == {0}
    assert len(await retention_entries(core)) == 1 and (await core.audit.verify()).ok
    leftovers = list((core.store.root / folder).iterdir())
    assert len(leftovers) == 2 and core.source_keys.key_info(fpr) is not None

    # The next run sweeps them once past the grace periods (a young object may be an upload
    # whose row is about to commit, a young key a source being created).
    fresh = purger(core)
    assert await fresh.sweep_objects() == 0 and await fresh.sweep_reply_keys() == 0
    old = time.time() - 7200
    for path in leftovers:
        os.utime(path, (old, old))
    report = await fresh.purge(POLICY, NOW)
    assert report.removed == () and report.swept_objects == 2
    assert await fresh.sweep_reply_keys(now=time.time() + KEY_GRACE_SECONDS + 60) == 1
    assert core.source_keys.key_info(fpr) is None
    assert not any(p.exists() for p in leftovers)
    assert len(await retention_entries(core)) == 1


# -- the command ------------------------------------------------------------------------------


def set_retention(deployment: Deployment, table: str) -> None:
    path = deployment.root / "deployment.toml"
    path.write_text(path.read_text(encoding="utf-8") + "\n[retention]\n" + table, encoding="utf-8")


async def admin(*argv: str) -> int:
    """``cpcp-admin`` as the timer runs it: its own event loop (here in a thread)."""
    return await asyncio.to_thread(main, list(argv))


async def test_the_command_dry_run_then_delete_then_audit_verify(
    core: CoreServices, deployment: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    case_id, _ = await tip(core, "ps-sadar-bazar", status=CaseStatus.CLOSED, days_ago=0)
    async with core.sessions.begin() as db:  # closed long before the real clock's today
        await db.execute(update(Case).where(Case.id == case_id).values(
            updated_at=dt.datetime(2020, 1, 1, tzinfo=dt.UTC)))
    config = str(deployment.config)
    assert await admin("--config", config, "retention", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "kept forever" in out and "0 case(s) due" in out

    set_retention(deployment, "closed_days = 30\nspam_days = 7\n")
    assert await admin("--config", config, "retention", "--dry-run") == 0
    out = capsys.readouterr().out
    assert f"would delete case {case_id} (ps-sadar-bazar): closed 30 days" in out
    assert "dry run: 1 case(s) due, nothing deleted" in out
    assert (await rows_of(core, case_id))["cases"] == 1

    assert await admin("--config", config, "retention") == 0
    out = capsys.readouterr().out
    assert f"deleted case {case_id} (ps-sadar-bazar): closed 30 days; 1 submission(s)" in out
    assert "retention: 1 case(s) deleted" in out and "secret tip" not in out
    assert (await rows_of(core, case_id))["cases"] == 0
    assert await admin("--config", config, "audit-verify") == 0
    assert "audit log intact" in capsys.readouterr().out


def test_deploy_refuses_a_bad_policy_and_prints_a_good_one(
    deployment: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    set_retention(deployment, "closed_days = -3\n")
    assert main(["--config", str(deployment.config), "deploy"]) == 2
    assert "[retention].closed_days must be a whole number" in capsys.readouterr().err
    assert main(["--config", str(deployment.config), "retention"]) == 2
    path = deployment.root / "deployment.toml"
    path.write_text(path.read_text().replace("closed_days = -3", "closed_days = 90"))
    assert main(["--config", str(deployment.config), "deploy"]) == 0
    assert "retention: closed cases 90 days, spam forever" in capsys.readouterr().out


# -- what a returning source sees ---------------------------------------------------------------


async def test_a_deleted_source_is_logged_out_and_its_codename_is_unknown(
    app: Quart, core: CoreServices
) -> None:
    from .test_source_app import new_source, post_tip

    client = app.test_client()
    codename = await new_source(client)
    response = await post_tip(client, [("unit", "ps-sadar-bazar"), ("kind", "information"),
                                       ("category", "illegal_trade"), ("text", "liquor behind the temple")])
    assert response.status_code == 303
    async with core.sessions() as db:
        (case_id,) = (await db.scalars(select(Case.id))).all()
    follow_up = (await (await client.get("/case")).get_data(as_text=True))
    async with core.sessions.begin() as db:
        await db.execute(update(Case).where(Case.id == case_id).values(
            status=CaseStatus.CLOSED, updated_at=NOW - dt.timedelta(days=100)))
    assert [r.case_id for r in (await purger(core).purge(POLICY, NOW)).removed] == [case_id]

    # Still logged in when it went: the next page ends the session; a late follow-up is refused.
    body, ctype = multipart([("csrf_token", csrf(follow_up)), ("text", "one more thing")])
    late = await client.post("/submit", data=body, headers={"Content-Type": ctype})
    assert late.status_code == 403
    ended = await client.get("/case")
    assert ended.status_code == 303 and ended.headers["Location"].endswith("/login")
    async with core.sessions() as db:
        assert await db.scalar(select(func.count()).select_from(Case)) == 0  # nothing new stored
    other = app.test_client()
    await new_source(other)
    async with core.sessions.begin() as db:
        await db.execute(delete(Source))  # as retention would, for a source without a case
    for page in ("/case", "/submit"):
        gone = await other.get(page)
        assert gone.status_code == 303 and gone.headers["Location"].endswith("/login")
    assert (await other.get("/case")).headers["Location"].endswith("/login")  # the session ended

    # Logging in again: the codename is unknown, like any wrong one.
    page = await (await client.get("/login")).get_data(as_text=True)
    again = await client.post("/login", form={"csrf_token": csrf(page), "codename": codename})
    assert again.status_code == 403
    assert "यह कोडनेम यहाँ दर्ज नहीं है" in await again.get_data(as_text=True)  # Hindi first
