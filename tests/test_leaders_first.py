"""`schedule.leaders_first`: in a burst, each cache domain's first user goes at once and the others
of its domain and prompt start wait for it, so every same-domain hit has a source that observably
reached the cache first (docs/design.md, "Cache accounting (black-box)"). Against the fake server
(bench/fake_server.py, a real per-domain prefix cache)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import ValidationError
from rich.console import Console

from bench.fake_server import FakeServer, SpawnedServer
from harness import engine
from harness.history.record import Role
from harness.scenario.model import Scenario, Schedule
from harness.stacks.external import ExternalStack
from harness.verdict import Verdict

QUIET = Console(stderr=True, quiet=True)


@pytest.fixture(scope="module")
def fake() -> Iterator[SpawnedServer]:
    with FakeServer.spawn() as server:
        yield server


def scenario(leaders_first: bool) -> Scenario:
    return Scenario.model_validate({
        "name": "leaders",
        "max_tokens": 4,
        "seed": 3,
        "shared_prefixes": [{"name": "sys", "kind": "system", "words": 80}],
        "tenants": [{"name": "acme", "cache_salt": "s-acme"}, {"name": "globex", "cache_salt": "s-globex"}],
        "users": [
            {"name": "a1", "tenant": "acme", "prefixes": ["sys"], "private_words": 8, "turns": 2},
            {"name": "g1", "tenant": "globex", "prefixes": ["sys"], "private_words": 8, "turns": 2},
            {"name": "a2", "tenant": "acme", "prefixes": ["sys"], "private_words": 8, "turns": 2},
            {"name": "g2", "tenant": "globex", "prefixes": ["sys"], "private_words": 8, "turns": 2},
            {"name": "a3", "tenant": "acme", "prefixes": ["sys"], "private_words": 8, "turns": 2},
        ],
        "schedule": {"interleaving": "burst", "leaders_first": leaders_first},
    })


def test_followers_start_after_their_leader_completed_and_every_hit_is_checked(fake: SpawnedServer) -> None:
    result = engine.run([scenario(True)], ExternalStack(fake.url),
                        engine.RunOptions(counterfactual=False, solo=False), console=QUIET)
    main = [o for o in result.history.ops if o.role is Role.MAIN]
    by = {(o.user, o.turn): o for o in main}
    assert len(by) == 10
    for follower, leader in (("a2", "a1"), ("a3", "a1"), ("g2", "g1")):
        for turn in (0, 1):
            assert by[(follower, turn)].invoke_s >= by[(leader, turn)].complete_s
    # The two leaders are not held back by each other: both went before any follower completed.
    first_follower_done = min(by[(u, 0)].complete_s for u in ("a2", "a3", "g2"))
    assert max(by[("a1", 0)].invoke_s, by[("g1", 0)].invoke_s) <= first_follower_done
    accounting = next(c for c in result.checks if c.name == "cache-accounting")
    assert accounting.verdict is Verdict.PASS, accounting.notes
    assert accounting.exercised > 0 and not any("could be explained only" in n for n in accounting.notes)


def test_leaders_first_needs_a_burst() -> None:
    with pytest.raises(ValidationError, match="burst"):
        Schedule(interleaving="random", leaders_first=True)
