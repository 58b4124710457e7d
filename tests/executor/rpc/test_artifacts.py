"""GetArtifact: an artifact's bytes, from the store's hot table or, once `qledger archive` has
moved it, from the archive directory the server is given; never bytes that miss their digest."""

from __future__ import annotations

import json
from pathlib import Path

import grpc

from qledger.api import qledger_pb2 as pb
from qledger.ledger import dsse
from qledger.ledger.artifacts import ArchiveDirectory, artifact_refs
from qledger.ledger.store.artifacts import HotArtifacts, archive
from qledger.runs.reference_workflows import BELL
from tests.conftest import ONLY_SQLITE
from tests.executor.conftest import ServiceFactory
from tests.executor.rpc.test_grpc import code_of


@ONLY_SQLITE  # the servicer's logic; the stores' tables have tests of their own
def test_an_archived_artifact_is_served_from_the_archive(service_factory: ServiceFactory,
                                                         tmp_path: Path) -> None:
    directory = tmp_path / "archive"
    service = service_factory(archive=directory)
    without = service_factory()  # the same store, a server not told where the archive is
    run_id = service.submit(BELL).run.run_id
    entries = service.watch(run_id)
    sha = next(ref["sha256"] for e in entries
               for ref in artifact_refs(json.loads(dsse.parse(e.envelope).payload)["payload"]))
    request = pb.GetArtifactRequest(run_id=run_id, sha256=sha)
    served = service.executor.GetArtifact(request, timeout=10).data
    assert archive(HotArtifacts(service.app.ledger), ArchiveDirectory(directory)).moved >= 1
    assert HotArtifacts(service.app.ledger).get(sha) is None
    assert service.executor.GetArtifact(request, timeout=10).data == served
    with_hint = code_of(lambda: without.executor.GetArtifact(request, timeout=10))
    assert with_hint == (grpc.StatusCode.NOT_FOUND, ["sha256"])
    # A damaged copy is refused, not served.
    ArchiveDirectory(directory).path(sha).write_bytes(served + b" ")
    assert code_of(lambda: service.executor.GetArtifact(request, timeout=10))[0] == grpc.StatusCode.DATA_LOSS
    ArchiveDirectory(directory).path(sha).unlink()
    assert code_of(lambda: service.executor.GetArtifact(request, timeout=10)) == (grpc.StatusCode.NOT_FOUND,
                                                                                   ["sha256"])
