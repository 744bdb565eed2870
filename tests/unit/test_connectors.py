"""Connectors without services: the outbox's exactly-once file contract, the registry, the fake."""

from __future__ import annotations

import asyncio
import importlib
import multiprocessing
import os
import random
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.base import BatchConnector, Connector, Delivery, Receipt
from connectors.errors import ConnectorConfigError, UnknownConnector
from connectors.fake import RecordingConnector
from connectors.outbox import OUTBOX_FIELDS, OutboxConnector
from connectors.registry import ConnectorFactories, Connectors, build_connectors
from connectors.webhook import WebhookConnector
from connectors.wecom import WeComConnector, build_message
from engine.errors import ConnectorError, HeraldError
from workers.config import Settings

REPO = Path(__file__).resolve().parents[2]


def action(i: int | str, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "message_id": f"m-{i}",
        "user_id": f"u-{i}",
        "journey": "cart",
        "step": "steps.1",
        "channel": "email",
        "to": f"u{i}@example.com",
        "subject": "Your cart",
        "body": 'Hello ✓ "quoted"\nsecond line',
        "variant": None,
        "at": "2026-05-01T10:30:00+00:00",
        "entry_id": "e1",
        "partition": 3,
    }
    doc.update(extra)
    return doc


def delivery(i: int | str, **extra: Any) -> Delivery:
    return Delivery.from_action(action(i, **extra))


def lines(path: Path) -> list[dict[str, Any]]:
    raw = path.read_bytes()
    assert raw == b"" or raw.endswith(b"\n"), "the file must end with a complete line"
    return [orjson.loads(line) for line in raw.splitlines()]


def settings(**values: Any) -> Settings:
    blank: dict[str, Any] = {
        name: None for name, field in Settings.model_fields.items() if field.validation_alias
    }
    blank.update(values)
    return Settings(_env_file=None, **blank)  # type: ignore[call-arg]


# -- Delivery ------------------------------------------------------------------------------


def test_delivery_from_action_keeps_the_connector_fields() -> None:
    d = Delivery.from_action(action(1, variant="B", meta={"method": "PUT", "headers": {}}))
    assert (d.message_id, d.channel, d.subject, d.variant) == ("m-1", "email", "Your cart", "B")
    assert d.meta == {"method": "PUT", "headers": {}}
    assert Delivery.from_action(action(2, subject=None)).meta == {}


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"message_id": None}, TypeError),
        ({"to": 5}, TypeError),
        ({"subject": 3}, TypeError),
        ({"meta": [1]}, TypeError),
        ({"message_id": ""}, ValueError),
    ],
)
def test_delivery_rejects_malformed_actions(change: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        Delivery.from_action(action(1, **change))


def test_delivery_missing_field_is_a_key_error() -> None:
    doc = action(1)
    del doc["body"]
    with pytest.raises(KeyError):
        Delivery.from_action(doc)


# -- outbox ------------------------------------------------------------------------------------


async def test_outbox_line_has_exactly_the_spec_fields(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "outbox.jsonl"
    outbox = OutboxConnector(path)
    await outbox.start()
    try:
        receipt = await outbox.send(delivery(1))
    finally:
        await outbox.close()
    assert isinstance(receipt, Receipt) and not receipt.duplicate
    [line] = lines(path)
    assert tuple(line) == OUTBOX_FIELDS
    assert set(line) == {
        "message_id",
        "user_id",
        "journey",
        "step",
        "channel",
        "to",
        "subject",
        "body",
        "variant",
        "sent_at",
    }
    assert line["message_id"] == "m-1" and line["body"] == 'Hello ✓ "quoted"\nsecond line'
    assert line["variant"] is None
    sent_at = datetime.fromisoformat(line["sent_at"])
    assert sent_at.utcoffset() is not None and sent_at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert abs((datetime.now(UTC) - sent_at).total_seconds()) < 60
    assert path.read_bytes().count(b"\n") == 1


async def test_outbox_one_line_per_id_across_instances_and_restarts(tmp_path: Path) -> None:
    path = tmp_path / "outbox.jsonl"
    a, b = OutboxConnector(path), OutboxConnector(path)
    await a.start()
    await b.start()
    try:
        assert not (await a.send(delivery(1))).duplicate
        # b started before a appended: it must catch up under the lock, not append again.
        assert await b.delivered("m-1")
        assert (await b.send(delivery(1))).duplicate
        outcomes = await b.send_many([delivery(1), delivery(2), delivery(2), delivery(3)])
        assert [o.duplicate for o in outcomes if isinstance(o, Receipt)] == [
            True,
            False,
            True,
            False,
        ]
        assert (await a.send(delivery(3))).duplicate
    finally:
        await a.close()
        await b.close()
    restarted = OutboxConnector(path)
    await restarted.start()
    try:
        assert await restarted.delivered("m-2")
        assert not await restarted.delivered("m-4")
        assert (await restarted.send(delivery(2))).duplicate
    finally:
        await restarted.close()
    assert [line["message_id"] for line in lines(path)] == ["m-1", "m-2", "m-3"]


async def test_outbox_repairs_a_torn_last_line_on_start(tmp_path: Path) -> None:
    path = tmp_path / "outbox.jsonl"
    first = OutboxConnector(path)
    await first.send(delivery(1))
    await first.close()
    with path.open("ab") as f:  # a writer that died mid-line
        f.write(b'{"message_id":"m-2","user_id":"u-2","jou')
    outbox = OutboxConnector(path)
    await outbox.start()
    assert path.read_bytes().endswith(b"\n")
    assert not await outbox.delivered("m-2")
    await outbox.send(delivery(2))
    await outbox.close()
    assert [line["message_id"] for line in lines(path)] == ["m-1", "m-2"]


async def test_outbox_repairs_a_torn_line_left_by_another_process(tmp_path: Path) -> None:
    path = tmp_path / "outbox.jsonl"
    running = OutboxConnector(path)
    await running.start()
    await running.send(delivery(1))
    with path.open("ab") as f:  # another dispatcher crashed mid-write while we run
        f.write(b'{"message_id":"m-9"')
    await running.send(delivery(2))
    await running.close()
    assert [line["message_id"] for line in lines(path)] == ["m-1", "m-2"]


async def test_outbox_follows_the_path_when_the_file_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "outbox.jsonl"
    outbox = OutboxConnector(path)
    await outbox.send(delivery(1))
    path.unlink()
    await outbox.send(delivery(2))
    await outbox.close()
    assert [line["message_id"] for line in lines(path)] == ["m-2"]


async def test_outbox_failed_fsync_leaves_no_line_and_is_retryable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "outbox.jsonl"
    outbox = OutboxConnector(path)
    await outbox.send(delivery(1))

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("connectors.outbox.os.fsync", broken_fsync)
    outcomes = await outbox.send_many([delivery(1), delivery(2)])
    assert isinstance(outcomes[0], Receipt) and outcomes[0].duplicate
    assert isinstance(outcomes[1], ConnectorError) and outcomes[1].retryable
    with pytest.raises(ConnectorError) as caught:
        await outbox.send(delivery(3))
    assert caught.value.retryable
    monkeypatch.undo()
    assert not await outbox.delivered("m-2")
    await outbox.send_many([delivery(2), delivery(3)])
    await outbox.close()
    assert [line["message_id"] for line in lines(path)] == ["m-1", "m-2", "m-3"]


async def test_outbox_unencodable_body_is_permanent_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "outbox.jsonl"
    outbox = OutboxConnector(path)
    outcomes = await outbox.send_many([delivery(1, body="bad \udc80 surrogate"), delivery(2)])
    await outbox.close()
    assert isinstance(outcomes[0], ConnectorError) and not outcomes[0].retryable
    assert isinstance(outcomes[1], Receipt)
    assert [line["message_id"] for line in lines(path)] == ["m-2"]


async def test_outbox_thread_path_when_batch_is_over_the_inline_limit(tmp_path: Path) -> None:
    path = tmp_path / "outbox.jsonl"
    outbox = OutboxConnector(path, inline_limit=2)
    first, second = await asyncio.gather(
        outbox.send_many([delivery(i) for i in range(0, 60)]),
        outbox.send_many([delivery(i) for i in range(30, 90)]),
    )
    await outbox.close()
    assert all(isinstance(o, Receipt) for o in first + second)
    ids = [line["message_id"] for line in lines(path)]
    assert sorted(ids) == sorted({f"m-{i}" for i in range(90)})


def _append_from_process(path: str, seed: int, count: int) -> None:
    """One 'dispatcher process': every id, in its own order and batch sizes."""

    async def run() -> None:
        outbox = OutboxConnector(path)
        await outbox.start()
        rng = random.Random(seed)
        ids = list(range(count))
        rng.shuffle(ids)
        while ids:
            size = rng.choice([1, 7, 50, 200])
            batch, ids = ids[:size], ids[size:]
            outcomes = await outbox.send_many([delivery(i) for i in batch])
            assert not [o for o in outcomes if isinstance(o, Exception)]
        await outbox.close()

    asyncio.run(run())


def test_outbox_concurrent_processes_write_each_id_once_and_no_torn_lines(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.jsonl"
    count, workers = 1500, 4
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_append_from_process, args=(str(path), seed, count))
        for seed in range(workers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    written = lines(path)  # every line parses: nothing torn or interleaved
    ids = [line["message_id"] for line in written]
    assert len(ids) == count
    assert set(ids) == {f"m-{i}" for i in range(count)}
    assert all(tuple(line) == OUTBOX_FIELDS for line in written)


# -- the fake, and the contract every connector keeps ---------------------------------------


async def test_recording_connector_scripts_failures() -> None:
    fake = RecordingConnector()
    await fake.start()
    fake.fail_next(2, retryable=True)
    fake.fail_next(1, retryable=False, message="bad address")
    for expected in (True, True, False):
        with pytest.raises(ConnectorError) as caught:
            await fake.send(delivery(1))
        assert caught.value.retryable is expected
    assert fake.sent == [] and len(fake.attempts) == 3
    assert not await fake.delivered("m-1")
    receipt = await fake.send(delivery(1))
    assert receipt.provider_id == "recording-1"
    assert await fake.delivered("m-1")
    await fake.close()
    assert fake.started and fake.closed


async def test_recording_connector_unknown_outcome_and_waiting() -> None:
    fake = RecordingConnector(idempotent=True)
    fake.fail_next(after_delivery=True)
    waiter = asyncio.create_task(fake.wait_for(2, timeout=5))
    with pytest.raises(ConnectorError):
        await fake.send(delivery(1))
    assert await fake.delivered("m-1")  # it went out although the caller saw an error
    await fake.send(delivery(2))
    assert [d.message_id for d in await waiter] == ["m-1", "m-2"]
    assert not await RecordingConnector(idempotent=False, already_delivered=["x"]).delivered("x")


@pytest.fixture(params=["fake", "outbox"])
async def any_connector(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    connector: Connector = (
        RecordingConnector() if request.param == "fake" else OutboxConnector(tmp_path / "o.jsonl")
    )
    await connector.start()
    yield connector
    await connector.close()


async def test_connector_contract(any_connector: Connector) -> None:
    assert isinstance(any_connector, Connector)
    assert isinstance(any_connector.name, str) and any_connector.name
    assert not await any_connector.delivered("m-1")
    receipt = await any_connector.send(delivery(1))
    assert isinstance(receipt, Receipt)
    assert await any_connector.delivered("m-1")
    assert not await any_connector.delivered("m-2")


def test_batch_protocol() -> None:
    assert isinstance(OutboxConnector("x"), BatchConnector)
    assert not isinstance(RecordingConnector(), BatchConnector)
    assert isinstance(WebhookConnector(), Connector)


# -- registry ----------------------------------------------------------------------------------


def test_registry_did_you_mean() -> None:
    table = ConnectorFactories(discover=lambda group: [])
    with pytest.raises(UnknownConnector) as caught:
        table.by_name("sendgird")
    assert isinstance(caught.value, HeraldError)
    assert "Did you mean 'sendgrid'?" in str(caught.value)
    with pytest.raises(UnknownConnector) as caught:
        table.by_name("carrier-pigeon")
    assert "Available:" in str(caught.value) and "webhook" in str(caught.value)


def test_registry_channels_follow_settings(tmp_path: Path) -> None:
    table = ConnectorFactories(discover=lambda group: [])
    bare = build_connectors(settings(outbox=tmp_path / "o.jsonl"), factories=table)
    assert isinstance(bare, Connectors)
    assert bare.describe() == {"*": "outbox"}
    assert bare.connector_for("email") is bare.outbox is bare.connector_for("pigeon")
    assert bare.connector_for("webhook") is bare.outbox  # never call real URLs unless told
    assert isinstance(bare.outbox, OutboxConnector) and bare.outbox.path == tmp_path / "o.jsonl"
    live = build_connectors(
        settings(outbox=tmp_path / "o.jsonl", webhooks_live=True), factories=table
    )
    assert isinstance(live["webhook"], WebhookConnector)

    full = build_connectors(
        settings(
            outbox=tmp_path / "o.jsonl",
            sendgrid_api_key="SG.x",
            email_from="herald@example.com",
            twilio_account_sid="AC123",
            twilio_auth_token="t",
            twilio_from="+15550000000",
            wechat_app_id="wx1",
            wechat_app_secret="s",
            webhooks_live=True,
        ),
        factories=table,
    )
    assert full.describe() == {
        "email": "sendgrid",
        "sms": "twilio",
        "wechat": "wechat",
        "webhook": "webhook",
        "*": "outbox",
    }
    assert len(full.distinct()) == 5


def test_registry_missing_provider_setting_fails_at_build(tmp_path: Path) -> None:
    with pytest.raises(ConnectorConfigError, match="HERALD_EMAIL_FROM"):
        build_connectors(
            settings(outbox=tmp_path / "o.jsonl", sendgrid_api_key="SG.x"),
            factories=ConnectorFactories(discover=lambda group: []),
        )


def test_registry_plugins_become_channels(tmp_path: Path) -> None:
    seen: list[str] = []

    def discover(group: str) -> list[tuple[str, str]]:
        seen.append(group)
        return [("pigeon", "connectors.fake:RecordingConnector")]

    table = ConnectorFactories(discover=discover)
    built = build_connectors(settings(outbox=tmp_path / "o.jsonl"), factories=table)
    assert seen == ["herald.connectors"]
    assert isinstance(built.connector_for("pigeon"), RecordingConnector)
    assert "pigeon" in table and table.plugins == ["pigeon"]

    broken = ConnectorFactories(discover=lambda group: [("gone", "no_such_module:Thing")])
    with pytest.raises(ConnectorConfigError, match="gone"):
        build_connectors(settings(outbox=tmp_path / "o.jsonl"), factories=broken)


def test_registry_imports_providers_lazily(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from connectors.registry import build_connectors\n"
        "from workers.config import Settings\n"
        f"build_connectors(Settings(_env_file=None, outbox={str(tmp_path / 'o.jsonl')!r},"
        " SENDGRID_API_KEY=None, TWILIO_ACCOUNT_SID=None, WECHAT_APP_ID=None,"
        " WECOM_CORP_ID=None))\n"
        "providers = ('twilio', 'sendgrid', 'connectors.twilio', 'connectors.wecom')\n"
        "loaded = [m for m in providers if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    prefixes = ("SENDGRID", "TWILIO", "WECOM")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, env=env)


def test_registry_wecom_channel_follows_wecom_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = ConnectorFactories(discover=lambda group: [])
    for name in ("WECHAT_APP_ID", "SENDGRID_API_KEY", "TWILIO_ACCOUNT_SID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WECOM_CORP_ID", "ww-corp")
    monkeypatch.setenv("WECOM_CORP_SECRET", "s3cret")
    monkeypatch.setenv("WECOM_AGENT_ID", "1000002")
    monkeypatch.setenv("WECOM_BASE_URL", "http://127.0.0.1:9/")
    built = build_connectors(Settings(_env_file=None, outbox=tmp_path / "o.jsonl"), factories=table)
    assert built.describe() == {"wecom": "wecom", "*": "outbox"}
    wecom = built.connector_for("wecom")
    assert isinstance(wecom, WeComConnector)
    assert (wecom.corp_id, wecom.agent_id, wecom.base_url) == (
        "ww-corp",
        1000002,
        "http://127.0.0.1:9",
    )
    # WeCom userids are not openids: the wechat channel keeps its own rule (outbox here).
    assert built.connector_for("wechat") is built.outbox

    monkeypatch.delenv("WECOM_CORP_ID")
    bare = build_connectors(Settings(_env_file=None, outbox=tmp_path / "o.jsonl"), factories=table)
    assert bare.connector_for("wecom") is bare.outbox


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"wecom_corp_id": "ww"}, "WECOM_CORP_SECRET, WECOM_AGENT_ID"),
        ({"wecom_corp_id": "ww", "wecom_corp_secret": "s"}, "needs WECOM_AGENT_ID"),
        (
            {"wecom_corp_id": "ww", "wecom_corp_secret": "s", "wecom_agent_id": "app-2"},
            "integer id, not 'app-2'",
        ),
    ],
)
def test_registry_wecom_settings_errors_fail_at_build(
    tmp_path: Path, values: dict[str, str], error: str
) -> None:
    with pytest.raises(ConnectorConfigError, match=error):
        build_connectors(
            settings(outbox=tmp_path / "o.jsonl", **values),
            factories=ConnectorFactories(discover=lambda group: []),
        )


def test_wecom_message_shapes() -> None:
    def wecom(**extra: Any) -> Delivery:
        return delivery(1, channel="wecom", to="ZhangSan", **extra)

    dup = {"enable_duplicate_check": 1, "duplicate_check_interval": 1800}
    assert build_message(wecom(subject=None, body="Hi"), 7) == {
        "touser": "ZhangSan",
        "agentid": 7,
        "msgtype": "text",
        "text": {"content": "Hi"},
        **dup,
    }
    # A subject without a link cannot be a card: it heads the text instead of being lost.
    assert build_message(wecom(subject="Cart", body="Hi"), 7)["text"] == {"content": "Cart\n\nHi"}
    card = build_message(wecom(subject="Cart", body="Hi", meta={"url": "https://x.test/c"}), 7)
    assert card == {
        "touser": "ZhangSan",
        "agentid": 7,
        "msgtype": "textcard",
        "textcard": {"title": "Cart", "description": "Hi", "url": "https://x.test/c"},
        **dup,
    }
    with_button = wecom(subject="Cart", meta={"url": "https://x.test/c", "btntxt": "Open"})
    assert build_message(with_button, 7)["textcard"]["btntxt"] == "Open"
    # The duplicate check compares request bodies: a retry must build the same bytes.
    assert orjson.dumps(build_message(wecom(), 7)) == orjson.dumps(build_message(wecom(), 7))


@pytest.mark.parametrize("to", ["@all", "@ALL", "a|b", ""])
def test_wecom_refuses_anything_but_one_member(to: str) -> None:
    with pytest.raises(ConnectorError) as caught:
        build_message(delivery(1, channel="wecom", to=to), 7)
    assert not caught.value.retryable


async def test_connectors_start_and_close_every_distinct_connector(tmp_path: Path) -> None:
    fake = RecordingConnector()
    table = Connectors({"email": fake, "sms": fake}, OutboxConnector(tmp_path / "o.jsonl"))
    await table.start()
    await table.close()
    assert fake.started and fake.closed and len(table.distinct()) == 2


@pytest.mark.parametrize(
    "module",
    [
        "connectors",
        "connectors.base",
        "connectors.errors",
        "connectors.fake",
        "connectors.outbox",
        "connectors.registry",
        "connectors.webhook",
        "connectors.sendgrid",
        "connectors.twilio",
        "connectors.wechat",
        "connectors.wecom",
    ],
)
def test_exported_members_exist(module: str) -> None:
    loaded = importlib.import_module(module)
    for name in getattr(loaded, "__all__", []):
        assert hasattr(loaded, name), f"{module}.{name}"
