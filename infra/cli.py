"""The ``vvtv-autopilot`` command line (contract §6).

``run`` is the service; ``demo`` runs it against a simulated VVTV; the
operator verbs send contract §2.1 requests on ``<prefix>.autopilot.ctl.<verb>``;
``history`` and ``replay`` read the store. ``--json`` prints data as JSON.
Exit codes: 0 done, 1 refused or failed, 2 bad usage or configuration,
3 service or server unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

from ..schemas.config import Config, load_config
from ..schemas.errors import AutopilotError, BusError, ConfigError, MessageError

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def _positive_hours(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of hours") from None
    if not 0 < value <= 168:
        raise argparse.ArgumentTypeError(f"{value} hours is outside (0, 168]")
    return value


def _change(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not PARAMETER=VALUE")
    try:
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} in {text!r} is not a number") from None


_SUBJECT_TOKENS = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


def _inbox_prefix(text: str) -> str:
    if not _SUBJECT_TOKENS.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a NATS subject prefix (tokens of letters, digits, _ and -, joined by dots)")
    return text


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="YAML configuration file")
    common.add_argument("--nats-url", help="NATS server URL (default: $NATS_URL, else embedded for run/demo)")
    common.add_argument("--data-dir", type=Path, help="data folder (store, history, card, embedded server)")
    common.add_argument("--json", action="store_true", help="print data as JSON")
    common.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the service (default 10)")
    common.add_argument("--inbox-prefix", type=_inbox_prefix, default=os.environ.get("NATS_INBOX_PREFIX", "_INBOX"),
                        help="where this command's replies arrive (default: $NATS_INBOX_PREFIX, else _INBOX); "
                             "with per-user permissions, the operator's own prefix")
    common.add_argument("-v", "--verbose", action="store_true")
    p = argparse.ArgumentParser(prog="vvtv-autopilot", description="The VVTV autopilot: safe daily parameter tuning.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", parents=[common], help="run the service")
    # --- web dashboard (issue #11) ---
    run.add_argument("--http", metavar="HOST:PORT", help="serve the read-only dashboard and /metrics there "
                     "(web.listen; loopback unless $VVTV_AUTOPILOT_WEB_TOKEN is set)")
    # --- end web dashboard ---
    demo = sub.add_parser("demo", parents=[common], help="embedded NATS + simulated VVTV + autopilot, several cycles")
    demo.add_argument("--cycles", type=int, default=4, choices=range(1, 21), metavar="N")
    sub.add_parser("status", parents=[common], help="the service's current state")

    def verb(name: str, help_: str) -> argparse.ArgumentParser:
        v = sub.add_parser(name, parents=[common], help=help_)
        v.add_argument("--actor", default=os.environ.get("USER") or getpass.getuser() or "cli", help="who asks")
        v.add_argument("--reason", help="why (kept in the audit log)")
        return v

    verb("pause", "pause the autopilot (rolls a running canary back)").add_argument("--hours", type=_positive_hours, default=48.0)
    verb("emergency-pause", "pause with no end until resume")
    verb("resume", "end a pause")
    verb("run-now", "start a cycle now")
    o = verb("override", "pin a parameter")
    o.add_argument("parameter"); o.add_argument("value", type=float); o.add_argument("--hours", type=_positive_hours)
    verb("clear-override", "unpin a parameter").add_argument("parameter")
    b = verb("bounds-override", "temporary bounds for a parameter")
    b.add_argument("parameter"); b.add_argument("min", type=float); b.add_argument("max", type=float)
    b.add_argument("--hours", type=_positive_hours)
    verb("rollback", "atomic rollback of the business logic to a version").add_argument("version_id")
    verb("propose", "start a cycle with this change").add_argument("changes", nargs="+", type=_change, metavar="PARAM=VALUE")
    verb("promote", "end the running canary with a full deployment")
    verb("abort", "end the running canary with a rollback")
    h = sub.add_parser("history", parents=[common], help="cycles and outcomes from the store")
    h.add_argument("--limit", type=int, default=20)
    h.add_argument("--versions", action="store_true", help="list stored business-logic versions instead")
    sub.add_parser("bounds", parents=[common], help="sliding ranges, stable days, rollback counts, last adjustments")
    t = sub.add_parser("triage", parents=[common], help="incident triage reports and drift events from the store")
    t.add_argument("--limit", type=int, default=3)
    t.add_argument("--run", action="store_true", help="ask the service to run a triage now (ctl.triage)")
    t.add_argument("--actor", default=os.environ.get("USER") or "cli")
    r = sub.add_parser("replay", parents=[common], help="replay a cycle from its recorded events and compare")
    # --- what-if replay, export, replay from a file (issue #11; infra/replay_cli.py) ---
    r.add_argument("cycle_id", nargs="?")
    r.add_argument("--what-if", type=Path, metavar="CONFIG", help="YAML whose keys override the recorded configuration")
    r.add_argument("--all", action="store_true", help="every stored cycle, summarized")
    r.add_argument("--export", type=Path, metavar="FILE", help="write the recorded cycle as JSON lines")
    r.add_argument("--from-file", type=Path, metavar="FILE", help="replay an exported cycle")
    # --- end what-if replay ---
    return p


def _config(args: argparse.Namespace) -> Config:
    env = dict(os.environ)
    if args.nats_url:
        env["NATS_URL"] = args.nats_url
    if args.data_dir:
        env["VVTV_AUTOPILOT_DATA_DIR"] = str(args.data_dir)
    if getattr(args, "http", None):  # web dashboard (issue #11)
        env["VVTV_AUTOPILOT__WEB__LISTEN"] = args.http
    return load_config(args.config, env)


def _print(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str) if args.json else text)


async def _request(config: Config, verb: str, body: dict[str, Any], timeout: float, inbox_prefix: str = "_INBOX") -> dict[str, Any]:
    from nats.errors import Error as NatsError
    from nats.errors import NoRespondersError
    from nats.errors import TimeoutError as NatsTimeout

    from .bus import connect, redact
    from .inbound import excerpt

    async def _quiet(exc: Exception) -> None:
        pass  # a failed attempt is reported once, below, as a BusError

    url = config.bus.url
    if url is None:
        raise BusError("no NATS URL: pass --nats-url or set NATS_URL (the service's embedded server logs its URL)")
    # A one-shot command: a retry at most (nats-py reads max_reconnect_attempts=0 as
    # "for ever"), bounded by --timeout, then a clear error.
    try:
        nc = await asyncio.wait_for(
            connect(url, connect_timeout=min(timeout, 5.0), allow_reconnect=False, max_reconnect_attempts=1,
                    inbox_prefix=inbox_prefix, name="vvtv-autopilot-cli", error_cb=_quiet),
            timeout=timeout)
    except asyncio.TimeoutError:
        raise BusError(f"cannot reach NATS at {redact(url)} within {timeout}s") from None
    subject = f"{config.bus.prefix}.autopilot.ctl.{verb}"
    try:  # nats-py's errors stop here, in the project's words
        msg = await nc.request(subject, json.dumps(body).encode(), timeout=timeout)
    except NoRespondersError:  # answered at once by the server: no waiting was involved
        raise BusError(f"no autopilot is listening on {subject} (no responder); is it running, with this bus prefix?") from None
    except (NatsTimeout, asyncio.TimeoutError):
        raise BusError(f"the autopilot did not answer {verb} within {timeout}s; is it running?") from None
    except NatsError as exc:
        raise BusError(f"the {verb} request on {subject} failed: {exc}") from exc
    finally:
        await nc.close()
    try:
        reply = json.loads(msg.data)
    except ValueError:  # not JSON, or not UTF-8
        raise MessageError(f"the autopilot replied to {verb} with something that is not valid JSON: "
                           f"{excerpt(msg.data, 200)!r}") from None
    if not isinstance(reply, dict):
        raise MessageError(f"the autopilot's reply to {verb} is not a JSON object: {excerpt(msg.data, 200)!r}")
    return reply


def _body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"actor": args.actor}
    if args.reason:
        body["reason"] = args.reason
    for key in ("hours", "parameter", "value", "min", "max", "version_id"):
        if getattr(args, key, None) is not None:
            body[key] = getattr(args, key)
    if args.command == "propose":
        body["changes"] = dict(args.changes)
    return body


async def _main(args: argparse.Namespace) -> int:
    config = _config(args)
    if args.command == "run":
        from .service import Service

        service = Service(config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, service._stopping.set)
        await service.run_forever()
        return EXIT_OK
    if args.command == "demo":
        from .demo import run_demo

        return await run_demo(config, cycles=args.cycles, as_json=args.json)
    if args.command == "triage" and args.run:
        reply = await _request(config, "triage", {"actor": args.actor}, args.timeout, args.inbox_prefix)
        _print(args, reply, f"report {reply.get('report_id')}: {reply.get('failure_counts')}, "
                            f"{reply.get('patch_suggestions')} patch suggestion(s)" if reply.get("ok") else f"refused: {reply.get('error')}")
        return EXIT_OK if reply.get("ok") else EXIT_REFUSED
    if args.command == "replay" and (args.what_if or args.all or args.export or args.from_file or not args.cycle_id):
        from . import replay_cli  # what-if, export, from a file (issue #11)

        return await replay_cli.replay(config, args)
    if args.command in ("history", "replay", "bounds", "triage"):
        from . import review

        return await getattr(review, args.command)(config, args)
    body = {} if args.command == "status" else _body(args)
    reply = await _request(config, args.command, body, args.timeout, args.inbox_prefix)
    if args.command == "status":
        text = f"state: {reply.get('state')}  cycle: {reply.get('cycle_id') or '-'}  card: {(reply.get('card_version') or '')[:12]}"
        if reply.get("paused"):
            text += f"\npaused until {reply.get('paused_until') or 'resume'} by {reply.get('paused_by')}"
    else:
        text = ("ok" if reply.get("ok") else f"refused: {reply.get('error')}") + f"  (state {reply.get('state')}, cycle {reply.get('cycle_id') or '-'})"
    _print(args, reply, text)
    return EXIT_OK if reply.get("ok") else EXIT_REFUSED


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose or args.command == "run" else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("transitions").setLevel(logging.WARNING)  # our transitions are logged as records and spans
    try:
        return asyncio.run(_main(args))
    except ConfigError as exc:
        print(f"vvtv-autopilot: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BusError as exc:
        print(f"vvtv-autopilot: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except AutopilotError as exc:
        print(f"vvtv-autopilot: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
