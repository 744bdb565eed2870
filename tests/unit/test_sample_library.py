"""The sample library (`rules/`) over `examples/events.jsonl`: every message, exactly.

This is the offline contract a marketer sees first (`herald simulate rules --events
examples/events.jsonl`), so each scenario of `examples/README.md` is pinned here line by line:
who gets what, on which channel, at which virtual time, and what the text says. The A/B arm is
computed from the split hash and the journey's weights, never hard-coded.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.language.loader import load_rules
from engine.language.rules import RuleSet
from engine.language.steps import SplitStep
from engine.runtime.core import EngineOptions
from engine.runtime.ids import emitted_event_id, message_id, split_point
from engine.unsubscribe import unsubscribe_url
from workers.cmd_simulate import simulate_lines

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "rules"
EVENTS = REPO / "examples" / "events.jsonl"
PROFILES = REPO / "examples" / "profiles.jsonl"

Line = dict[str, Any]
Row = tuple[str, str, str, str, str, str]

# The cast of examples/README.md, written out by hand: the oracle for every `to`.
ADDRESS: dict[str, dict[str, str]] = {
    "email": {
        "u1": "li.wei@example.cn",
        "u2": "wang.fang@example.cn",
        "u3": "emily.carter@example.com",
        "u4": "james.miller@example.com",
        "u6": "sophie.turner@example.co.uk",
        "u7": "oliver.brown@acme.example",
        "u8": "zhang.min@example.cn",
        "u9": "hannah.lee@example.com",
        "u10": "robert.evans@example.co.uk",
        "u11": "liu.yang@example.cn",
        "u12": "ana.r@example.com",
        "u13": "noah.kim@example.com",
    },
    "sms": {
        "u1": "+8613800000001",
        "u2": "+8613800000002",
        "u4": "+12125550104",
        "u10": "+447700900110",
    },
    "wechat": {"u2": "oNW-u2-Kp9x", "u5": "oNW-u5-Zm3c"},
    "webhook": {"u7": "https://crm.example.com/hooks/hot-lead"},
}
ZH_USERS = {"u1", "u2", "u5", "u8", "u11"}
CJK = re.compile(r"[\u4e00-\u9fff]")


def row(at: str, user: str, journey: str, step: str, channel: str) -> Row:
    """One expected line; `at` is "YYYY-MM-DD HH:MM" UTC."""
    stamp = datetime.fromisoformat(at).replace(tzinfo=UTC).isoformat()
    return (stamp, user, journey, step, channel, ADDRESS[channel][user])


@cache
def library() -> RuleSet:
    return load_rules(RULES)


def arm(user: str) -> str:
    """The welcome_series arm of a user, from the split hash and the journey's own weights."""
    journey = library().journeys["welcome_series"]
    split = journey.steps[0]
    assert isinstance(split, SplitStep)
    total = sum(a.weight for a in split.split)
    point = split_point("welcome_series", user)
    cumulative = 0.0
    for candidate in split.split:
        cumulative += candidate.weight / total
        if point < cumulative:
            return candidate.name
    return split.split[-1].name


def welcome(at: str, user: str, step: str) -> Row:
    first = f"steps.0.split.{arm(user)}.steps.0"
    return row(at, user, "welcome_series", first if step == "split" else step, "email")


WELCOME = [
    welcome("2026-05-01 09:00", "u6", "split"),
    welcome("2026-05-01 14:00", "u3", "split"),
    welcome("2026-05-02 08:00", "u7", "split"),
    welcome("2026-05-02 13:00", "u9", "split"),
    welcome("2026-05-03 09:00", "u6", "tips"),
    welcome("2026-05-03 14:00", "u3", "tips"),
    welcome("2026-05-04 08:00", "u7", "tips"),
    welcome("2026-05-04 09:00", "u13", "split"),
    welcome("2026-05-04 13:00", "u9", "tips"),
    welcome("2026-05-06 09:00", "u13", "tips"),
]
CART = [
    row("2026-05-01 08:35", "u1", "cart_abandonment", "steps.1", "email"),
    row("2026-05-02 08:35", "u1", "cart_abandonment", "steps.3.branch.0.steps.0", "sms"),
    # u3's reminder fell in New York quiet hours (23:15 local): deferred to 08:00 local
    row("2026-05-04 12:00", "u3", "cart_abandonment", "steps.1", "email"),
    row("2026-05-04 13:30", "u4", "cart_abandonment", "steps.1", "email"),
    row("2026-05-05 05:30", "u5", "cart_abandonment", "steps.3.branch.else.steps.0", "wechat"),
]
BIRTHDAY = [
    row("2026-05-03 01:00", "u2", "birthday_greeting", "steps.1", "sms"),
    row("2026-05-03 01:00", "u2", "birthday_greeting", "steps.2", "wechat"),
]
WINBACK = [row("2026-05-08 09:30", "u10", "winback_inactive", "steps.0", "email")]
NUDGE = "steps.1.branch.0.steps.0"
RFM = [
    row("2026-04-09 10:00", "u10", "rfm_potential_nudge", NUDGE, "email"),
    # due 07:20 Shanghai, inside quiet hours (21:00-09:00): deferred to 09:00 local
    row("2026-05-05 01:00", "u2", "rfm_potential_nudge", NUDGE, "email"),
    row("2026-05-05 09:35", "u6", "rfm_potential_nudge", NUDGE, "email"),
    row("2026-05-06 16:00", "u4", "rfm_champions_vip", "steps.0", "email"),
    row("2026-05-07 05:00", "u1", "rfm_champions_vip", "steps.0", "email"),
    row("2026-05-08 09:30", "u10", "rfm_hibernating_reactivate", "steps.0", "email"),
    row("2026-05-15 09:30", "u10", "rfm_hibernating_reactivate", "steps.2", "sms"),
    row("2026-05-11 02:00", "u11", "rfm_at_risk_rescue", "steps.0", "email"),
]
LEAD = [
    row("2026-05-05 09:00", "u7", "lead_handoff_sales", "steps.1", "webhook"),
    row("2026-05-05 09:00", "u7", "lead_handoff_intro", "steps.0", "email"),
]
FEEDBACK = [
    row("2026-04-10 02:00", "u11", "post_purchase_feedback", "steps.2", "email"),
    row("2026-04-10 09:00", "u10", "post_purchase_feedback", "steps.2", "email"),
    row("2026-05-05 02:00", "u2", "post_purchase_feedback", "steps.2", "email"),
    row("2026-05-06 09:00", "u6", "post_purchase_feedback", "steps.2", "email"),
    row("2026-05-06 14:00", "u4", "post_purchase_feedback", "steps.2", "email"),
    row("2026-05-07 02:00", "u1", "post_purchase_feedback", "steps.2", "email"),
]
THANKS = [
    row("2026-04-06 11:00", "u10", "first_purchase_thanks", "steps.1", "email"),
    row("2026-04-06 12:00", "u11", "first_purchase_thanks", "steps.1", "email"),
    row("2026-05-02 00:20", "u2", "first_purchase_thanks", "steps.1", "email"),
    row("2026-05-02 10:35", "u6", "first_purchase_thanks", "steps.1", "email"),
    row("2026-05-02 15:30", "u4", "first_purchase_thanks", "steps.1", "email"),
    row("2026-05-03 04:00", "u1", "first_purchase_thanks", "steps.1", "email"),
]
BROWSE = [  # u9's 20:00 reminder on 05-03 is over the 1-a-day cap
    row("2026-05-03 16:00", "u9", "browse_abandonment", "steps.1", "email"),
    row("2026-05-05 17:00", "u9", "browse_abandonment", "steps.1", "email"),
]
VIP = [row("2026-05-02 09:35", "u6", "vip_upgrade", "steps.1", "email")]
SHIPPING = [
    row("2026-05-03 08:00", "u2", "shipping_update", "steps.0.branch.0.steps.0", "wechat"),
    row("2026-05-03 15:00", "u4", "shipping_update", "steps.0.branch.else.steps.0", "sms"),
]
REVIEW = [
    row("2026-05-06 04:00", "u2", "review_request_sms", "steps.1", "sms"),
    row("2026-05-07 15:00", "u4", "review_request_sms", "steps.1", "sms"),
]
PRICE_DROP = [
    row("2026-05-06 15:00", "u12", "price_drop_alert", "steps.0", "email"),
    # 00:30 London is quiet: deferred to 08:00 local
    row("2026-05-08 07:00", "u6", "price_drop_alert", "steps.0", "email"),
]
TRIAL = [row("2026-05-06 02:00", "u8", "trial_expiring", "steps.0", "email")]
DIGEST = [
    row(f"2026-{day} 08:00", user, "weekly_digest", "steps.0", "email")
    for day in ("04-13", "04-20", "04-27", "05-04", "05-11")
    for user in ("u12", "u2")
]

SCENARIOS: dict[str, list[Row]] = {
    "welcome_series": WELCOME,
    "cart_abandonment": CART,
    "birthday_greeting": BIRTHDAY,
    "winback_inactive": WINBACK,
    "rfm": RFM,
    "lead_scoring": LEAD,
    "post_purchase_feedback": FEEDBACK,
    "first_purchase_thanks": THANKS,
    "browse_abandonment": BROWSE,
    "vip_upgrade": VIP,
    "shipping_update": SHIPPING,
    "review_request_sms": REVIEW,
    "price_drop_alert": PRICE_DROP,
    "trial_expiring": TRIAL,
    "weekly_digest": DIGEST,
}
EXPECTED: list[Row] = [r for rows in SCENARIOS.values() for r in rows]
TOTAL = 60


@pytest.fixture(scope="module")
def lines() -> list[Line]:
    out, notes = simulate_lines(RULES, EVENTS)
    assert not [n for n in notes if "FAILED" in n], notes  # no template may fail
    return out


def key(line: Line) -> Row:
    return (
        line["at"],
        line["user_id"],
        line["journey"],
        line["step"],
        line["channel"],
        line["to"],
    )


def find(lines: list[Line], journey: str, user: str, step: str | None = None) -> list[Line]:
    return [
        ln
        for ln in lines
        if ln["journey"] == journey and ln["user_id"] == user and step in (None, ln["step"])
    ]


def only(lines: list[Line], journey: str, user: str, step: str | None = None) -> Line:
    found = find(lines, journey, user, step)
    assert len(found) == 1, found
    return found[0]


# ---------------------------------------------------------------------------- the table


def test_expected_table_is_the_readme_total() -> None:
    assert len(EXPECTED) == TOTAL
    assert len(set(EXPECTED)) == TOTAL


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_scenario_lines(lines: list[Line], scenario: str) -> None:
    got = Counter(key(ln) for ln in lines)
    missing = [r for r in SCENARIOS[scenario] if got[r] == 0]
    assert not missing, f"{scenario}: missing {missing}"


def test_exact_output_no_unexpected_lines(lines: list[Line]) -> None:
    assert len(lines) == TOTAL
    got = Counter(key(ln) for ln in lines)
    want = Counter(EXPECTED)
    assert got - want == Counter(), f"unexpected: {sorted(got - want)}"
    assert want - got == Counter(), f"missing: {sorted(want - got)}"


def test_channel_totals(lines: list[Line]) -> None:
    assert Counter(ln["channel"] for ln in lines) == {
        "email": 50,
        "sms": 6,
        "wechat": 3,
        "webhook": 1,
    }


def test_lines_come_out_in_time_order(lines: list[Line]) -> None:
    stamps = [ln["at"] for ln in lines]
    assert stamps == sorted(stamps)


def test_spec_keys_only(lines: list[Line]) -> None:
    keys = ["at", "user_id", "journey", "step", "channel", "to", "message_id", "variant"]
    for ln in lines:
        assert list(ln) == [*keys, "subject", "body"]


# ---------------------------------------------------------------------------- A/B


def test_welcome_variants_follow_the_split_hash(lines: list[Line]) -> None:
    users = {"u3", "u6", "u7", "u9", "u13"}
    for ln in lines:
        if ln["journey"] == "welcome_series":
            assert ln["variant"] == arm(ln["user_id"])
            if ln["step"] != "tips":
                assert ln["step"] == f"steps.0.split.{ln['variant']}.steps.0"
        else:
            assert ln["variant"] is None, ln
    assert {ln["user_id"] for ln in lines if ln["journey"] == "welcome_series"} == users


@pytest.mark.parametrize("user", ["u3", "u6", "u7", "u9", "u13"])
def test_welcome_subject_matches_the_arm(lines: list[Line], user: str) -> None:
    first = only(lines, "welcome_series", user, f"steps.0.split.{arm(user)}.steps.0")
    if arm(user) == "A":
        assert first["subject"].startswith("Welcome to Northwind")
    else:
        assert first["subject"] == "Your 10% welcome gift is inside"
    assert "WELCOME10" in first["body"]
    tips = only(lines, "welcome_series", user, "tips")
    assert tips["subject"] == "3 tips to get the most out of Northwind"


def test_u5_without_email_gets_no_welcome(lines: list[Line]) -> None:
    assert find(lines, "welcome_series", "u5") == []
    assert [ln["channel"] for ln in lines if ln["user_id"] == "u5"] == ["wechat"]


# ---------------------------------------------------------------------------- content


def test_every_email_has_a_subject_and_its_unsubscribe_link(lines: list[Line]) -> None:
    options = EngineOptions()
    for ln in lines:
        if ln["channel"] != "email":
            assert ln["subject"] is None, ln
            continue
        assert ln["subject"], ln
        link = unsubscribe_url(
            options.unsubscribe_base_url, options.unsubscribe_secret, ln["user_id"], "email"
        )
        assert link in ln["body"], (ln["journey"], ln["user_id"])


def test_no_template_placeholder_leaks(lines: list[Line]) -> None:
    for ln in lines:
        text = f"{ln['subject'] or ''}\n{ln['body']}"
        assert "{{" not in text and "{%" not in text and "None" not in text, ln


def test_chinese_for_zh_cn_users_english_for_others(lines: list[Line]) -> None:
    for ln in lines:
        if ln["channel"] == "webhook":
            continue
        text = f"{ln['subject'] or ''}{ln['body']}"
        if ln["user_id"] in ZH_USERS:
            assert CJK.search(text), (ln["journey"], ln["user_id"], ln["step"])
        else:
            assert not CJK.search(text), (ln["journey"], ln["user_id"], ln["step"])


def test_locale_fallback_to_language_file(lines: list[Line]) -> None:
    # first_purchase_thanks has only a .zh.j2 variant: zh-CN users fall back to it
    assert only(lines, "first_purchase_thanks", "u2")["subject"] == "感谢你的第一笔订单！"
    assert only(lines, "first_purchase_thanks", "u6")["subject"] == (
        "Thank you for your first order!"
    )
    zh = [ln["subject"] for ln in find(lines, "weekly_digest", "u2")]
    assert zh[0] == "北风周刊 · 2026-04-13"
    en = [ln["subject"] for ln in find(lines, "weekly_digest", "u12")]
    assert en[0] == "Northwind weekly - 13 Apr 2026"
    assert en[-1] == "Northwind weekly - 11 May 2026"


def test_birthday_coupon_in_sms_and_wechat(lines: list[Line]) -> None:
    sms = only(lines, "birthday_greeting", "u2", "steps.1")
    wechat = only(lines, "birthday_greeting", "u2", "steps.2")
    for ln in (sms, wechat):
        assert "BDAY2026-U2" in ln["body"]
        assert "芳" in ln["body"]
    assert sms["body"].startswith("【北风商城】")
    assert find(lines, "birthday_greeting", "u3") == []  # no sms consent, no openid


@pytest.mark.parametrize(
    ("journey", "user", "code"),
    [
        ("winback_inactive", "u10", "COMEBACK15"),
        ("rfm_potential_nudge", "u6", "NEXT10"),
        ("rfm_potential_nudge", "u2", "NEXT10"),
        ("rfm_at_risk_rescue", "u11", "RESCUE20"),
        ("rfm_hibernating_reactivate", "u10", "HELLOAGAIN25"),
    ],
)
def test_coupon_codes(lines: list[Line], journey: str, user: str, code: str) -> None:
    assert any(code in ln["body"] for ln in find(lines, journey, user))


def test_cart_messages_name_the_product(lines: list[Line]) -> None:
    u1 = only(lines, "cart_abandonment", "u1", "steps.1")
    assert u1["subject"] == "你的购物车里还有「龙井茶礼盒」"
    assert "899 CNY" in u1["body"]
    vip = only(lines, "cart_abandonment", "u1", "steps.3.branch.0.steps.0")
    assert "尊敬的VIP会员伟" in vip["body"]
    u3 = only(lines, "cart_abandonment", "u3")
    assert u3["subject"] == "You left Cedar & Fig candle in your cart"
    assert only(lines, "cart_abandonment", "u5")["body"].startswith("杰，你购物车里的「电饭煲」")


def test_fallback_greeting_without_first_name(lines: list[Line]) -> None:
    assert "Hi there," in only(lines, "price_drop_alert", "u12")["body"]


def test_lead_handoff_webhook_and_chained_intro(lines: list[Line]) -> None:
    hook = only(lines, "lead_handoff_sales", "u7")
    assert hook["subject"] is None
    assert json.loads(hook["body"]) == {
        "user_id": "u7",
        "email": "oliver.brown@acme.example",
        "first_name": "Oliver",
        "company": "Acme Ltd",
        "lead_score": "58",
        "source": "herald",
    }
    intro = only(lines, "lead_handoff_intro", "u7")
    assert intro["subject"] == "Oliver, your Northwind specialist will call you"
    assert "for Acme Ltd." in intro["body"]
    assert find(lines, "lead_handoff_sales", "u99") == []


@pytest.mark.parametrize(
    ("user", "order"),
    [("u10", "o-1001"), ("u11", "o-1002"), ("u2", "o-2001"), ("u6", "o-2002"), ("u4", "o-2003")],
)
def test_feedback_names_the_first_order(lines: list[Line], user: str, order: str) -> None:
    ln = only(lines, "post_purchase_feedback", user)
    assert order in ln["subject"]
    assert f"feedback?order={order}" in ln["body"]


def test_transactional_details(lines: list[Line]) -> None:
    assert "SF1234567890" in only(lines, "shipping_update", "u2")["body"]
    assert "1Z999AA10123456784" in only(lines, "shipping_update", "u4")["body"]
    assert "o-2001" in only(lines, "review_request_sms", "u2")["body"]
    assert "o-2003" in only(lines, "review_request_sms", "u4")["body"]
    assert only(lines, "price_drop_alert", "u6")["subject"] == (
        "Price drop: Noise-cancelling headphones is now 199 GBP"
    )
    assert only(lines, "trial_expiring", "u8")["subject"] == "你的北风Pro试用明天到期"


# ---------------------------------------------------------------------------- determinism


def test_two_runs_are_byte_identical(lines: list[Line]) -> None:
    again, _ = simulate_lines(RULES, EVENTS)
    assert b"".join(orjson.dumps(ln) + b"\n" for ln in again) == b"".join(
        orjson.dumps(ln) + b"\n" for ln in lines
    )


def test_message_ids_are_unique_and_hex(lines: list[Line]) -> None:
    ids = [ln["message_id"] for ln in lines]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


def test_message_ids_are_derived_from_the_entry(lines: list[Line]) -> None:
    versions = library().versions

    def mid(journey: str, user: str, entry: str, step: str) -> str:
        return message_id(journey, versions[journey], user, entry, step)

    by_key = {
        (ln["journey"], ln["user_id"], ln["step"], ln["at"]): ln["message_id"] for ln in lines
    }
    handoff = "segment:hot_lead:enter:2026-05-05T09:00:00+00:00"
    emitted = emitted_event_id(mid("lead_handoff_sales", "u7", handoff, "steps.2"))
    expected = {
        ("cart_abandonment", "u1", "steps.1", "2026-05-01T08:35:00+00:00"): mid(
            "cart_abandonment", "u1", "e-007", "steps.1"
        ),
        ("birthday_greeting", "u2", "steps.1", "2026-05-03T01:00:00+00:00"): mid(
            "birthday_greeting", "u2", "date:2026-05-03T01:00:00Z", "steps.1"
        ),
        ("weekly_digest", "u12", "steps.0", "2026-04-13T08:00:00+00:00"): mid(
            "weekly_digest", "u12", "schedule:2026-04-13T08:00:00Z", "steps.0"
        ),
        ("winback_inactive", "u10", "steps.0", "2026-05-08T09:30:00+00:00"): mid(
            "winback_inactive", "u10", "inactivity:2026-05-08T09:30:00Z", "steps.0"
        ),
        ("lead_handoff_sales", "u7", "steps.1", "2026-05-05T09:00:00+00:00"): mid(
            "lead_handoff_sales", "u7", handoff, "steps.1"
        ),
        ("lead_handoff_intro", "u7", "steps.0", "2026-05-05T09:00:00+00:00"): mid(
            "lead_handoff_intro", "u7", emitted, "steps.0"
        ),
        ("welcome_series", "u7", "tips", "2026-05-04T08:00:00+00:00"): mid(
            "welcome_series", "u7", "e-017", "tips"
        ),
    }
    for k, want in expected.items():
        assert by_key[k] == want, k


def test_profiles_file_on_top_changes_nothing(lines: list[Line]) -> None:
    """examples/README.md documents it: the identify events already carry the same traits."""
    with_profiles, _ = simulate_lines(RULES, EVENTS, profiles_path=PROFILES)
    assert with_profiles == lines


def test_events_file_is_self_contained_and_sorted() -> None:
    stamps: list[str] = []
    identified: dict[str, str] = {}
    first_seen: dict[str, str] = {}
    for raw in EVENTS.read_text(encoding="utf-8").splitlines():
        doc = json.loads(raw)
        user = doc.get("user_id") or doc["userId"]
        stamps.append(doc["timestamp"])
        if doc.get("event_id", "").startswith("id-"):
            identified[user] = doc["timestamp"]
        else:
            first_seen.setdefault(user, doc["timestamp"])
    assert stamps == sorted(stamps)
    profile_users = {
        json.loads(raw)["user_id"] for raw in PROFILES.read_text(encoding="utf-8").splitlines()
    }
    assert set(identified) == profile_users
    for user, when in identified.items():
        assert when < first_seen[user], user


def test_hot_path_indexes_of_the_sample_library() -> None:
    # What lets most inputs skip work: these must follow the rules, not a list kept by hand.
    from engine.runtime.core import Engine

    engine = Engine(load_rules(RULES))
    assert engine.watches_none_of({"metrics.page_views_30d"})
    assert engine.watches_none_of({"first_name", "metrics.cart_adds_30d"})
    assert not engine.watches_none_of({"lead_score"})  # hot_lead
    assert not engine.watches_none_of({"birthday"})  # birthday_greeting
    assert not engine.watches_none_of({"metrics.spend_365d"})  # big_spenders
    assert not engine.watches_none_of({"*"})
    assert {"cart_abandonment", "browse_abandonment", "rfm_hibernating_reactivate"} <= (
        engine.listeners["purchase"]
    )
    assert "page_view" not in engine.listeners
    assert [jid for jid, _span in engine.idle_spans] == ["winback_inactive"]
