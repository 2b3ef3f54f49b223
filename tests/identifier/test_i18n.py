"""The sign-in pages in English and the fifteen languages of Konnect's identifier/i18n
(de, es, fr, hi, hr, hu, is, it, ja, nb, nl, pl, pt_PT, ru, sl), our own translations in
services/identifier/i18n/<tag>.json: every page renders in every language with every
string translated, and the language follows `ui_locales`, then `Accept-Language`."""

from __future__ import annotations

import html
import json
import re
import string
from urllib.parse import urlencode

import pytest

from services.identifier.pages import CATALOGS, MESSAGES
from shared import discovery
from tests.support.browser import Browser, sign_in

KONNECT_LANGUAGES = ("de", "es", "fr", "hi", "hr", "hu", "is", "it", "ja", "nb", "nl", "pl",
                     "pt-PT", "ru", "sl")
TAGS = ("en", *KONNECT_LANGUAGES)
CONSENT = "/signin/v1/consent?" + urlencode({
    "client_id": "web-rp", "redirect_uri": "https://rp.example.test/cb", "flow": "oidc",
    "scope": "openid profile offline_access kopano/gc other/x"})
# what each page shows, by message key
PAGES = {
    "/signin/v1/identifier": ("title_identifier", "username", "password", "sign_in", "language"),
    "/signin/v1/chooseaccount": ("title_chooseaccount", "continue_as", "use_another"),
    CONSENT: ("title_consent", "wants", "allow", "cancel", "scope_basic",
              "scope_offline_access", "scope_kopano_gc"),
    "/signin/v1/welcome": ("title_welcome", "welcome_text", "sign_out"),
    "/signin/v1/goodbye": ("title_goodbye", "goodbye_text", "sign_out"),
    "/signin/v1/goodbye?done=1": ("title_goodbye", "signed_out"),
}
ENDSESSION = ("title_endsession", "endsession_text", "sign_out", "stay")
SCRIPT = ("missing", "wrong", "too_many", "failed")  # shown by app.js


def same_as_english(tag: str) -> set:
    return set(CATALOGS[tag].get("_same_as_english", ()))


def placeholders(text: str) -> set:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_the_languages_are_english_and_konnects_fifteen():
    assert set(discovery.UI_LOCALES) == set(TAGS) == set(MESSAGES)
    assert len({name for name in (MESSAGES[t]["language_name"] for t in TAGS)}) == len(TAGS)


@pytest.mark.parametrize("tag", KONNECT_LANGUAGES)
def test_every_string_is_there_and_translated(tag):
    english, ours = MESSAGES["en"], MESSAGES[tag]
    assert ours.keys() == english.keys(), set(ours) ^ set(english)
    allowed = same_as_english(tag)
    assert allowed <= english.keys()
    for key, text in ours.items():
        assert isinstance(text, str) and text.strip() == text and text, key
        assert placeholders(text) == placeholders(english[key]), key
        if key not in allowed:
            assert text != english[key], f"{tag}.{key} is the English text"


def _shown(body: str, text: str) -> bool:
    """`text` on the page as a phrase of its own ("Cancel" is not shown by "Cancelar")."""
    return any(re.search(rf"(?<!\w){re.escape(escaped)}(?!\w)", body)
               for escaped in {html.escape(text, quote=False), html.escape(text)})


def _check_page(resp, tag: str, keys) -> None:
    body = resp.body.decode()
    assert resp.code == 200
    assert f'<html lang="{tag}">' in body and resp.headers["Content-Language"] == tag
    t = MESSAGES[tag]
    for key in keys:
        assert _shown(body, t[key]), f"{tag}: {key} ({t[key]!r}) missing"
        if tag != "en" and key not in same_as_english(tag):
            assert not _shown(body, MESSAGES["en"][key]), f"{tag}: {key} in English"
    script = re.search(r'<script type="application/json" id="messages">(.*?)</script>', body, re.S)
    messages = json.loads(script.group(1))
    assert {k: messages[k] for k in SCRIPT} == {k: t[k] for k in SCRIPT}


@pytest.mark.gen_test
@pytest.mark.parametrize("tag", TAGS)
async def test_every_page_renders_in_every_language(http_client, base_url, tag):
    b = Browser(http_client, base_url)
    for path, keys in PAGES.items():
        resp = await b.fetch(path + ("&" if "?" in path else "?") + urlencode({"lang": tag}))
        _check_page(resp, tag, keys)
        if path == CONSENT:  # a scope without words of its own is named
            other = MESSAGES[tag]["scope_other"].format(scope="other/x")
            assert _shown(resp.body.decode(), other)
    await sign_in(b)
    confirmation = await b.fetch("/signin/v1/identifier/_/endsession?" + urlencode({"lang": tag}))
    _check_page(confirmation, tag, ENDSESSION)


@pytest.mark.gen_test
@pytest.mark.parametrize("tag", TAGS)
async def test_the_language_switch_offers_every_language(http_client, base_url, tag):
    resp = await http_client.fetch(base_url + "/signin/v1/identifier?lang=" + tag)
    body = resp.body.decode()
    for other in TAGS:
        assert f'lang="{other}"' in body and _shown(body, MESSAGES[other]["language_name"])


@pytest.mark.gen_test
@pytest.mark.parametrize("ui_locales, accept, expected", [
    ("", "fr-CA, de;q=0.9", "fr"),
    ("", "ja;q=0.2, ru;q=0.8, en;q=0.5", "ru"),
    ("", "pt-BR, en;q=0.5", "pt-PT"),     # the only Portuguese
    ("", "no, en;q=0.5", "nb"),           # Norwegian: the written form we have
    ("", "zh-CN, sl;q=0.3", "sl"),        # an unsupported first choice is skipped
    ("", "hu;q=0, hr", "hr"),             # q=0: not acceptable
    ("is pl", "nl", "is"),                # ui_locales before Accept-Language
    ("zz PT-pt", "nl", "pt-PT"),          # tags in any case
    ("zz", "hi", "hi"),
    ("", "", "en"),
])
async def test_the_language_follows_ui_locales_then_accept_language(http_client, base_url,
                                                                     ui_locales, accept,
                                                                     expected):
    query = "?" + urlencode({"ui_locales": ui_locales}) if ui_locales else ""
    resp = await http_client.fetch(base_url + "/signin/v1/identifier" + query,
                                   headers={"Accept-Language": accept} if accept else {})
    assert resp.headers["Content-Language"] == expected
    assert _shown(resp.body.decode(), MESSAGES[expected]["title_identifier"])


def test_discovery_lists_every_language(core):
    doc = discovery.document(core.settings, core.keyring, core.scope_definitions)
    assert doc["ui_locales_supported"] == list(TAGS)
