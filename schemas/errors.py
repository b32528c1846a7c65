"""Every exception the autopilot raises on purpose, drawn in one place.

    AutopilotError
    ├── ConfigError            a configuration that breaks a rule (refused at start)
    ├── MessageError           an inbound bus message that fails validation (-> DLQ)
    ├── CommandRefused         a valid command that cannot be carried out now
    │   └── BoundsError        a bounds change that would break an invariant of the sliding bounds
    ├── StoreError             the SQLite store is unusable or inconsistent
    ├── BusError               NATS / JetStream cannot be reached or set up
    ├── HistoryError           the business-logic history is missing or corrupt
    │   ├── VersionNotFound
    │   │   └── InvalidVersionId   not 64 lowercase hex: refused before any file is touched
    │   ├── CorruptVersion         a history file whose hash does not match its name
    │   └── VerificationFailed     the card re-read after a write is not the card written
    ├── ReplayMismatch         a replay diverged from the recorded transitions
    ├── RecordingError         a recorded-cycle file (JSON lines) that cannot be read
    └── GitHubError            filing the triage's issues on GitHub failed (never carries the token)
        ├── GitHubAuthError        401, or 403 that is not a rate limit: bad token or no permission (not retried)
        ├── GitHubRefused          another 4xx: unknown repository, invalid label or assignee (not retried)
        └── GitHubUnavailable      5xx, timeouts, connection errors or rate limits beyond the retries allowed
"""

from __future__ import annotations


class AutopilotError(Exception):
    """Base of every error the autopilot raises deliberately."""


class ConfigError(AutopilotError):
    """The configuration breaks a rule; ``problems`` lists (key, value, rule)."""

    def __init__(self, problems: list[tuple[str, object, str]]):
        self.problems = problems
        lines = [f"  {key} = {value!r}: {rule}" for key, value, rule in problems]
        super().__init__("invalid configuration:\n" + "\n".join(lines))


class MessageError(AutopilotError):
    """An inbound message is malformed; the reason is meant for a person."""


class CommandRefused(AutopilotError):
    """A well-formed command that the autopilot will not carry out now."""


class ReadRefused(CommandRefused):
    """A read (``history``, ``report``, ``replay``, a version or cycle id) cannot be answered as
    asked: an unknown or ambiguous id, a prefix too short. The CLI exits 1 and says which."""


class BoundsError(CommandRefused):
    """A bounds operation that would break an invariant; the message names the bound."""


class StoreError(AutopilotError):
    """The store cannot be opened, migrated or written."""


class BusError(AutopilotError):
    """The message bus cannot be reached or configured."""


class HistoryError(AutopilotError):
    """The parameter history is inconsistent (e.g. a corrupt version file)."""


class VersionNotFound(HistoryError):
    """No stored version carries this id."""


class InvalidVersionId(VersionNotFound):
    """The id is not 64 lowercase hex characters, so it cannot name a version."""


class CorruptVersion(HistoryError):
    """A stored version fails its check (hash, JSON object, metadata); it is never used."""


class VerificationFailed(HistoryError):
    """After a deploy or rollback the card on disk was not the one written; the old card was restored."""


class ReplayMismatch(AutopilotError):
    """Replaying a cycle's events produced different transitions than recorded; ``problems`` says where."""

    def __init__(self, cycle_id: str, problems: list[str]):
        self.cycle_id = cycle_id
        self.problems = problems
        super().__init__(f"replay of {cycle_id} differs from the record:\n  " + "\n  ".join(problems))


class RecordingError(AutopilotError):
    """A recorded-cycle export cannot be read: the message names the line and what is wrong."""


class GitHubError(AutopilotError):
    """Filing the weekly triage's issues on GitHub failed; the message says why, in words, and
    never contains the token. ``status`` is the HTTP status when there was one."""

    def __init__(self, message: str, *, status: int | None = None):
        self.status = status
        super().__init__(message)


class GitHubAuthError(GitHubError):
    """GitHub refused the token (401) or its permissions (403 without a rate limit): retrying
    cannot help, an operator must fix the token; the autopilot raises one operator alert."""


class GitHubRefused(GitHubError):
    """GitHub refused the request itself (404 unknown repository, 410, 422 invalid label or
    assignee, ...): a configuration to fix, not retried."""


class GitHubUnavailable(GitHubError):
    """GitHub did not answer usefully within the bounded retries (5xx, timeouts, connection
    errors) or asked to wait longer than ``max_wait_seconds`` (rate limit)."""
