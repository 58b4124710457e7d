"""qledger executor: the gRPC service running workflow DAGs (issue 3, not built yet)."""
