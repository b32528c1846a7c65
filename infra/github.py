"""Filing the weekly triage's issues on GitHub (REST API, over httpx).

The core decides (a ``github_issues`` outbox effect: repository, report id and
the drafts, each with its stable markers); :class:`~.relay.OutboxRelay` hands
the effect to :func:`send_issues` in a task of its own, so GitHub never holds
up the service loop or the relay of other effects.

Idempotent, so a retried or replayed effect files nothing twice. For each
draft, in order:

1. this effect's own record in the store (``github_issue_log``): already done;
2. the open issues carrying the drafts' common labels, looked up by the draft's
   issue marker (``<parameter>/<category>``):
   - found, with this report's marker in its body or in one of its comments:
     this report filed it already (a replay after a crash between GitHub's
     answer and our record): nothing is sent, the result says ``replayed``;
   - found otherwise: ``POST .../issues/{n}/comments`` (the same problem, seen again);
3. none found: ``POST /repos/{owner}/{repo}/issues``.

A create or comment that times out or meets a 5xx is never simply re-posted:
the lookup runs again first (the POST may have succeeded). Failures:

* 401, or 403 that is not a rate limit: :class:`GitHubAuthError`, not retried;
* 403 with ``X-RateLimit-Remaining: 0`` or ``Retry-After``, and 429: wait as
  GitHub asks (``Retry-After``, else ``X-RateLimit-Reset``), up to
  ``max_wait_seconds`` at once and ``max_attempts`` times;
* 5xx, timeouts, connection errors: ``max_attempts`` attempts with exponential
  backoff, then :class:`GitHubUnavailable`;
* another 4xx (404 unknown repository, 422 invalid label or assignee):
  :class:`GitHubRefused`.

Every creation, comment and failure is logged with its reason in words. The
token is read from the environment when sending, sent only in the
``Authorization`` header, and appears in no log, error or event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Mapping

import httpx

from ..handlers.triage import report_marker, issue_marker
from ..schemas.config import GitHubConfig
from ..schemas.errors import GitHubAuthError, GitHubError, GitHubRefused, GitHubUnavailable

log = logging.getLogger("vvtv_autopilot.github")

MAX_PAGES = 10                 # 1,000 open issues / comments looked at, at most
BACKOFF_SECONDS = 1.0          # first pause after a 5xx or a timeout; doubles, at most BACKOFF_CAP
BACKOFF_CAP = 30.0
USER_AGENT = "vvtv-autopilot"


class _Transient(GitHubUnavailable):
    """A POST that timed out or met a 5xx: it may have succeeded, so it is not re-posted blindly."""


def _message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.reason_phrase or ""
    if isinstance(data, dict):
        text = str(data.get("message") or "")
        errors = data.get("errors")
        if isinstance(errors, list) and errors:
            text += " (" + "; ".join(str(e.get("message") or e.get("code") or e) if isinstance(e, dict) else str(e)
                                     for e in errors[:3]) + ")"
        return text[:300]
    return ""


def rate_limit_wait(response: httpx.Response, now: float) -> float | None:
    """Seconds GitHub asks us to wait, when ``response`` is a rate limit (403 with
    ``X-RateLimit-Remaining: 0`` or ``Retry-After``, or 429); None otherwise."""
    status = response.status_code
    headers = response.headers
    retry_after = headers.get("retry-after")
    exhausted = headers.get("x-ratelimit-remaining") == "0"
    if status not in (403, 429) or (status == 403 and not exhausted and retry_after is None):
        return None
    if retry_after is not None:
        try:
            return max(0.0, float(retry_after))
        except ValueError:
            pass
    reset = headers.get("x-ratelimit-reset")
    if reset is not None:
        try:
            return max(1.0, float(reset) - now)
        except ValueError:
            pass
    return 60.0  # a rate limit without a hint: GitHub's documented minimum for secondary limits


class GitHubClient:
    """The four REST calls the triage needs, with GitHub's failure rules applied."""

    def __init__(self, cfg: GitHubConfig, token: str, *, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 clock: Callable[[], float] = time.time):
        self.cfg = cfg
        self._sleep = sleep
        self._clock = clock
        self._http = httpx.AsyncClient(
            base_url=cfg.api_url, timeout=cfg.timeout_seconds, follow_redirects=False,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json",
                     "X-GitHub-Api-Version": "2022-11-28", "User-Agent": USER_AGENT})

    async def __aenter__(self) -> "GitHubClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, *, json: Any = None, params: Mapping[str, Any] | None = None,
                    safe: bool = True) -> httpx.Response:
        """One request, retried as GitHub's answer allows. ``safe=False`` (a POST): a timeout or
        a 5xx raises :class:`_Transient` at once, so the caller can look before posting again."""
        what = f"{method} {path}"
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._http.request(method, path, json=json, params=params)
            except httpx.TimeoutException:
                reason = f"no answer within {self.cfg.timeout_seconds:g} s"
            except httpx.HTTPError as exc:  # connection refused, reset, DNS...: mapped here, the token is not in it
                reason = f"connection failed ({type(exc).__name__})"
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return response
                wait = rate_limit_wait(response, self._clock())
                if wait is not None:
                    if wait > self.cfg.max_wait_seconds:
                        raise GitHubUnavailable(f"{what}: GitHub's rate limit asks to wait {wait:.0f} s, more than "
                                                f"max_wait_seconds={self.cfg.max_wait_seconds:g}", status=status)
                    if attempt >= self.cfg.max_attempts:
                        raise GitHubUnavailable(f"{what}: still rate limited after {attempt} attempts", status=status)
                    log.warning("GitHub rate limit on %s (%d %s): waiting %.1f s as asked, attempt %d of %d",
                                what, status, _message(response), wait, attempt, self.cfg.max_attempts)
                    await self._sleep(wait)
                    continue
                if status == 401:
                    raise GitHubAuthError(f"GitHub refused the token ({status} {_message(response) or 'Bad credentials'}); "
                                          f"set a valid token in ${self.cfg.token_env}", status=status)
                if status == 403:
                    raise GitHubAuthError(f"GitHub refused {what} ({status} {_message(response) or 'Forbidden'}): "
                                          f"the token in ${self.cfg.token_env} lacks permission (issues: write)",
                                          status=status)
                if status < 500:
                    raise GitHubRefused(f"GitHub refused {what} ({status} {_message(response)})", status=status)
                reason = f"GitHub answered {status} {_message(response) or response.reason_phrase}".rstrip()
            if not safe:
                raise _Transient(f"{what}: {reason}")
            if attempt >= self.cfg.max_attempts:
                raise GitHubUnavailable(f"{what}: {reason}; gave up after {attempt} attempts")
            delay = min(BACKOFF_CAP, BACKOFF_SECONDS * 2 ** (attempt - 1))
            log.warning("GitHub %s: %s; retrying in %.1f s (attempt %d of %d)", what, reason, delay, attempt,
                        self.cfg.max_attempts)
            await self._sleep(delay)

    async def _pages(self, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for page in range(1, MAX_PAGES + 1):
            response = await self._call("GET", path, params={**params, "per_page": 100, "page": page})
            items = response.json()
            if not isinstance(items, list):
                raise GitHubRefused(f"GET {path}: the answer is not a list")
            out += [i for i in items if isinstance(i, dict)]
            if len(items) < 100:
                break
        return out

    async def open_issues(self, repository: str, labels: list[str]) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"state": "open"}
        if labels:
            params["labels"] = ",".join(labels)
        items = await self._pages(f"/repos/{repository}/issues", params)
        return [i for i in items if "pull_request" not in i]

    async def comments(self, repository: str, number: int) -> list[dict[str, Any]]:
        return await self._pages(f"/repos/{repository}/issues/{number}/comments", {})

    async def create_issue(self, repository: str, issue: Mapping[str, Any]) -> dict[str, Any]:
        payload = {"title": issue["title"], "body": issue["body"], "labels": list(issue.get("labels") or [])}
        if issue.get("assignees"):
            payload["assignees"] = list(issue["assignees"])
        return (await self._call("POST", f"/repos/{repository}/issues", json=payload, safe=False)).json()

    async def create_comment(self, repository: str, number: int, body: str) -> dict[str, Any]:
        return (await self._call("POST", f"/repos/{repository}/issues/{number}/comments", json={"body": body},
                                 safe=False)).json()


Record = Callable[[str, dict[str, Any]], Awaitable[None]]


async def _file_one(client: GitHubClient, repository: str, report_id: str, issue: Mapping[str, Any],
                    labels: list[str]) -> dict[str, Any]:
    """File one draft (or comment on its open twin), looking before every POST."""
    key = issue["key"]
    attempt = 0
    while True:
        attempt += 1
        try:
            existing = next((i for i in await client.open_issues(repository, labels)
                             if issue_marker(key) in (i.get("body") or "")), None)
            if existing is None:
                created = await client.create_issue(repository, issue)
                log.info("GitHub issue #%s created in %s for %s (report %s): %s", created.get("number"), repository,
                         key, report_id, created.get("html_url"))
                return {"action": "created", "number": created.get("number"), "url": created.get("html_url")}
            number = int(existing["number"])
            mark = report_marker(report_id)
            if mark in (existing.get("body") or ""):
                log.info("GitHub issue #%d in %s already filed for %s by report %s (a replay): nothing sent",
                         number, repository, key, report_id)
                return {"action": "created", "number": number, "url": existing.get("html_url"), "replayed": True}
            done = next((c for c in await client.comments(repository, number) if mark in (c.get("body") or "")), None)
            if done is not None:
                log.info("GitHub issue #%d in %s already has report %s's comment for %s (a replay): nothing sent",
                         number, repository, report_id, key)
                return {"action": "commented", "number": number, "url": done.get("html_url"), "replayed": True}
            comment = await client.create_comment(repository, number, issue.get("comment") or issue["body"])
            log.info("GitHub issue #%d in %s is still open for %s: commented for report %s instead of a new issue: %s",
                     number, repository, key, report_id, comment.get("html_url"))
            return {"action": "commented", "number": number, "url": comment.get("html_url")}
        except _Transient as exc:
            if attempt >= client.cfg.max_attempts:
                raise GitHubUnavailable(f"{exc}; gave up after {attempt} attempts") from None
            delay = min(BACKOFF_CAP, BACKOFF_SECONDS * 2 ** (attempt - 1))
            log.warning("GitHub %s; looking again before any new POST in %.1f s (attempt %d of %d)", exc, delay,
                        attempt, client.cfg.max_attempts)
            await client._sleep(delay)


async def send_issues(cfg: GitHubConfig, body: Mapping[str, Any], *, done: Mapping[str, dict[str, Any]],
                      record: Record, env: Mapping[str, str],
                      sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> tuple[list[dict[str, Any]], GitHubError | None]:
    """File a ``github_issues`` effect's drafts. ``done`` holds what this effect already filed
    (key -> result); ``record(key, result)`` is awaited after each one. Returns every issue with
    its result (``created``, ``action``, ``number``, ``url``, ``error``) and the error that
    stopped the sending, if any (the issues after it are marked failed with it)."""
    repository, report_id = body["repository"], body["report_id"]
    issues: list[dict[str, Any]] = [dict(i) for i in body.get("issues") or []]
    labels = [l for l in (issues[0].get("labels") or [])
              if all(l in (i.get("labels") or []) for i in issues)] if issues else []
    out: list[dict[str, Any]] = []
    error: GitHubError | None = None
    token = env.get(cfg.token_env) or ""
    if not token.strip():
        error = GitHubAuthError(f"no GitHub token: set the environment variable ${cfg.token_env} "
                                "(the token is never read from the configuration file)")
    client = None if error else GitHubClient(cfg, token.strip(), sleep=sleep)
    try:
        for issue in issues:
            key = issue.get("key") or issue["title"]
            result = dict(done[key]) if key in done else None
            if result is None and error is None:
                try:
                    result = await _file_one(client, repository, report_id, issue, labels)
                    await record(key, result)
                except GitHubError as exc:
                    error = exc
            if result is None:
                result = {"action": "failed", "number": None, "url": None, "error": str(error)}
            out.append(issue | {"created": result.get("action") != "failed", "error": None} | result)
    finally:
        if client is not None:
            await client.__aexit__(None, None, None)
    if error is not None:
        log.error("GitHub: the issues of triage report %s were not all filed in %s: %s", report_id, repository, error)
    return out, error
