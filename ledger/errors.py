"""One error base class; each subclass says what went wrong and what to do about it."""

from __future__ import annotations


class QledgerError(Exception):
    """Base class of every error qledger raises on purpose."""

    #: One line for a person: what to do next.
    hint: str = ""

    def one_line(self) -> str:
        text = str(self).replace("\n", " ")
        return f"{text} ({self.hint})" if self.hint else text


class StoreUnavailableError(QledgerError):
    """The store URL is malformed or its database does not answer."""

    hint = "check --store / $QLEDGER_STORE and that the database is running"


class StoreNotInitialisedError(QledgerError):
    """The store has no genesis entry yet."""

    hint = "run `qledger init` first"


class RejectedEntryError(QledgerError):
    """An entry was refused before anything was written."""

    hint = "nothing was written; fix the entry and submit it again"


class OversizedEntryError(RejectedEntryError):
    """The signed envelope exceeds the maximum entry size."""


class NonCanonicalEntryError(RejectedEntryError):
    """The envelope or its payload is not RFC 8785 canonical JSON, or is malformed."""


class BadSignatureError(RejectedEntryError):
    """The signature does not verify for the key it names."""


class UnknownKeyError(RejectedEntryError):
    """The signing key is not registered in the ledger."""

    hint = "register the key with `qledger keys add` (signed by an admin) first"


class RevokedKeyError(RejectedEntryError):
    """The signing key was revoked before this position."""

    hint = "sign with a key that is still registered"


class NotAuthorisedError(RejectedEntryError):
    """The signing key may not make this kind of entry (e.g. a key change by a non-admin)."""


class ContentMismatchError(RejectedEntryError):
    """The envelope's content disagrees with the event it is stored as."""


class KeyFileError(QledgerError):
    """A key file is missing, unreadable or has unsafe permissions."""

    hint = "check $QLEDGER_HOME; private key files must be mode 0600"


class UnreadableEntryError(QledgerError):
    """An entry is stored (signed, chained) but this version cannot interpret it: an entry
    recorded before its kind was checked whole.  Readers skip it and say so."""

    hint = "the ledger still verifies; the entry is reported, never rewritten (the log is append-only)"


class DamagedArtifactError(QledgerError):
    """An artifact's stored bytes no longer hash to the digest its entries reference."""

    hint = "restore it from a copy; `qledger verify --archive DIR` finds the first damaged one"


class ProofError(QledgerError):
    """A proof was requested for positions the tree does not have."""


class CheckpointTrustError(QledgerError):
    """A checkpoint is not signed by the pinned checkpoint key, or belongs to another log."""

    hint = "pin the checkpoint key of the ledger you audit (`qledger keys public checkpoint` on it)"


class InconsistentHistoryError(QledgerError):
    """The newer tree does not extend the saved one: history was rewritten, dropped or forked."""

    hint = "keep the saved checkpoint and the evidence; this ledger's history changed"


class DefinitionError(QledgerError):
    """A document a caller wrote (a workflow definition) is wrong; ``field`` is the dotted path to
    what is wrong in it and ``description`` says how."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.description = field, message


class FormatError(QledgerError):
    """Bytes that cannot be read as the format they claim to be."""


class LogFormatError(FormatError):
    """An exported log cannot be read."""

    hint = "give a file written by `qledger export-log`"


class NoteFormatError(FormatError):
    """A signed note (a checkpoint) is malformed."""


class BundleFormatError(FormatError):
    """A file is not a qledger lineage bundle at all."""

    hint = "give a file written by `qledger export-bundle`"


class UnknownProjectionError(QledgerError):
    """No projection has that name."""

    hint = "`qledger projections status` lists them"


# -- refusals of a request, whatever transport carried it (rpc.status maps each to a code) ----

class RequestRefusedError(QledgerError):
    """A request was refused before anything of it was recorded; ``field`` names what was
    wrong in it (a dotted path into the request), where one thing was."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.code = ""  # the gRPC status name, where a client met the refusal in a failed call


class InvalidRequestError(RequestRefusedError):
    """The request is malformed or its values are out of range."""


class UnauthenticatedError(RequestRefusedError):
    """The caller could not be identified, or its signature does not verify."""


class PermissionDeniedError(RequestRefusedError):
    """The caller is known but may not do this."""


class AlreadyExistsError(RequestRefusedError):
    """The request names something that exists already, differently."""


class ExhaustedError(RequestRefusedError):
    """A limit is reached (a budget, the queue); ``retry_seconds`` says when to try again, if
    waiting helps."""

    def __init__(self, message: str, field: str | None = None, retry_seconds: int | None = None) -> None:
        super().__init__(message, field)
        self.retry_seconds = retry_seconds


class OutOfRangeError(RequestRefusedError):
    """A position or size lies outside what the ledger has."""


class PreconditionError(RequestRefusedError):
    """The request is well-formed but this server cannot serve it as it is configured."""


class NotFoundError(RequestRefusedError):
    """The run or artifact asked for is not in the ledger (or not in its projections yet)."""

    hint = "check the id; `qledger runs list` lists runs"


class CallFailedError(QledgerError):
    """A call to a server failed for a reason that is not a refusal of the request itself: the
    server is unreachable, overloaded, out of time or broken.  ``code`` is the gRPC status name."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class RunFailedError(QledgerError):
    """A run ended without results: failed (``error_class``, ``step``, ``kind`` as recorded) or
    cancelled."""

    def __init__(self, message: str, run_id: str, status: str, error_class: str = "", step: str = "",
                 kind: str = "") -> None:
        super().__init__(message)
        self.run_id, self.status = run_id, status
        self.error_class, self.step, self.kind = error_class, step, kind
