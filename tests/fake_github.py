"""A small GitHub REST stand-in for tests: the issue and comment endpoints the triage uses,
served by aiohttp on 127.0.0.1 with a free port, under ``/api/v3`` (as GitHub Enterprise).

It checks the ``Authorization`` header, keeps issues and comments in memory, records every
request (method, path, headers, JSON, monotonic time), and can be told to answer the next
matching requests with a scripted failure, to hang, or to run a hook (a test's SIGKILL).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from aiohttp import web

PREFIX = "/api/v3"


@dataclass
class Scripted:
    method: str
    suffix: str                      # the path must end with this (e.g. "/issues")
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] = field(default_factory=lambda: {"message": "scripted failure"})
    times: int = 1
    after: bool = False              # carry the request out first, then answer with the failure
    delay: float = 0.0               # seconds to hold the answer (a timeout on the client side)


class FakeGitHub:
    def __init__(self, token: str = "ghp_test_token_0123456789", repository: str = "vvtv/ops"):
        self.token = token
        self.repository = repository
        self.issues: dict[int, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self.scripts: list[Scripted] = []
        self.hooks: dict[str, Callable[[dict[str, Any]], Awaitable[None] | None]] = {}
        self._n = 0
        self._comment_n = 1000
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    # --- life cycle ---------------------------------------------------------------------------

    async def start(self) -> "FakeGitHub":
        app = web.Application()
        repo = PREFIX + "/repos/{owner}/{name}"
        app.router.add_get(repo + "/issues", self._list_issues)
        app.router.add_post(repo + "/issues", self._create_issue)
        app.router.add_get(repo + "/issues/{number}/comments", self._list_comments)
        app.router.add_post(repo + "/issues/{number}/comments", self._create_comment)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PREFIX}"

    def fail(self, method: str, suffix: str, status: int, **kw: Any) -> None:
        self.scripts.append(Scripted(method, suffix, status, **kw))

    # --- views for assertions ---------------------------------------------------------------

    def posts(self, suffix: str = "/issues") -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == "POST" and r["path"].endswith(suffix)]

    def comments(self) -> list[dict[str, Any]]:
        return [c for i in self.issues.values() for c in i["_comments"]]

    # --- the endpoints ------------------------------------------------------------------------

    async def _enter(self, request: web.Request) -> tuple[dict[str, Any], web.Response | None, Scripted | None]:
        body = await request.json() if request.can_read_body else None
        rec = {"method": request.method, "path": request.path, "query": dict(request.query),
               "headers": dict(request.headers), "json": body, "t": time.monotonic()}
        self.requests.append(rec)
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return rec, web.json_response({"message": "Bad credentials"}, status=401), None
        owner, name = request.match_info["owner"], request.match_info["name"]
        if f"{owner}/{name}" != self.repository:
            return rec, web.json_response({"message": "Not Found"}, status=404), None
        for s in self.scripts:
            if s.times > 0 and s.method == request.method and request.path.endswith(s.suffix):
                s.times -= 1
                if s.after:
                    return rec, None, s
                if s.delay:
                    await asyncio.sleep(s.delay)
                return rec, web.json_response(s.body, status=s.status, headers=s.headers), None
        return rec, None, None

    async def _finish(self, kind: str, rec: dict[str, Any], ok: web.Response, late: Scripted | None) -> web.Response:
        hook = self.hooks.get(kind)
        if hook is not None:
            result = hook(rec)
            if asyncio.iscoroutine(result):
                await result
        if late is not None:
            if late.delay:
                await asyncio.sleep(late.delay)
            return web.json_response(late.body, status=late.status, headers=late.headers)
        return ok

    def _issue_json(self, issue: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in issue.items() if not k.startswith("_")}

    async def _list_issues(self, request: web.Request) -> web.Response:
        rec, refused, late = await self._enter(request)
        if refused is not None:
            return refused
        q = request.query
        wanted = [l for l in q.get("labels", "").split(",") if l]
        items = [i for i in sorted(self.issues.values(), key=lambda i: -i["number"])
                 if (q.get("state", "open") == "all" or i["state"] == q.get("state", "open"))
                 and all(l in [x["name"] for x in i["labels"]] for l in wanted)]
        per_page, page = int(q.get("per_page", 30)), int(q.get("page", 1))
        page_items = [self._issue_json(i) for i in items[(page - 1) * per_page: page * per_page]]
        return await self._finish("list", rec, web.json_response(page_items), late)

    async def _create_issue(self, request: web.Request) -> web.Response:
        rec, refused, late = await self._enter(request)
        if refused is not None:
            return refused
        body = rec["json"] or {}
        self._n += 1
        n = self._n
        issue = {"number": n, "title": body["title"], "body": body.get("body", ""), "state": "open",
                 "labels": [{"name": l} for l in body.get("labels", [])],
                 "assignees": [{"login": a} for a in body.get("assignees", [])],
                 "html_url": f"https://github.example/{self.repository}/issues/{n}", "_comments": []}
        self.issues[n] = issue
        return await self._finish("create", rec, web.json_response(self._issue_json(issue), status=201), late)

    async def _list_comments(self, request: web.Request) -> web.Response:
        rec, refused, late = await self._enter(request)
        if refused is not None:
            return refused
        issue = self.issues.get(int(request.match_info["number"]))
        if issue is None:
            return web.json_response({"message": "Not Found"}, status=404)
        q = request.query
        per_page, page = int(q.get("per_page", 30)), int(q.get("page", 1))
        return await self._finish("comments", rec, web.json_response(issue["_comments"][(page - 1) * per_page: page * per_page]), late)

    async def _create_comment(self, request: web.Request) -> web.Response:
        rec, refused, late = await self._enter(request)
        if refused is not None:
            return refused
        issue = self.issues.get(int(request.match_info["number"]))
        if issue is None:
            return web.json_response({"message": "Not Found"}, status=404)
        self._comment_n += 1
        comment = {"id": self._comment_n, "body": (rec["json"] or {}).get("body", ""),
                   "html_url": f"{issue['html_url']}#issuecomment-{self._comment_n}"}
        issue["_comments"].append(comment)
        return await self._finish("comment", rec, web.json_response(comment, status=201), late)
