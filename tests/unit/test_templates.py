from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from jinja2 import StrictUndefined, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

import engine.templates as templates_module
from engine.errors import ExpressionError, TemplateRenderError
from engine.templates import (
    Rendered,
    TemplateStore,
    check_value,
    compile_inline,
    format_date,
    money,
    render_value,
    value_names,
)

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def context(**profile: Any) -> dict[str, Any]:
    return {
        "profile": {"first_name": "Ann", "locale": "zh-CN", **profile},
        "event": {"type": "cart_add", "properties": {"value": 1234.5, "sku": "X1"}},
        "journey": {"id": "cart", "variant": None},
        "now": NOW,
        "unsubscribe_url": "https://h.example/u?t=1",
    }


def store_of(tmp_path: Path, files: dict[str, str]) -> TemplateStore:
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    return TemplateStore.load(tmp_path)


# --------------------------------------------------------------------------- locales

LOCALE_FILES = {
    "cart.sms.j2": "plain",
    "cart.sms.zh.j2": "zh",
    "cart.sms.zh-CN.j2": "zh-CN",
    "cart.sms.pt_BR.j2": "pt-BR",
}


@pytest.mark.parametrize(
    ("locale", "body"),
    [
        ("zh-CN", "zh-CN"),
        ("zh_CN", "zh-CN"),
        ("ZH-cn", "zh-CN"),
        ("zh_CN.UTF-8", "zh-CN"),
        ("zh-TW", "zh"),
        ("zh-Hant-TW", "zh"),
        ("zh", "zh"),
        ("pt-BR", "pt-BR"),
        ("pt", "plain"),
        ("en", "plain"),
        ("", "plain"),
        (None, "plain"),
    ],
)
def test_locale_fallback_chain(tmp_path: Path, locale: str | None, body: str) -> None:
    store = store_of(tmp_path, LOCALE_FILES)
    assert store.problems == []
    assert store.resolve("cart", "sms", locale).render(context()) == Rendered(None, body)


def test_no_plain_variant_is_a_render_error(tmp_path: Path) -> None:
    store = store_of(tmp_path, {"promo.sms.zh.j2": "促销"})
    assert store.resolve("promo", "sms", "zh-CN").render(context()).body == "促销"
    with pytest.raises(TemplateRenderError, match="no variant for locale 'en'"):
        store.resolve("promo", "sms", "en")


def test_unknown_template(tmp_path: Path) -> None:
    store = store_of(tmp_path, LOCALE_FILES)
    assert store.has("cart", "sms")
    assert not store.has("cart", "email")
    assert not store.has("kart", "sms")
    assert store.names() == {("cart", "sms")}
    with pytest.raises(TemplateRenderError, match="no template 'cart' for channel 'email'"):
        store.resolve("cart", "email", "zh")


def test_empty_and_missing_directories(tmp_path: Path) -> None:
    assert TemplateStore.empty().names() == set()
    store = TemplateStore.load(tmp_path / "absent")
    assert store.names() == set() and store.problems == []


# --------------------------------------------------------------------------- email subject


def test_email_subject_line(tmp_path: Path) -> None:
    store = store_of(
        tmp_path,
        {
            "cart.email.j2": "Subject: {{ profile.first_name }}, you left something\n"
            "\n"
            "Hi {{ profile.first_name }},\n"
            "\n"
            "Your cart is waiting.\n"
            "Unsubscribe: {{ unsubscribe_url }}\n",
        },
    )
    rendered = store.resolve("cart", "email", None).render(context())
    assert rendered.subject == "Ann, you left something"
    assert rendered.body == (
        "Hi Ann,\n\nYour cart is waiting.\nUnsubscribe: https://h.example/u?t=1"
    )


def test_email_subject_without_blank_line_and_crlf(tmp_path: Path) -> None:
    store = store_of(tmp_path, {"a.email.j2": "subject: Hello\r\nBody {{ 1 + 1 }}\r\n"})
    assert store.resolve("a", "email", None).render(context()) == Rendered("Hello", "Body 2")


def test_email_without_subject_and_sms_subject_is_text(tmp_path: Path) -> None:
    store = store_of(tmp_path, {"a.email.j2": "Just a body\n", "a.sms.j2": "Subject: hi\n"})
    assert store.resolve("a", "email", None).render(context()) == Rendered(None, "Just a body")
    assert store.resolve("a", "sms", None).render(context()) == Rendered(None, "Subject: hi")


def test_subject_cannot_carry_newlines_from_data(tmp_path: Path) -> None:
    store = store_of(tmp_path, {"a.email.j2": "Subject: Hi {{ profile.first_name }}\n\nx\n"})
    rendered = store.resolve("a", "email", None).render(context(first_name="Ann\r\nBcc: x"))
    assert rendered.subject == "Hi Ann Bcc: x"


# --------------------------------------------------------------------------- errors


def test_undefined_variable_fails_the_render_with_file_line_and_name(tmp_path: Path) -> None:
    store = store_of(
        tmp_path,
        {
            "cart.email.j2": "Subject: Hi\n\nline 3\nHello {{ profile.frist_name }}\n",
        },
    )
    template = store.resolve("cart", "email", None)
    with pytest.raises(TemplateRenderError) as info:
        template.render(context())
    message = str(info.value)
    assert f"{tmp_path / 'cart.email.j2'}:4:" in message
    assert "'profile.frist_name'" in message
    assert "{{ profile.frist_name }}" in message


def test_undefined_top_level_name(tmp_path: Path) -> None:
    template = compile_inline(None, "Hi {{ customer }}", origin="j.yaml steps.0")
    with pytest.raises(TemplateRenderError, match="undefined variable 'customer'"):
        template.render(context())


def test_undefined_in_subject(tmp_path: Path) -> None:
    store = store_of(tmp_path, {"a.email.j2": "Subject: {{ profile.nope }}\n\nbody\n"})
    with pytest.raises(TemplateRenderError, match=r"a\.email\.j2:1: undefined variable"):
        store.resolve("a", "email", None).render(context())


def test_default_filter_rescues_missing_values() -> None:
    template = compile_inline(None, "Hi {{ profile.nick | default('there') }}", origin="x")
    assert template.render(context()).body == "Hi there"


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("Subject: Hi\n\nok\nstill ok\n{% if %}\n", 5, "Expected an expression"),
        ("Subject: Hi {{ profile.\n\nbody\n", 1, "in subject"),
        ("Subject: Hi\nline 2\n{{ x | nofilter }}\n", 3, "No filter named 'nofilter'"),
        ("a\nb\n{{ ''.__class__.__mro__ }}\n", 3, "'__mro__' is not allowed"),
        ("{% for x in y %}\nno end\n", 1, "endfor"),
    ],
)
def test_syntax_errors_are_problems_with_file_lines(
    tmp_path: Path, text: str, line: int, fragment: str
) -> None:
    store = store_of(tmp_path, {"bad.email.j2": text, "good.sms.j2": "fine"})
    assert [(p.path, p.line, p.col) for p in store.problems] == [
        (str(tmp_path / "bad.email.j2"), line, 1)
    ]
    assert fragment in store.problems[0].message
    assert store.has("good", "sms")
    assert not store.has("bad", "email")


def test_file_name_and_encoding_problems(tmp_path: Path) -> None:
    (tmp_path / "latin.sms.j2").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "README.md").write_text("not a template")
    store = store_of(
        tmp_path,
        {
            "noChannel.j2": "x",
            "too.many.dots.here.j2": "x",
            "dup.sms.zh-CN.j2": "a",
            "dup.sms.zh_CN.j2": "b",
        },
    )
    messages = {Path(p.path).name: p.message for p in store.problems}
    assert set(messages) == {
        "latin.sms.j2",
        "noChannel.j2",
        "too.many.dots.here.j2",
        "dup.sms.zh_CN.j2",
    }
    assert "UTF-8" in messages["latin.sms.j2"]
    assert "NAME.CHANNEL.j2" in messages["noChannel.j2"]
    assert "duplicate" in messages["dup.sms.zh_CN.j2"]


# --------------------------------------------------------------------------- sandbox


def test_sandbox_refuses_dunder_access() -> None:
    with pytest.raises(ExpressionError, match="not allowed"):
        compile_inline(None, "{{ ''.__class__.__mro__ }}", origin="x")
    # Spelled dynamically it gets past the load-time check, and the sandbox stops it.
    template = compile_inline(None, "{{ ''['__cl' ~ 'ass__'] }}", origin="x")
    with pytest.raises(TemplateRenderError, match="SecurityError"):
        template.render(context())


def test_sandbox_refuses_mutation() -> None:
    template = compile_inline(None, "{{ profile.tags.append('x') }}", origin="x")
    ctx = context(tags=[])
    with pytest.raises(TemplateRenderError, match="SecurityError"):
        template.render(ctx)
    assert ctx["profile"]["tags"] == []


# --------------------------------------------------------------------------- content


def test_chinese_text_renders(tmp_path: Path) -> None:
    store = store_of(
        tmp_path,
        {
            "cart.wechat.zh-CN.j2": "{{ profile.first_name }}，您好！购物车里还有 {{ "
            "event.properties.value | money('¥') }} 的商品。\n",
        },
    )
    rendered = store.resolve("cart", "wechat", "zh-CN").render(context(first_name="小明"))
    assert rendered.body == "小明，您好！购物车里还有 ¥1,234.50 的商品。"


def test_file_with_bom(tmp_path: Path) -> None:
    (tmp_path / "a.sms.j2").write_bytes("\ufeff你好".encode())
    store = TemplateStore.load(tmp_path)
    assert store.resolve("a", "sms", None).render(context()).body == "你好"


def test_inline_template() -> None:
    template = compile_inline(
        "Order {{ event.properties.sku }}",
        "Hi {{ profile.first_name }}\n{% if journey.variant %}A{% else %}plain{% endif %}\n",
        origin="rules/journeys/cart.yaml steps.1",
    )
    assert template.render(context()) == Rendered("Order X1", "Hi Ann\nplain")
    assert compile_inline(None, "x", origin="o").render(context()) == Rendered(None, "x")
    assert compile_inline(None, "x", origin="o") is compile_inline(None, "x", origin="o")


@pytest.mark.parametrize(
    ("subject", "body", "line", "fragment"),
    [
        (None, "a\nb\n{{ oops(\n", 3, "unexpected"),
        (None, "{% endif %}", 1, "endif"),
        ("{{ x", "fine", 1, "in subject"),
    ],
)
def test_inline_syntax_errors(subject: str | None, body: str, line: int, fragment: str) -> None:
    with pytest.raises(ExpressionError) as info:
        compile_inline(subject, body, origin="o")
    assert info.value.line == line
    assert fragment in info.value.message


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    "value",
    [5, 2.5, None, True, "plain text", "100% { not a template }", "{# comment only #}"],
)
def test_render_value_passes_non_templates_through(value: Any) -> None:
    assert render_value(value, context()) == value


def test_render_value_renders_templates_recursively() -> None:
    assert render_value("{{ profile.first_name }}!", context()) == "Ann!"
    assert render_value("{% if true %}y{% endif %}", context()) == "y"
    body = {"sku": "{{ event.properties.sku }}", "n": 3, "list": ["{{ 1 + 1 }}", "x"]}
    assert render_value(body, context()) == {"sku": "X1", "n": 3, "list": ["2", "x"]}


def test_render_value_errors() -> None:
    with pytest.raises(TemplateRenderError, match=r"'profile\.nope'"):
        render_value("{{ profile.nope }}", context())
    with pytest.raises(TemplateRenderError):
        render_value("{{ broken", context())


def test_check_value() -> None:
    check_value({"a": ["{{ profile.x }}", 1], "b": "plain"})
    with pytest.raises(ExpressionError):
        check_value({"a": ["{{ broken"]})


# --------------------------------------------------------------------------- filters


@pytest.mark.parametrize(
    ("value", "args", "expected"),
    [
        (1234.5, (), "1,234.50"),
        (0, (), "0.00"),
        (2.675, (), "2.68"),
        ("19.9", (), "19.90"),
        (Decimal("1000000"), ("¥",), "¥1,000,000.00"),
        (-5, ("$",), "-$5.00"),
    ],
)
def test_money(value: Any, args: tuple[str, ...], expected: str) -> None:
    assert money(value, *args) == expected


@pytest.mark.parametrize("value", [None, "abc", True, [1], float("nan")])
def test_money_refuses_non_numbers(value: Any) -> None:
    with pytest.raises(TypeError):
        money(value)


@pytest.mark.parametrize(
    ("value", "args", "expected"),
    [
        ("2026-05-01T23:30:00Z", (), "2026-05-01"),
        ("2026-05-01T23:30:00Z", ("%d/%m %H:%M", "Asia/Shanghai"), "02/05 07:30"),
        (NOW, ("%H:%M",), "12:00"),
        (NOW.timestamp(), ("%Y",), "2026"),
        ("1990-05-07", ("%m-%d", "America/New_York"), "05-07"),  # a date is never shifted
        (date(1990, 5, 7), ("%d.%m.%Y",), "07.05.1990"),
    ],
)
def test_date_filter(value: Any, args: tuple[str, ...], expected: str) -> None:
    assert format_date(value, *args) == expected


def test_filters_in_templates() -> None:
    template = compile_inline(
        None, "{{ event.properties.value | money }} on {{ now | date('%Y-%m-%d') }}", origin="x"
    )
    assert template.render(context()).body == "1,234.50 on 2026-05-01"
    with pytest.raises(TemplateRenderError, match="unknown time zone"):
        compile_inline(None, "{{ now | date('%H', 'Mars/Base') }}", origin="x").render(context())


# --------------------------------------------------------------------------- fast paths

_REFERENCE = ImmutableSandboxedEnvironment(undefined=StrictUndefined)


class _Sub(dict[str, Any]):
    """A dict subclass: not the shortcut's business."""

    def __getattr__(self, name: str) -> Any:
        return f"attr:{name}"


@pytest.mark.parametrize(
    "obj",
    [
        {"first_name": "Ann", "items": "key", "__class__": "key", "keys": 1, "": 2},
        {},
        _Sub(first_name="Ann"),
        "text",
        [1, 2],
        None,
    ],
)
@pytest.mark.parametrize(
    "attribute",
    ["first_name", "missing", "items", "keys", "get", "__class__", "__dict__", "mro", "", "_x"],
)
def test_template_getattr_matches_the_sandbox(obj: Any, attribute: str) -> None:
    def outcome(env: Any) -> Any:
        try:
            value = env.getattr(obj, attribute)
        except Exception as exc:  # pragma: no cover - neither raises for these
            return ("raised", type(exc))
        if isinstance(value, Undefined):
            return ("undefined", type(value), value._undefined_name, value._undefined_hint)
        return ("value", value)

    assert outcome(templates_module._ENV) == outcome(_REFERENCE)


def test_template_names_are_what_it_reads() -> None:
    template = compile_inline(
        "Hi {{ profile.first_name }}",
        "{% set x = 1 %}{{ x }} {{ event.properties.sku }} {{ unsubscribe_url }}",
        origin="t",
    )
    assert template.names == {"profile", "event", "unsubscribe_url"}
    assert compile_inline(None, "plain", origin="t2").names == frozenset()


def test_value_names() -> None:
    assert value_names("no template") == frozenset()
    assert value_names({"a": "{{ profile.x }}", "b": ["{{ now.year }}", 3]}) == {"profile", "now"}
    assert value_names(["{{ broken"]) is None
    assert value_names(None) == frozenset()


def test_templates_still_see_the_environment_globals() -> None:
    body = "{% for i in range(2) %}{{ i }}{% endfor %}"
    body += "{% set ns = namespace(n=dict(a=1)) %}{{ ns.n.a }}"
    assert compile_inline(None, body, origin="globals").render(context()).body == "011"
    assert render_value("{{ range(3) | list }}", context()) == "[0, 1, 2]"
