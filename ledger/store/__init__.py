"""Infrastructure: the eventsourcing recorders that also keep the ledger's tables."""
