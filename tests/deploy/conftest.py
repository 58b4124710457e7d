"""Fixtures of the container tests: Podman with a storage of their own, the image built from
deploy/Dockerfile, and a PostgreSQL server of their own that asks for passwords."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest

from tests.conftest import Cluster, skip_or_fail, start_private_cluster
from tests.deploy.podman import Podman, base_image, build_image, missing_tools


@pytest.fixture(scope="session")
def podman() -> Podman:
    missing = missing_tools()
    if missing:
        skip_or_fail(f"the container tests need {', '.join(missing)} "
                     "(apt-get install podman runc debootstrap)")
    return Podman.for_tests()


@pytest.fixture(scope="session")
def qledger_image(podman: Podman) -> str:
    started = time.monotonic()
    image = build_image(podman, base_image(podman))
    print(f"image {image} ready in {time.monotonic() - started:.1f} s")  # shown with -s
    return image


@pytest.fixture(scope="module")
def password_pg() -> Iterator[Cluster]:
    """A private cluster where every role but the superuser logs in with a password over TCP:
    a pgpass file the containers cannot read is a failed connection, not a silent trust."""
    cluster = start_private_cluster()
    if cluster is None:
        skip_or_fail("the container tests need PostgreSQL's server binaries (pg_ctl, initdb)")
        raise AssertionError("unreachable")
    try:
        (cluster.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "host all postgres 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n")
        with psycopg.connect(cluster.url, autocommit=True, connect_timeout=10) as conn:
            conn.execute("SELECT pg_reload_conf()")
        yield cluster
    finally:
        cluster.remove()
