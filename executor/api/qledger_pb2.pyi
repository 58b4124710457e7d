from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SignedEnvelope(_message.Message):
    __slots__ = ("envelope",)
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    envelope: bytes
    def __init__(self, envelope: _Optional[bytes] = ...) -> None: ...

class Run(_message.Message):
    __slots__ = ("run_id", "workflow", "status", "steps", "submitted_by", "error", "version", "workflow_json", "rerun_of", "submitted_at", "updated_at", "results_json")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_BY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_JSON_FIELD_NUMBER: _ClassVar[int]
    RERUN_OF_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    RESULTS_JSON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    workflow: str
    status: str
    steps: _containers.RepeatedScalarFieldContainer[str]
    submitted_by: str
    error: str
    version: int
    workflow_json: str
    rerun_of: str
    submitted_at: str
    updated_at: str
    results_json: str
    def __init__(self, run_id: _Optional[str] = ..., workflow: _Optional[str] = ..., status: _Optional[str] = ..., steps: _Optional[_Iterable[str]] = ..., submitted_by: _Optional[str] = ..., error: _Optional[str] = ..., version: _Optional[int] = ..., workflow_json: _Optional[str] = ..., rerun_of: _Optional[str] = ..., submitted_at: _Optional[str] = ..., updated_at: _Optional[str] = ..., results_json: _Optional[str] = ...) -> None: ...

class SubmitWorkflowRequest(_message.Message):
    __slots__ = ("command",)
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    command: SignedEnvelope
    def __init__(self, command: _Optional[_Union[SignedEnvelope, _Mapping]] = ...) -> None: ...

class SubmitWorkflowResponse(_message.Message):
    __slots__ = ("run", "created")
    RUN_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    run: Run
    created: bool
    def __init__(self, run: _Optional[_Union[Run, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class GetArtifactRequest(_message.Message):
    __slots__ = ("run_id", "sha256")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    sha256: str
    def __init__(self, run_id: _Optional[str] = ..., sha256: _Optional[str] = ...) -> None: ...

class Artifact(_message.Message):
    __slots__ = ("sha256", "media_type", "data")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    media_type: str
    data: bytes
    def __init__(self, sha256: _Optional[str] = ..., media_type: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("limit", "workflow", "backend", "dataset_sha256", "submitted_by", "since", "until")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DATASET_SHA256_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_BY_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    limit: int
    workflow: str
    backend: str
    dataset_sha256: str
    submitted_by: str
    since: str
    until: str
    def __init__(self, limit: _Optional[int] = ..., workflow: _Optional[str] = ..., backend: _Optional[str] = ..., dataset_sha256: _Optional[str] = ..., submitted_by: _Optional[str] = ..., since: _Optional[str] = ..., until: _Optional[str] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[Run]
    def __init__(self, runs: _Optional[_Iterable[_Union[Run, _Mapping]]] = ...) -> None: ...

class WatchRunRequest(_message.Message):
    __slots__ = ("run_id", "after_version", "after_position")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    AFTER_POSITION_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    after_version: int
    after_position: int
    def __init__(self, run_id: _Optional[str] = ..., after_version: _Optional[int] = ..., after_position: _Optional[int] = ...) -> None: ...

class CancelRunRequest(_message.Message):
    __slots__ = ("command",)
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    command: SignedEnvelope
    def __init__(self, command: _Optional[_Union[SignedEnvelope, _Mapping]] = ...) -> None: ...

class RerunWorkflowRequest(_message.Message):
    __slots__ = ("run_id", "command")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    command: SignedEnvelope
    def __init__(self, run_id: _Optional[str] = ..., command: _Optional[_Union[SignedEnvelope, _Mapping]] = ...) -> None: ...

class LedgerEntry(_message.Message):
    __slots__ = ("position", "envelope", "leaf_hash", "chain_hash", "event_type", "stream_id", "stream_version")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    LEAF_HASH_FIELD_NUMBER: _ClassVar[int]
    CHAIN_HASH_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_VERSION_FIELD_NUMBER: _ClassVar[int]
    position: int
    envelope: bytes
    leaf_hash: bytes
    chain_hash: bytes
    event_type: str
    stream_id: str
    stream_version: int
    def __init__(self, position: _Optional[int] = ..., envelope: _Optional[bytes] = ..., leaf_hash: _Optional[bytes] = ..., chain_hash: _Optional[bytes] = ..., event_type: _Optional[str] = ..., stream_id: _Optional[str] = ..., stream_version: _Optional[int] = ...) -> None: ...

class GetEntryRequest(_message.Message):
    __slots__ = ("position",)
    POSITION_FIELD_NUMBER: _ClassVar[int]
    position: int
    def __init__(self, position: _Optional[int] = ...) -> None: ...

class StreamEntriesRequest(_message.Message):
    __slots__ = ("from_position", "limit")
    FROM_POSITION_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    from_position: int
    limit: int
    def __init__(self, from_position: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class GetCheckpointRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("tree_size", "root_hash", "note")
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    ROOT_HASH_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    tree_size: int
    root_hash: bytes
    note: str
    def __init__(self, tree_size: _Optional[int] = ..., root_hash: _Optional[bytes] = ..., note: _Optional[str] = ...) -> None: ...

class GetInclusionProofRequest(_message.Message):
    __slots__ = ("position", "tree_size")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    position: int
    tree_size: int
    def __init__(self, position: _Optional[int] = ..., tree_size: _Optional[int] = ...) -> None: ...

class InclusionProof(_message.Message):
    __slots__ = ("leaf_index", "tree_size", "leaf_hash", "path", "root_hash")
    LEAF_INDEX_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    LEAF_HASH_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    ROOT_HASH_FIELD_NUMBER: _ClassVar[int]
    leaf_index: int
    tree_size: int
    leaf_hash: bytes
    path: _containers.RepeatedScalarFieldContainer[bytes]
    root_hash: bytes
    def __init__(self, leaf_index: _Optional[int] = ..., tree_size: _Optional[int] = ..., leaf_hash: _Optional[bytes] = ..., path: _Optional[_Iterable[bytes]] = ..., root_hash: _Optional[bytes] = ...) -> None: ...

class GetInclusionProofsRequest(_message.Message):
    __slots__ = ("positions", "tree_size")
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    positions: _containers.RepeatedScalarFieldContainer[int]
    tree_size: int
    def __init__(self, positions: _Optional[_Iterable[int]] = ..., tree_size: _Optional[int] = ...) -> None: ...

class InclusionProofs(_message.Message):
    __slots__ = ("proofs",)
    PROOFS_FIELD_NUMBER: _ClassVar[int]
    proofs: _containers.RepeatedCompositeFieldContainer[InclusionProof]
    def __init__(self, proofs: _Optional[_Iterable[_Union[InclusionProof, _Mapping]]] = ...) -> None: ...

class GetConsistencyProofRequest(_message.Message):
    __slots__ = ("first", "second")
    FIRST_FIELD_NUMBER: _ClassVar[int]
    SECOND_FIELD_NUMBER: _ClassVar[int]
    first: int
    second: int
    def __init__(self, first: _Optional[int] = ..., second: _Optional[int] = ...) -> None: ...

class ConsistencyProof(_message.Message):
    __slots__ = ("first", "second", "path", "first_root", "second_root")
    FIRST_FIELD_NUMBER: _ClassVar[int]
    SECOND_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    FIRST_ROOT_FIELD_NUMBER: _ClassVar[int]
    SECOND_ROOT_FIELD_NUMBER: _ClassVar[int]
    first: int
    second: int
    path: _containers.RepeatedScalarFieldContainer[bytes]
    first_root: bytes
    second_root: bytes
    def __init__(self, first: _Optional[int] = ..., second: _Optional[int] = ..., path: _Optional[_Iterable[bytes]] = ..., first_root: _Optional[bytes] = ..., second_root: _Optional[bytes] = ...) -> None: ...

class RunRef(_message.Message):
    __slots__ = ("run_id", "artifact")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    artifact: str
    def __init__(self, run_id: _Optional[str] = ..., artifact: _Optional[str] = ...) -> None: ...

class Bundle(_message.Message):
    __slots__ = ("envelope",)
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    envelope: bytes
    def __init__(self, envelope: _Optional[bytes] = ...) -> None: ...

class Lineage(_message.Message):
    __slots__ = ("prov_json",)
    PROV_JSON_FIELD_NUMBER: _ClassVar[int]
    prov_json: str
    def __init__(self, prov_json: _Optional[str] = ...) -> None: ...

class GetReportRequest(_message.Message):
    __slots__ = ("run_id", "against_run_id")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    AGAINST_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    against_run_id: str
    def __init__(self, run_id: _Optional[str] = ..., against_run_id: _Optional[str] = ...) -> None: ...

class Report(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...
