"""The commands of deploy/README.md that tests/deploy/test_container_install.py runs, word for word.

tests/test_deploy.py checks that the README says each of them, so the steps the container test
proves are the steps the README gives.  Host names and ports are the README's (``db:5432``); the
test changes only those, to reach its own PostgreSQL server and free loopback ports.
"""

from __future__ import annotations

ADMIN_STORE = "postgresql://qledger_admin@db:5432/qledger"
SERVICE_STORE = "postgresql://qledger_service@db:5432/qledger"

# Compose step 2: passwords and pgpass files.
PASSWORDS = """mkdir -p keys tls secrets
admin_pw=$(openssl rand -hex 24); service_pw=$(openssl rand -hex 24)
printf '%s\\n' "$admin_pw" > secrets/db_admin_password
printf 'db:5432:qledger:qledger_admin:%s\\n' "$admin_pw" > secrets/admin_pgpass
printf 'db:5432:qledger:qledger_service:%s\\n' "$service_pw" > secrets/pgpass"""

# Compose step 4: owners and modes.
OWNERS = "chmod 0700 keys && chmod 0600 secrets/* tls/*.key && sudo chown -R 999:999 keys tls secrets"
OWNERS_ROOTLESS = "podman unshare chown -R 999:999 keys tls secrets"

# Compose step 5: the service role with its password (psql in the db container).
PSQL = """psql -U qledger_admin -d qledger -v ON_ERROR_STOP=1 -v pw="$service_pw" <<'SQL'
CREATE ROLE qledger_service LOGIN PASSWORD :'pw';
SQL"""

# Compose steps 6 to 8 and the check, each `docker compose run --rm init ...`.
INIT_SERVICE = "docker compose run --rm init"
KEYS_ADD_EXECUTOR = ["keys", "add", "executor-1", "--purpose", "executor", "--store", ADMIN_STORE]
KEYS_ADD_USER = ["keys", "add", "alice", "--store", ADMIN_STORE]
GRANT_USER = ["roles", "grant", "alice", "submitter", "--project", "default", "--store", ADMIN_STORE]
VERIFY = ["verify", "--store", ADMIN_STORE]
# Step 8: the user's key file goes to its user, run by alice (rootless Podman: podman unshare cat).
HAND_OVER_KEY = ("(umask 077 && mkdir -p ~/.qledger/keys && sudo cat keys/alice.key"
                 " > ~/.qledger/keys/alice.key)")

# "Check your install", from the user's machine.
CLIENT_TLS = ["--ca", "ca.pem", "--cert", "alice.pem", "--key", "alice-tls.key"]
HEALTH = ["health", "--server", "HOST:50050", *CLIENT_TLS]
SUBMIT = ["submit", "bell", "--wait", "--as", "alice", "--server", "HOST:50050", *CLIENT_TLS]
RUNS_SHOW = ["runs", "show", "RUN", "--as", "alice", "--server", "HOST:50050", *CLIENT_TLS]

# Kubernetes step 3: each Secret, its keys and the file in deploy/ each comes from.
K8S_SECRETS: dict[str, dict[str, str]] = {
    "qledger-keys": {"executor-1.key": "keys/executor-1.key", "checkpointer.key": "keys/checkpointer.key"},
    "qledger-admin-keys": {"root.key": "keys/root.key", "checkpointer.key": "keys/checkpointer.key"},
    "qledger-pgpass": {"pgpass": "secrets/pgpass"},
    "qledger-admin-pgpass": {"pgpass": "secrets/admin_pgpass"},
    "qledger-tls": {"tls.crt": "tls/server.pem", "tls.key": "tls/server.key",
                    "ca.crt": "tls/client-ca.pem"},
    "qledger-probe-client-tls": {"tls.crt": "tls/probe.pem", "tls.key": "tls/probe.key",
                                 "ca.crt": "tls/ca.pem"},
}
