"""The whole group as `make run` starts it, with neither a signing key nor an encryption
secret configured (Konnect's `konnectd serve` without --signing-private-key and
--encryption-secret): one issuer all the same. Every process says so at start-up; a sign-in
at the identifier is honoured by authorize, the code is redeemed at a token process, and
the tokens are accepted by userinfo and by every token process, also one restarted since
(shared/ephemeral.py)."""

from __future__ import annotations

import os
import signal

import pytest
import requests

from tests.support.agent import Agent
from tests.support.group import PROGRAMS, Group

pytestmark = pytest.mark.group

WARNING = "NO --SIGNING-PRIVATE-KEY AND --ENCRYPTION-SECRET CONFIGURED"


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    # set and empty: make run fills in neither its dev keys nor its secret
    with Group(tmp_path_factory.mktemp("group-no-keys"), token_procs=2, extra_env={
            "KONNECTD_SIGNING_PRIVATE_KEY": "", "KONNECTD_ENCRYPTION_SECRET": ""}) as g:
        yield g


def token_process_answers(g: Group, access_token: str, tries: int = 40) -> dict[str, bool]:
    """Introspection at the token processes' own address (behind the proxy's back), each
    request on a new connection so that SO_REUSEPORT spreads them: the process that answered
    (its request-id prefix: a process's own when the caller sent none) -> `active`."""
    demo = g.demo
    seen: dict[str, bool] = {}
    for _ in range(tries):
        with requests.Session() as s:
            s.trust_env = False
            resp = s.post(g.listen("token") + "/konnect/v1/introspect", timeout=10,
                          data={"token": access_token},
                          auth=(demo["client_id"], demo["client_secret"]))
        assert resp.status_code == 200, resp.text
        seen.setdefault(resp.headers["X-Request-Id"][:8], resp.json()["active"])
        if len(seen) == 2:
            break
    return seen


def test_every_process_warns_that_it_shares_a_random_key_and_secret(group):
    lines = [line for line in group.output().splitlines() if WARNING in line]
    for program in PROGRAMS:
        said = [line for line in lines if f"service={program} " in line]
        assert len(said) >= (2 if program == "token" else 1), (program, lines)  # restarts: more
        assert all("level=warn" in line and "Not for production" in line for line in said)


def test_a_flow_across_the_processes_without_a_key_or_a_secret(group):
    agent = Agent(group.issuer, group.ca)
    # the demo relying party: sign-in at the identifier, its sealed cookie opened at
    # authorize, the code redeemed at a token process, the ID token checked against the
    # JWKS, userinfo called with the access token
    demo = group.demo
    outcome = agent.run(group.demo_url + "/login", demo["username"], demo["password"])
    assert outcome.status == 200 and outcome.url == group.demo_url + "/"
    assert 'id="who">Demo User<' in outcome.body and "HTTP 200" in outcome.body
    tokens = group.code_flow(agent)
    info = agent.session.get(group.issuer + "/konnect/v1/userinfo", timeout=10,
                             headers={"Authorization": "Bearer " + tokens["access_token"]})
    assert info.status_code == 200 and info.json()["preferred_username"] == "demo"
    # both token processes verify the access token, whichever of them signed it
    answers = token_process_answers(group, tokens["access_token"])
    assert len(answers) == 2 and all(answers.values()), answers


def test_restarted_processes_take_the_groups_key_and_secret(group):
    agent = Agent(group.issuer, group.ca)
    tokens = group.code_flow(agent)
    victims = [sorted(group.wait_running("token", 2).values())[0],
               *group.wait_running("authorize", 1).values()]
    for pid in victims:
        os.kill(pid, signal.SIGTERM)
    group.wait_running("token", 2, exclude=tuple(victims), timeout=30)
    group.wait_running("authorize", 1, exclude=tuple(victims), timeout=30)
    answers = token_process_answers(group, tokens["access_token"])
    assert len(answers) == 2 and all(answers.values()), answers
    # the new authorize process opens the identifier's logon cookie: no second sign-in
    again = agent.run(group.demo_url + "/login")
    assert again.status == 200 and again.url == group.demo_url + "/", again.steps
    assert not any("/signin/v1/identifier?" in step for step in again.steps)
