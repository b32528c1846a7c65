"""The ``vvtv-autopilot`` command line (contract §6 and v1.1 §7).

``run`` is the service; ``demo`` runs it against a simulated VVTV; the operator
verbs send contract §2.1 requests on ``<prefix>.autopilot.ctl.<verb>``; the reads
(``history``, ``bounds``, ``report``, ``triage``, ``replay``) ask the running service
over the bus and read the store under ``--data-dir`` only when no service answers;
``watch`` follows a cycle live. ``--json`` prints data as JSON.

Where the bus is: ``--nats-url``, else ``$NATS_URL``, else ``bus.url`` of ``--config``,
else the file a running service writes in its data folder (``--data-dir``, else
``$VVTV_AUTOPILOT_DATA_DIR``, else ``storage.data_dir``, default ``./autopilot-data``).

Exit codes: 0 done; 1 refused (the reply's error is printed), or a replay that
differs; 2 bad usage or configuration; 3 the service or the server cannot be reached.
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
from ..schemas.errors import AutopilotError, BusError, CommandRefused, ConfigError, MessageError

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
READS = ("history", "bounds", "report", "triage", "replay")
SLOW_VERBS = ("override", "rollback")   # their reply waits for VVTV's answer


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


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"{value} is outside [1, 1000]")
    return value


_SUBJECT_TOKENS = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


def _inbox_prefix(text: str) -> str:
    if not _SUBJECT_TOKENS.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a NATS subject prefix (tokens of letters, digits, _ and -, joined by dots)")
    return text


_WHERE = ("Where the service is: --nats-url, else $NATS_URL, else bus.url in --config, else the "
          "service.json a running service writes in its data folder (--data-dir, else "
          "$VVTV_AUTOPILOT_DATA_DIR, else ./autopilot-data).")
_EXITS = "Exit codes: 0 done, 1 refused, 2 bad usage or configuration, 3 service or server unreachable."


def _parser() -> argparse.ArgumentParser:
    # Option groups, each given only to the subcommands it applies to.
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("--config", type=Path, metavar="FILE", help="YAML configuration file")
    config.add_argument("-v", "--verbose", action="store_true", help="log more (INFO)")
    bus = argparse.ArgumentParser(add_help=False)
    bus.add_argument("--nats-url", metavar="URL", help="NATS server URL (default: $NATS_URL, else the data folder's service.json)")
    bus.add_argument("--data-dir", type=Path, metavar="DIR", help="the service's data folder (finds its bus; holds its store)")
    bus.add_argument("--timeout", type=float, default=None, metavar="S",
                     help="seconds to wait for the service (default 10; 30 for override and rollback)")
    bus.add_argument("--inbox-prefix", type=_inbox_prefix, default=os.environ.get("NATS_INBOX_PREFIX", "_INBOX"),
                     metavar="P", help="where replies arrive (default: $NATS_INBOX_PREFIX, else _INBOX); "
                                       "with per-user permissions, the operator's own prefix")
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print data as JSON")
    who = argparse.ArgumentParser(add_help=False)
    who.add_argument("--actor", default=os.environ.get("USER") or _user(), help="who asks (default: $USER)")
    who.add_argument("--reason", help="why (kept in the audit log)")
    logfmt = argparse.ArgumentParser(add_help=False)
    logfmt.add_argument("--log-format", choices=("text", "json"), default="text",
                        help="text (default) or json: one JSON object a line, for log shippers")

    p = argparse.ArgumentParser(prog="vvtv-autopilot", description="The VVTV autopilot: safe daily parameter tuning.",
                                epilog=f"{_WHERE} {_EXITS}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_: str, description: str, parents: list, epilog: str = _WHERE) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=parents, help=help_, description=description, epilog=f"{epilog} {_EXITS}")

    run = add("run", "run the service",
              "Run the autopilot service. Without a bus URL (--nats-url or $NATS_URL) it starts an embedded "
              "nats-server under the data folder and writes its URL there (service.json) for the CLI.",
              [config, logfmt], epilog="")
    run.add_argument("--nats-url", metavar="URL", help="NATS server URL (default: $NATS_URL, else embedded)")
    run.add_argument("--data-dir", type=Path, metavar="DIR", help="data folder: store, history, card, embedded server")
    # --- web dashboard (issue #11) ---
    run.add_argument("--http", metavar="HOST:PORT", help="serve the read-only dashboard and /metrics there "
                     "(web.listen; loopback unless $VVTV_AUTOPILOT_WEB_TOKEN is set)")
    # --- end web dashboard ---
    demo = add("demo", "embedded NATS + simulated VVTV + autopilot, several days",
               "Run the service against a simulated VVTV over a few simulated days with seconds-long canaries. "
               "Prints each day as it ends and keeps its data in a folder it names at the end, with the "
               "commands to inspect it.", [config, as_json, logfmt], epilog="")
    demo.add_argument("--cycles", type=int, default=4, choices=range(1, 21), metavar="N", help="days to run (1-20, default 4)")
    demo.add_argument("--data-dir", type=Path, metavar="DIR", help="keep the demo's data here (default: a new folder under /tmp)")
    st = add("status", "the service's current state (over ctl.status)",
             "The service's state: the running cycle (stage, elapsed, deadline, samples per arm, the gate so far), "
             "pause, overrides, the last cycle and why it ended, the last internal error.", [config, bus, as_json])
    st.add_argument("--watch", action="store_true", help="follow live (as `watch`)")
    w = add("watch", "follow the running cycle live until its decision",
            "A live view of the running (or next) cycle, from evt.transition and periodic status: state, elapsed and "
            "deadline, samples per arm, per-KPI lift and interval so far, where the gate is heading; it ends with "
            "the decision.", [config, bus])
    w.add_argument("--interval", type=float, default=1.0, metavar="S", help="status refresh period (default 1 s)")
    w.add_argument("--follow", action="store_true", help="keep watching the following cycles (Ctrl-C to stop)")
    w.add_argument("--record", type=Path, metavar="FILE", help="also write the last screen to FILE (text)")
    w.add_argument("--max-seconds", type=float, default=None, metavar="S", help="give up after S seconds (exit 3)")

    def verb(name: str, help_: str, description: str) -> argparse.ArgumentParser:
        return add(name, help_, description, [config, bus, as_json, who])

    verb("pause", "pause the autopilot (rolls a running canary back)",
         "No new cycle starts until the pause ends; a running canary is rolled back.").add_argument(
        "--hours", type=_positive_hours, default=48.0, help="length of the pause (0 < H <= 168, default 48)")
    verb("emergency-pause", "pause with no end until resume", "Pause with no end until `resume`; a running canary is rolled back.")
    verb("resume", "end a pause", "End a pause (or an emergency pause).")
    verb("run-now", "start a cycle now", "Start a cycle now, if none runs and the autopilot is not paused.")
    o = verb("override", "put a value live and pin it",
             "Ask VVTV to run PARAM=VALUE on all traffic, and once it has, write the card and pin the parameter "
             "(the optimizer leaves it alone) for --hours. The reply comes after VVTV's answer: applied, refused by "
             "VVTV, or no answer; when not applied nothing changes (card, history, pins).")
    o.add_argument("parameter", metavar="PARAM"); o.add_argument("value", type=float, metavar="VALUE")
    o.add_argument("--hours", type=_positive_hours, help="how long the pin holds (default autopilot.manual_override_hours)")
    verb("clear-override", "unpin a parameter", "End a parameter's pin and its bounds override.").add_argument("parameter", metavar="PARAM")
    b = verb("bounds-override", "temporary bounds for a parameter", "Temporary sliding bounds for an emergency.")
    b.add_argument("parameter", metavar="PARAM"); b.add_argument("min", type=float); b.add_argument("max", type=float)
    b.add_argument("--hours", type=_positive_hours, help="how long (default autopilot.manual_override_hours)")
    verb("rollback", "put a stored version back live",
         "Ask VVTV to run a stored version (an id or a unique prefix of 4+ hex digits, as `history --versions` "
         "lists), and once it has, roll the card back to it atomically. The reply comes after VVTV's answer."
         ).add_argument("version_id", metavar="VERSION_ID")
    verb("propose", "start a cycle with this change",
         "Start a cycle whose proposal is this change; it passes bounds, golden set, canary and gate like any other."
         ).add_argument("changes", nargs="+", type=_change, metavar="PARAM=VALUE")
    verb("promote", "end the running canary with a full deployment", "End the running canary with a full deployment.")
    verb("abort", "end the running canary with a rollback", "End the running canary with a rollback.")

    def read(name: str, help_: str, description: str) -> argparse.ArgumentParser:
        return add(name, help_, description + " Asks the running service (ctl." + name + "); with no service "
                   "reachable, reads the store under --data-dir.", [config, bus, as_json])

    h = read("history", "cycles, outcomes and why; or stored card versions",
             "The latest cycles: outcome, gate decision, changes and why each ended where it did.")
    h.add_argument("--limit", type=_limit, default=20, help="how many (default 20)")
    h.add_argument("--versions", action="store_true", help="list stored business-logic versions instead")
    read("bounds", "sliding ranges, stable days, rollbacks", "Each parameter's sliding range, stable days, rollbacks and last adjustments.")
    r = read("report", "a cycle's canary report",
             "The canary report of a cycle: per KPI, control and canary means and samples, lift and interval, "
             "p-values, margin, verdict and the deciding rule; the proposal and its predicted impact against what "
             "was realized; the canary plan (power) from Validated; the timeline with reasons.")
    r.add_argument("cycle_id", metavar="CYCLE_ID", help="a cycle id or a unique prefix of one")
    t = read("triage", "incident triage reports and drift events", "Incident triage reports, their GitHub issues, and drift events.")
    t.add_argument("--limit", type=_limit, default=3, help="how many reports (default 3)")
    t.add_argument("--run", action="store_true", help="ask the service to run a triage now")
    t.add_argument("--actor", default=os.environ.get("USER") or _user(), help="who asks (with --run)")
    t.add_argument("--reason", help="why (with --run)")
    rp = read("replay", "replay a cycle from its recorded events and compare",
              "Feed a cycle's recorded events through a fresh core and compare every transition with the log (exact "
              "replay, the default); or, with --log, rebuild cycles from their stored transitions alone and check "
              "every move against the machine and the cycle's row (log replay: no decision re-made, fast).")
    # --- what-if replay, export, replay from a file (issue #11; infra/replay_cli.py) ---
    rp.add_argument("cycle_id", metavar="CYCLE_ID", nargs="?", help="a cycle id or a unique prefix of one")
    rp.add_argument("--what-if", type=Path, metavar="CONFIG", help="YAML whose keys override the recorded configuration")
    rp.add_argument("--all", action="store_true", help="every stored cycle, summarized")
    rp.add_argument("--export", type=Path, metavar="FILE", help="write the recorded cycle as JSON lines")
    rp.add_argument("--from-file", type=Path, metavar="FILE", help="replay an exported cycle")
    rp.add_argument("--log", action="store_true",
                    help="log replay: rebuild the cycle (or --all) from its stored transitions alone and check "
                         "every move and the cycle's row, without re-deciding (fast); default: exact replay")
    # --- end what-if replay ---
    return p


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user database (a container): a neutral name
        return "cli"


def _config(args: argparse.Namespace) -> Config:
    env = dict(os.environ)
    if getattr(args, "nats_url", None):
        env["NATS_URL"] = args.nats_url
    if getattr(args, "data_dir", None):
        env["VVTV_AUTOPILOT_DATA_DIR"] = str(args.data_dir)
    if getattr(args, "http", None):  # web dashboard (issue #11)
        env["VVTV_AUTOPILOT__WEB__LISTEN"] = args.http
    return load_config(getattr(args, "config", None), env)


def _print(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str) if getattr(args, "json", False) else text)


async def _request(config: Config, verb: str, body: dict[str, Any], timeout: float, inbox_prefix: str = "_INBOX") -> dict[str, Any]:
    from nats.errors import Error as NatsError
    from nats.errors import NoRespondersError
    from nats.errors import TimeoutError as NatsTimeout

    from .bus import connect, redact
    from .inbound import excerpt

    async def _quiet(exc: Exception) -> None:
        pass  # a failed attempt is reported once, below, as a BusError

    from .discovery import bus_url

    url, source = bus_url(config)
    if url is None:
        raise BusError(f"no NATS URL: {source}; pass --nats-url, set NATS_URL, or --data-dir of a running service")
    try:
        nc = await asyncio.wait_for(
            connect(url, connect_timeout=min(timeout, 5.0), allow_reconnect=False, max_reconnect_attempts=1,
                    inbox_prefix=inbox_prefix, name="vvtv-autopilot-cli", error_cb=_quiet),
            timeout=timeout)
    except asyncio.TimeoutError:
        raise BusError(f"cannot reach NATS at {redact(url)} (from {source}) within {timeout}s") from None
    subject = f"{config.bus.prefix}.autopilot.ctl.{verb}"
    try:  # nats-py's errors stop here, in the project's words
        msg = await nc.request(subject, json.dumps(body).encode(), timeout=timeout)
    except NoRespondersError:
        raise BusError(f"no autopilot is listening on {subject} (no responder); is it running, with this bus prefix?") from None
    except (NatsTimeout, asyncio.TimeoutError):
        raise BusError(f"the autopilot did not answer {verb} within {timeout}s; is it running?") from None
    except NatsError as exc:
        raise BusError(f"the {verb} request on {subject} failed: {exc}") from exc
    finally:
        await nc.close()
    try:
        reply = json.loads(msg.data)
    except ValueError:
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


def _timeout(args: argparse.Namespace) -> float:
    if getattr(args, "timeout", None) is not None:
        return args.timeout
    return 30.0 if args.command in SLOW_VERBS else 10.0


def _reply_text(verb: str, reply: dict[str, Any]) -> str:
    where = f"(state {reply.get('state')}, cycle {reply.get('cycle_id') or '-'})"
    if not reply.get("ok"):
        return f"refused: {reply.get('error')}  {where}"
    if verb in SLOW_VERBS:
        vid = str(reply.get("version_id") or "")[:16]
        if reply.get("applied"):
            pin = f"; {reply.get('parameter')} pinned until {reply.get('until')}" if reply.get("until") else ""
            return f"applied by VVTV: the card is now {vid}{pin}  {where}"
        return f"ok: {reply.get('outcome')}" + (f"; pinned until {reply.get('until')}" if reply.get("until") else "") + f"  {where}"
    extra = ""
    if reply.get("paused_until") or reply.get("emergency_pause"):
        extra = f"; paused until {reply.get('paused_until') or 'resume'}"
    if reply.get("until") and verb != "pause":
        extra += f"; until {reply.get('until')}"
    return f"ok{extra}  {where}"


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

        return await run_demo(config, cycles=args.cycles, as_json=args.json, data_dir=args.data_dir)
    if args.command == "watch" or (args.command == "status" and args.watch):
        from .watch import watch

        return await watch(config, interval=getattr(args, "interval", 1.0), follow=getattr(args, "follow", False),
                           record=getattr(args, "record", None), timeout=_timeout(args), inbox_prefix=args.inbox_prefix,
                           max_seconds=getattr(args, "max_seconds", None))
    if args.command == "triage" and args.run:
        body = {"actor": args.actor, "run": True} | ({"reason": args.reason} if args.reason else {})
        reply = await _request(config, "triage", body, _timeout(args), args.inbox_prefix)
        counts = ", ".join(f"{k} {v}" for k, v in sorted((reply.get("failure_counts") or {}).items()) if v) or "no failures"
        _print(args, reply, f"triage report {reply.get('report_id')}: {counts}; {reply.get('patch_suggestions')} patch "
                            f"suggestion(s) (`vvtv-autopilot triage` shows it)" if reply.get("ok")
               else f"refused: {reply.get('error')}")
        return EXIT_OK if reply.get("ok") else EXIT_REFUSED
    if args.command == "replay" and (args.what_if or args.all or args.export or args.from_file or args.log
                                     or not args.cycle_id):
        from . import replay_cli  # what-if, export, from a file (issue #11)

        return await replay_cli.replay(config, args)
    if args.command in READS:
        from . import review

        return await review.run_read(config, args, lambda verb, body: _request(config, verb, body, _timeout(args),
                                                                               args.inbox_prefix))
    body = {} if args.command == "status" else _body(args)
    reply = await _request(config, args.command, body, _timeout(args), args.inbox_prefix)
    if args.command == "status":
        from .review import status_text

        text = status_text(reply)
        if reply.get("role"):  # high availability (README, "Deployment: replicas")
            text += (f"\nrole: {reply['role']} ({reply.get('instance')}); leader: {reply.get('leader') or 'none'}, "
                     f"epoch {reply.get('epoch')}")
    else:
        text = _reply_text(args.command, reply)
    _print(args, reply, text)
    return EXIT_OK if reply.get("ok") else EXIT_REFUSED


def _replay_usage(args: argparse.Namespace) -> str | None:
    """What is wrong with a combination of ``replay``'s options, if anything."""
    if args.all and args.cycle_id:
        return f"replay: give a CYCLE_ID or --all, not both ({args.cycle_id!r} and --all)"
    if args.from_file and (args.cycle_id or args.all or args.export):
        return "replay: --from-file FILE replays the cycle in FILE; it takes no CYCLE_ID, --all or --export"
    if args.export and (args.all or args.what_if):
        return "replay: --export FILE writes one recorded cycle; it takes a CYCLE_ID and no --all or --what-if"
    if args.log and (args.what_if or args.export or args.from_file):
        return ("replay: --log checks the stored transition log (of a CYCLE_ID or --all); it does not take "
                "--what-if, --export or --from-file")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "replay" and (problem := _replay_usage(args)):
        parser.error(problem)   # exit 2, with the usage
    from .logs import setup

    verbose = getattr(args, "verbose", False)
    setup(logging.INFO if verbose or args.command == "run" else logging.WARNING,
          getattr(args, "log_format", "text"))
    try:
        return asyncio.run(_main(args))
    except ConfigError as exc:
        print(f"vvtv-autopilot: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BusError as exc:
        print(f"vvtv-autopilot: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except CommandRefused as exc:
        print(f"vvtv-autopilot: refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except AutopilotError as exc:
        print(f"vvtv-autopilot: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
