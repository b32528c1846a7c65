"""Filing the triage's issues (infra/github.py) against a local GitHub stand-in (tests/fake_github.py):
the request GitHub receives, idempotence under retries and replays, rate limits, bounded
retries, a bad token, and the token kept out of every log and error."""

from __future__ import annotations

import logging
import time

import pytest

from fake_github import FakeGitHub
from vvtv_autopilot.handlers import triage as T
from vvtv_autopilot.infra import github
from vvtv_autopilot.schemas.config import GitHubConfig
from vvtv_autopilot.schemas.errors import GitHubAuthError, GitHubRefused, GitHubUnavailable

PARAM = "selection.diversity_weight"
OTHER = "curator.budget"
PERIOD = ("2026-11-22T02:00:00Z", "2026-11-29T02:00:00Z")


@pytest.fixture
async def gh():
    server = await FakeGitHub().start()
    yield server
    await server.stop()


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch):
    monkeypatch.setattr(github, "BACKOFF_SECONDS", 0.05)   # the rules are the same, the test is quicker


def config(gh: FakeGitHub, **kw) -> GitHubConfig:
    base = {"repository": gh.repository, "api_url": gh.api_url, "labels": ["autopilot", "triage"],
            "assignees": ["alice", "bob"], "timeout_seconds": 1.0, "max_attempts": 4, "max_wait_seconds": 30}
    return GitHubConfig(**(base | kw))


def suggestion(parameter: str = PARAM, category: str = "CanaryRollbacks") -> T.PatchSuggestion:
    return T.PatchSuggestion(category=category, parameter=parameter, suggested_bounds=(0.26, 0.34),
                             rationale=f"{parameter} was involved in 3 incidents", confidence=0.5,
                             current_bounds=(0.25, 0.35), last_known_good=0.3, failures=3, incidents=["a", "b", "c"])


def effect_body(cfg: GitHubConfig, report_id: str = "triage-1", suggestions=None) -> dict:
    issues = T.draft_github_issues(suggestions or [suggestion()], period=PERIOD, report_id=report_id,
                                   labels=cfg.labels, assignees=cfg.assignees)
    import msgspec
    return {"report_id": report_id, "repository": cfg.repository, "issues": [msgspec.to_builtins(i) for i in issues]}


async def send(gh: FakeGitHub, cfg: GitHubConfig, body: dict, done: dict | None = None, token: str | None = None):
    done = {} if done is None else done
    records: dict = {}

    async def record(key, result):
        records[key] = result
        done[key] = result

    issues, error = await github.send_issues(cfg, body, done=dict(done), record=record,
                                             env={cfg.token_env: gh.token if token is None else token})
    return issues, error, records


async def test_issues_are_created_with_title_body_labels_assignees_and_the_token(gh):
    cfg = config(gh)
    body = effect_body(cfg, suggestions=[suggestion(), suggestion(OTHER, "StabilityIssues")])
    issues, error, records = await send(gh, cfg, body)
    assert error is None
    posts = gh.posts()
    assert len(posts) == 2 and len(gh.issues) == 2
    for post, draft in zip(posts, body["issues"]):
        assert post["path"] == "/api/v3/repos/vvtv/ops/issues"          # the configured (Enterprise) base URL
        assert post["json"] == {"title": draft["title"], "body": draft["body"], "labels": draft["labels"],
                                "assignees": ["alice", "bob"]}
        assert post["headers"]["Authorization"] == f"Bearer {gh.token}"
        assert post["headers"]["Accept"] == "application/vnd.github+json"
        assert post["headers"]["X-GitHub-Api-Version"] == "2022-11-28"
    assert posts[0]["json"]["labels"] == ["autopilot", "triage", "CanaryRollbacks"]
    assert T.issue_marker(f"{PARAM}/CanaryRollbacks") in posts[0]["json"]["body"]
    assert "tighten bounds of selection.diversity_weight" in posts[0]["json"]["title"]
    # the lookup before creating asked for open issues with the common labels
    lookups = [r for r in gh.requests if r["method"] == "GET"]
    assert lookups and lookups[0]["query"]["state"] == "open" and lookups[0]["query"]["labels"] == "autopilot,triage"
    assert [(i["created"], i["action"], i["number"]) for i in issues] == [(True, "created", 1), (True, "created", 2)]
    assert issues[0]["url"] == "https://github.example/vvtv/ops/issues/1"
    assert set(records) == {f"{PARAM}/CanaryRollbacks", f"{OTHER}/StabilityIssues"}


async def test_a_retry_and_a_replay_create_nothing_new_and_a_new_report_comments(gh):
    cfg = config(gh)
    body = effect_body(cfg, report_id="triage-1")
    done: dict = {}
    await send(gh, cfg, body, done)
    assert len(gh.issues) == 1
    before = len(gh.requests)
    # a retry of the same effect: its own record says done, nothing is asked of GitHub
    issues, error, _ = await send(gh, cfg, body, done)
    assert error is None and len(gh.requests) == before and issues[0]["number"] == 1
    # a replay that lost the record (crash between GitHub's answer and our commit): found by its marker
    issues, error, _ = await send(gh, cfg, body, {})
    assert error is None and issues[0]["action"] == "created" and issues[0]["replayed"] and issues[0]["number"] == 1
    assert len(gh.posts()) == 1 and len(gh.issues) == 1
    # next week's report, same parameter and category: a comment on the open issue, not a twin
    body2 = effect_body(cfg, report_id="triage-2")
    issues, error, _ = await send(gh, cfg, body2, {})
    assert error is None and issues[0]["action"] == "commented" and issues[0]["number"] == 1
    assert len(gh.issues) == 1 and len(gh.comments()) == 1
    assert gh.posts("/comments")[0]["json"]["body"] == body2["issues"][0]["comment"]
    assert issues[0]["url"].startswith("https://github.example/vvtv/ops/issues/1#issuecomment-")
    # ... and its replay finds the comment
    issues, error, _ = await send(gh, cfg, body2, {})
    assert issues[0]["action"] == "commented" and issues[0]["replayed"] and len(gh.comments()) == 1
    assert len(gh.issues) == 1
    # a closed issue is not reopened by a comment: a new one is filed
    gh.issues[1]["state"] = "closed"
    issues, error, _ = await send(gh, cfg, effect_body(cfg, report_id="triage-3"), {})
    assert issues[0]["action"] == "created" and issues[0]["number"] == 2


@pytest.mark.parametrize("failure", ["502 after creating", "timeout after creating"])
async def test_a_create_whose_answer_was_lost_is_looked_up_not_repeated(gh, failure):
    cfg = config(gh, timeout_seconds=0.5)
    if failure.startswith("502"):
        gh.fail("POST", "/issues", 502, after=True)
    else:
        gh.fail("POST", "/issues", 201, after=True, delay=3.0)
    issues, error, _ = await send(gh, cfg, effect_body(cfg))
    assert error is None
    assert len(gh.posts()) == 1 and len(gh.issues) == 1
    assert issues[0]["action"] == "created" and issues[0]["replayed"] and issues[0]["number"] == 1


@pytest.mark.parametrize("kind", ["403 X-RateLimit-Remaining: 0", "429 Retry-After: 1"])
async def test_a_rate_limit_is_waited_out(gh, kind, caplog):
    cfg = config(gh)
    if kind.startswith("403"):
        gh.fail("POST", "/issues", 403, headers={"X-RateLimit-Remaining": "0",
                                                 "X-RateLimit-Reset": str(int(time.time()) + 2)},
                body={"message": "API rate limit exceeded"})
    else:
        gh.fail("POST", "/issues", 429, headers={"Retry-After": "1"}, body={"message": "slow down"})
    caplog.set_level(logging.INFO, logger="vvtv_autopilot.github")
    issues, error, _ = await send(gh, cfg, effect_body(cfg))
    assert error is None and issues[0]["action"] == "created"
    first, second = gh.posts()
    assert second["t"] - first["t"] >= 0.9, "the retry came before the time GitHub asked for"
    assert len(gh.issues) == 1
    assert "rate limit" in caplog.text and "waiting" in caplog.text


async def test_a_rate_limit_longer_than_allowed_gives_up_at_once(gh):
    cfg = config(gh, max_wait_seconds=5)
    gh.fail("GET", "/issues", 429, headers={"Retry-After": "3600"})
    t0 = time.monotonic()
    issues, error, _ = await send(gh, cfg, effect_body(cfg))
    assert isinstance(error, GitHubUnavailable) and "3600" in str(error) and "max_wait_seconds" in str(error)
    assert time.monotonic() - t0 < 5 and len(gh.requests) == 1
    assert issues[0]["created"] is False and issues[0]["action"] == "failed" and issues[0]["error"] == str(error)


async def test_5xx_is_retried_a_bounded_number_of_times(gh):
    cfg = config(gh, max_attempts=3)
    gh.fail("GET", "/issues", 503, times=100)
    issues, error, _ = await send(gh, cfg, effect_body(cfg, suggestions=[suggestion(), suggestion(OTHER)]))
    assert isinstance(error, GitHubUnavailable) and "503" in str(error) and "3 attempts" in str(error)
    assert len(gh.requests) == 3 and not gh.posts()
    assert [i["action"] for i in issues] == ["failed", "failed"]
    # and a passing 5xx is just retried
    gh.scripts.clear()
    gh.fail("GET", "/issues", 500, times=2)
    issues, error, _ = await send(gh, cfg, effect_body(cfg))
    assert error is None and issues[0]["action"] == "created"


async def test_a_bad_token_fails_at_once_and_never_shows_the_token(gh, caplog):
    cfg = config(gh)
    caplog.set_level(logging.DEBUG)
    wrong = "ghp_WRONG_secret_value_42"
    issues, error, _ = await send(gh, cfg, effect_body(cfg, suggestions=[suggestion(), suggestion(OTHER)]), token=wrong)
    assert isinstance(error, GitHubAuthError) and error.status == 401
    assert "refused the token" in str(error) and cfg.token_env in str(error)
    assert len(gh.requests) == 1, "a refused token is not retried"
    assert [i["action"] for i in issues] == ["failed", "failed"]
    for text in (str(error), caplog.text, repr(issues)):
        assert wrong not in text and gh.token not in text
    # no token at all: said so, nothing sent
    issues, error, _ = await send(gh, cfg, effect_body(cfg), token="")
    assert isinstance(error, GitHubAuthError) and cfg.token_env in str(error) and len(gh.requests) == 1


async def test_a_forbidden_token_and_a_refused_request_are_not_retried(gh):
    cfg = config(gh)
    gh.fail("GET", "/issues", 403, body={"message": "Resource not accessible by integration"})
    _, error, _ = await send(gh, cfg, effect_body(cfg))
    assert isinstance(error, GitHubAuthError) and "Resource not accessible" in str(error) and len(gh.requests) == 1
    gh.fail("POST", "/issues", 422, body={"message": "Validation Failed",
                                         "errors": [{"message": "alice is not assignable"}]})
    _, error, _ = await send(gh, cfg, effect_body(cfg))
    assert isinstance(error, GitHubRefused) and "alice is not assignable" in str(error)
    assert len(gh.issues) == 0
    _, error, _ = await send(gh, config(gh, repository="vvtv/nope"), effect_body(config(gh, repository="vvtv/nope")))
    assert isinstance(error, GitHubRefused) and error.status == 404


def test_the_configuration_never_holds_the_token_and_needs_a_repository():
    from vvtv_autopilot.schemas.config import parse_config
    from vvtv_autopilot.schemas.errors import ConfigError

    secret = "ghp_in_the_file_by_mistake"
    with pytest.raises(ConfigError) as exc:
        parse_config({"autopilot": {"incident_triage": {"github": {"repository": "vvtv/ops", "token": secret}}}})
    assert "environment variable" in str(exc.value) and secret not in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        parse_config({"autopilot": {"incident_triage": {"github_integration_enabled": True}}})
    assert "github.repository" in str(exc.value)
    with pytest.raises(ConfigError):
        parse_config({"autopilot": {"incident_triage": {"github": {"api_url": "ftp://x"}}}})
    cfg = parse_config({"autopilot": {"incident_triage": {"github": {"api_url": "https://ghe.example/api/v3/"}}}},
                       env={"VVTV_AUTOPILOT__AUTOPILOT__INCIDENT_TRIAGE__GITHUB__REPOSITORY": "vvtv/ops"})
    gh = cfg.autopilot.incident_triage.github
    assert gh.api_url == "https://ghe.example/api/v3" and gh.repository == "vvtv/ops"
    assert cfg.autopilot.incident_triage.github_integration_enabled is False    # off by default
