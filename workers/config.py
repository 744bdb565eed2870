"""Herald's settings, and the faust configuration that works against both Kafka and Tansu.

Everything is read from the environment (`HERALD_` prefix, `.env` too); provider credentials
keep the names fixed in runtime.md, which are not all `HERALD_`-prefixed.

What probing faust-streaming 0.15.3 + aiokafka 0.14 against the embedded Tansu 0.6.0 broker
taught us (each point is why a value in `faust_app_settings` is what it is):

* Group join on Tansu takes about half the session timeout (1 s minimum): the coordinator
  waits that long for more members before it completes the first JoinGroup. Measured with a
  bare aiokafka consumer: 60 s -> ~30 s, 45 s -> 23 s, 10 s -> 5 s, 6 s -> 3 s, 3 s -> 2 s,
  2 s -> 1 s. A second member joining, or one leaving, costs a rebalance of the same order
  (~4 s at 6 s). Apache Kafka refuses session timeouts under its
  `group.min.session.timeout.ms` (6 s by default), so 6 s is the default here and dev/test
  runs against the embedded broker may go lower through `HERALD_SESSION_TIMEOUT`.
  faust adds ~1 s of its own at start (the conductor waits for tables to register), so a
  worker sees its first record ~4.6 s after start at 6 s, ~2.7 s at 2 s.
* faust runs the aiokafka consumer in its own thread, so heartbeats keep flowing while
  agents are busy; a heartbeat interval of a sixth of the session timeout is safe.
* Idempotent and transactional producers do not work on Tansu (InitProducerId answers
  UnknownError), so `processing_guarantee` must stay `at_least_once` and producers must not set
  `enable_idempotence`. Exactly-once effects are Herald's job (dedupe by message id).
* ListOffsets(LATEST) on Tansu answers "base offset of the last batch + 1", not the high
  watermark, once a batch holds more than one record. `auto_offset_reset='latest'` and
  `seek_to_end` are therefore wrong on Tansu; we always use `earliest`, and lag must be taken
  from the fetch high watermark (`consumer.highwater(tp)`), not from `end_offsets()`.
* Consumer-group offset commits work (faust commits; a new consumer in the group sees them
  via `consumer.committed(tp)`). The admin `list_consumer_group_offsets` call fails to decode
  Tansu's answer; read committed offsets with a consumer instead.
* Topic configs (`cleanup.policy=compact`) are stored and described, but Tansu's memory
  engine never compacts; nothing in Herald may rely on compaction.
* Tansu auto-creates any topic named in a metadata request (producer send, consumer
  subscribe, admin describe) with its own default partition count (4 observed), so
  `workers.topics.ensure_topics` must run before any client touches Herald's topics.
  faust only declares its internal topics (leader, changelog, `internal=True` topics); it
  does that fine on Tansu, but we disable the leader topic because nothing uses it.
* `stream.take(n, within=s)` yields full batches as records arrive and the remainder after
  `s` seconds; `app.topic(..., value_serializer='raw')` hands agents `bytes`.
* faust rejects `web_port=0` (range 1..65535), so each side-by-side worker either gets a
  real free port or no faust web server at all (Herald serves /metrics itself).
* faust creates `datadir` even with the memory store, relative to the working directory
  unless told otherwise, so it is placed under `state_dir`.
* Tansu does not answer a waiting Fetch when records arrive: it holds it for the consumer's
  whole `fetch.max.wait` (records then wait ~U(0, max_wait/2) -- measured p50/max per hop:
  1500 ms -> 436/735 ms, 500 -> 126/249, 100 -> 24/54, 10 -> 4/11). faust hard-codes
  1500 ms, which alone would put ~0.9 s into event -> processor -> dispatcher. So
  `make_faust_app` swaps in a transport whose consumer uses `settings.fetch_max_wait_ms`
  (20 ms default); plain aiokafka consumers should pass the same value. Real Kafka answers
  as soon as data arrives, so the small wait only costs a few idle round trips there.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MiB = 1024 * 1024


class Settings(BaseSettings):
    """Runtime configuration; names and defaults are the contract in runtime.md."""

    model_config = SettingsConfigDict(
        env_prefix="HERALD_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
    )

    kafka_url: str = "kafka://127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6379/0"
    rules_dir: Path = Path("rules")
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    metrics_port: int = Field(default=0, ge=0, le=65535)
    partitions: int = Field(default=8, ge=1)
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    outbox: Path = Path(".herald/outbox.jsonl")
    lateness: str = "1h"
    state_dir: Path = Path(".herald")
    max_body_bytes: int = Field(default=MiB, ge=1)
    # Kafka consumer-group session timeout in seconds (see the module docstring: on Tansu the
    # group join takes about half of it; Apache Kafka refuses less than 6 s by default).
    session_timeout: float = Field(default=6.0, gt=0)
    # Longest a consumer's fetch waits on the broker (see the module docstring: on Tansu this
    # is added latency per hop, since Tansu never ends a waiting fetch early).
    fetch_max_wait_ms: int = Field(default=20, ge=0)
    # `wall`: decisions use the wall clock (production). `event`: each partition's clock is the
    # newest event time it has seen, so a replay of historic events (and `herald demo`) runs
    # its timers at the events' own times, exactly like `herald simulate`.
    clock: Literal["wall", "event"] = "wall"
    # Call the URLs of `webhook` steps for real. Off by default, so dev machines and CI never
    # reach out to a CRM; webhook actions then land in the outbox like any unconfigured channel.
    webhooks_live: bool = False
    # Secret signing unsubscribe links, and the public base URL they point at.
    unsubscribe_secret: str = "herald-dev-unsubscribe-secret"
    public_url: str = "http://127.0.0.1:8080"

    sendgrid_api_key: str | None = Field(default=None, validation_alias="SENDGRID_API_KEY")
    email_from: str | None = Field(default=None, validation_alias="HERALD_EMAIL_FROM")
    twilio_account_sid: str | None = Field(default=None, validation_alias="TWILIO_ACCOUNT_SID")
    twilio_auth_token: str | None = Field(default=None, validation_alias="TWILIO_AUTH_TOKEN")
    twilio_from: str | None = Field(default=None, validation_alias="TWILIO_FROM")
    wechat_app_id: str | None = Field(default=None, validation_alias="WECHAT_APP_ID")
    wechat_app_secret: str | None = Field(default=None, validation_alias="WECHAT_APP_SECRET")
    wecom_corp_id: str | None = Field(default=None, validation_alias="WECOM_CORP_ID")
    wecom_corp_secret: str | None = Field(default=None, validation_alias="WECOM_CORP_SECRET")
    wecom_agent_id: str | None = Field(default=None, validation_alias="WECOM_AGENT_ID")
    # SendGrid Event Webhook verification key (Mail Settings > Signed Event Webhook), base64 DER.
    sendgrid_webhook_public_key: str | None = Field(
        default=None, validation_alias="SENDGRID_WEBHOOK_PUBLIC_KEY"
    )
    sendgrid_base_url: str | None = Field(default=None, validation_alias="SENDGRID_BASE_URL")
    twilio_base_url: str | None = Field(default=None, validation_alias="TWILIO_BASE_URL")
    wechat_base_url: str | None = Field(default=None, validation_alias="WECHAT_BASE_URL")
    wecom_base_url: str | None = Field(default=None, validation_alias="WECOM_BASE_URL")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        # The environment carries one comma-separated string; an empty one means "no keys".
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value


def kafka_bootstrap(settings: Settings) -> str:
    """`kafka://h:p[,h2:p2]` (or `;`-separated URLs, as faust writes them) -> `h:p,h2:p2`."""
    servers: list[str] = []
    for raw in settings.kafka_url.replace(";", ",").split(","):
        item = raw.strip()
        if not item:
            continue
        if "://" in item:
            item = item.split("://", 1)[1]
        item = item.rstrip("/")
        if ":" not in item.rsplit("]", 1)[-1]:
            item = f"{item}:9092"
        servers.append(item)
    if not servers:
        raise ValueError(f"no Kafka servers in HERALD_KAFKA_URL={settings.kafka_url!r}")
    return ",".join(servers)


def faust_app_settings(settings: Settings, *, role: str, web_port: int) -> dict[str, Any]:
    """Keyword arguments for `faust.App(**kwargs)` (the app id included) for one worker role.

    Workers of the same role share the consumer group `herald-<role>`, so any number of them
    side by side split the partitions. `web_port=0` turns faust's own web server off (faust
    cannot bind port 0); pass `free_port()` to get one.
    """
    session = settings.session_timeout
    # faust creates its datadir with a plain mkdir, so the parent has to exist already.
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    return {
        "id": f"herald-{role}",
        "broker": [f"kafka://{hp}" for hp in kafka_bootstrap(settings).split(",")],
        "broker_client_id": f"herald-{role}",
        "store": "memory://",
        "datadir": str(settings.state_dir / "faust"),
        "autodiscover": False,
        "processing_guarantee": "at_least_once",
        "consumer_auto_offset_reset": "earliest",
        "broker_session_timeout": session,
        "broker_heartbeat_interval": max(session / 6.0, 0.1),
        "broker_rebalance_timeout": max(2.0 * session, 10.0),
        "broker_commit_every": 1000,
        "broker_commit_interval": 1.0,
        "producer_acks": -1,
        "key_serializer": "raw",
        "value_serializer": "raw",
        "topic_partitions": settings.partitions,
        "topic_replication_factor": 1,
        "topic_allow_declare": True,
        "topic_disable_leader": True,
        "web_enabled": web_port > 0,
        "web_port": web_port if web_port > 0 else 6066,
        "web_bind": "127.0.0.1",
        "web_host": "127.0.0.1",
        "worker_redirect_stdouts": False,
    }


def make_faust_app(settings: Settings, *, role: str, web_port: int = 0) -> Any:
    """A `faust.App` for `role` with `faust_app_settings`, fetching with a short max wait.

    Use this rather than `faust.App(**faust_app_settings(...))` in workers: it is the same app
    with its consumer's fetch wait lowered from faust's fixed 1500 ms (see the module docstring).
    faust is imported here, not at module level, so the API and CLI don't pay for it.
    """
    import faust

    app = faust.App(**faust_app_settings(settings, role=role, web_port=web_port))
    transport_cls = _low_latency_transport(settings.fetch_max_wait_ms)
    app.transport = transport_cls(app.conf.broker_consumer, app)
    return app


@cache
def _low_latency_transport(fetch_max_wait_ms: int) -> Any:
    from faust.transport.drivers import aiokafka as driver

    class _Thread(driver.AIOKafkaConsumerThread):  # type: ignore[misc]
        def _create_worker_consumer(self, transport: Any) -> Any:
            consumer = super()._create_worker_consumer(transport)
            # faust passes fetch_max_wait_ms=1500 with no setting to change it; aiokafka reads
            # this attribute when the consumer starts (checked by the integration tests).
            if not hasattr(consumer, "_fetch_max_wait_ms"):
                raise RuntimeError("aiokafka changed: cannot set the consumer's fetch wait")
            consumer._fetch_max_wait_ms = fetch_max_wait_ms
            return consumer

    class _Consumer(driver.Consumer):  # type: ignore[misc]
        def _new_consumer_thread(self) -> Any:
            return _Thread(self, loop=self.loop, beacon=self.beacon)

    class _Transport(driver.Transport):  # type: ignore[misc]
        Consumer = _Consumer

    return _Transport
