"""TLS and mutual TLS on the gRPC server: a client without a valid certificate is refused."""

from __future__ import annotations

import datetime
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from qledger.api import qledger_pb2 as pb
from qledger.api import qledger_pb2_grpc as pb_grpc
from qledger.governance.changes import grant_role
from qledger.governance.policy import ALL_PROJECTS
from qledger.ledger.admin import CHECKPOINTER, ROOT
from qledger.ledger.keys import KeyStore
from qledger.rpc.channel import client_channel
from qledger.rpc.server import PlaintextRefusedError, TLSConfig, start_server
from tests.ledger.helpers import make_ledger

PEM = serialization.Encoding.PEM


def issue(name: str, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None, ca: bool = False
          ) -> tuple[bytes, bytes, x509.Name, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer or (subject, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=1))
               .not_valid_after(now + datetime.timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]),
                                        critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    key_pem = key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return cert.public_bytes(PEM), key_pem, subject, key


def test_mutual_tls(sqlite_store_url: str, qledger_home: Path) -> None:
    app, _ = make_ledger(sqlite_store_url, qledger_home)
    keys = KeyStore(qledger_home)
    executor_key = keys.load_or_create("executor-1")
    app.register_key("root", "executor-1", executor_key.public, "executor")
    ca_cert, _, ca_name, ca_key = issue("qledger test CA", None, ca=True)
    server_cert, server_key, _, _ = issue("localhost", (ca_name, ca_key))
    client_cert, client_key, _, _ = issue("alice", (ca_name, ca_key))
    carol_cert, carol_key, _, _ = issue("carol", (ca_name, ca_key))  # a valid certificate, no role
    grant_role(app, keys.load(ROOT), "alice", "auditor", ALL_PROJECTS)
    rogue_ca_cert, _, rogue_name, rogue_key = issue("rogue CA", None, ca=True)
    rogue_cert, rogue_key_pem, _, _ = issue("mallory", (rogue_name, rogue_key))
    running = start_server(app, executor_key, keys.load(CHECKPOINTER), listen="127.0.0.1:0",
                           tls=TLSConfig(server_cert, server_key, client_ca=ca_cert))
    address = f"127.0.0.1:{running.port}"
    request = pb.GetEntryRequest(position=1)
    try:
        with client_channel(address, ca_cert, client_cert, client_key, "localhost") as channel:
            # Identified by the certificate's common name, authorised by alice's auditor role.
            assert pb_grpc.LedgerStub(channel).GetEntry(request, timeout=10).position == 1
        with client_channel(address, ca_cert, carol_cert, carol_key, "localhost") as channel, \
                pytest.raises(grpc.RpcError) as caught:
            pb_grpc.LedgerStub(channel).GetEntry(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
        for cert, key in ((None, None), (rogue_cert, rogue_key_pem)):
            with client_channel(address, ca_cert, cert, key, "localhost") as channel, \
                    pytest.raises(grpc.RpcError) as caught:
                pb_grpc.LedgerStub(channel).GetEntry(request, timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        with client_channel(address) as channel, pytest.raises(grpc.RpcError):
            pb_grpc.LedgerStub(channel).GetEntry(request, timeout=5)  # plaintext to a TLS port
    finally:
        running.stop()
    assert rogue_ca_cert != ca_cert
    # Plaintext is refused off loopback; TLS may listen anywhere.
    with pytest.raises(PlaintextRefusedError):
        start_server(app, executor_key, None, listen="0.0.0.0:0")


def test_tls_material_that_is_not_what_its_option_says_is_named(tmp_path: Path) -> None:
    from qledger.rpc.server import TLSMaterialError

    ca_cert, _, ca_name, ca_key = issue("qledger test CA", None, ca=True)
    cert, key, _, _ = issue("localhost", (ca_name, ca_key))
    _, other_key, _, _ = issue("localhost", (ca_name, ca_key))
    files = {}
    for name, data in {"cert": cert, "key": key, "other": other_key, "ca": ca_cert, "junk": b"hello"}.items():
        files[name] = tmp_path / name
        files[name].write_bytes(data)
    assert TLSConfig.from_files(files["cert"], files["key"], files["ca"]).cert == cert
    cases = [((files["key"], files["cert"], None), "they are swapped"),
             ((files["cert"], files["other"], None), "not the private key of the certificate"),
             ((files["junk"], files["key"], None), "--tls-cert is not a PEM certificate"),
             ((files["cert"], files["junk"], None), "--tls-key is not an unencrypted PEM private key"),
             ((files["cert"], files["key"], files["junk"]), "--client-ca is not a PEM certificate")]
    for arguments, said in cases:
        with pytest.raises(TLSMaterialError, match=said):
            TLSConfig.from_files(*arguments)
