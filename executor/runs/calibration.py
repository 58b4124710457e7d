"""A device model's calibration snapshot: what a run on it depended on, and how old it was.

Each parameter of a calibration (T1, T2, readout error of a qubit; error and length of a gate)
carries its own date.  A run records the snapshot by digest, the backend's name and version,
``last_update_date``, and the age at run time of the parameters of the physical qubits its
transpiled circuit uses (the maximum and the median): the facts a reproducibility report and a
``max_calibration_age`` policy need.
"""

from __future__ import annotations

import hashlib
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from qledger.ledger.canonical import canonical_bytes


def _plain(value: Any) -> Any:
    """JSON values only: datetimes as ISO 8601 text, tuples as lists."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value != value:  # NaN has no JSON spelling
        return None
    return value


@dataclass(frozen=True)
class CalibrationSnapshot:
    backend: str
    backend_version: str
    last_update_date: str
    data: bytes  # the properties as canonical JSON: the artifact
    sha256: str
    qubit_dates: dict[int, list[datetime]]
    gate_dates: list[tuple[tuple[int, ...], datetime]]

    @classmethod
    def of(cls, device: Any) -> CalibrationSnapshot:
        properties = device.properties()
        data = canonical_bytes(_plain(properties.to_dict()))
        qubit_dates = {index: [p.date for p in params if getattr(p, "date", None)]
                       for index, params in enumerate(properties.qubits)}
        gate_dates = [(tuple(gate.qubits), p.date) for gate in properties.gates
                      for p in gate.parameters if getattr(p, "date", None)]
        return cls(str(device.name), str(getattr(device, "backend_version", "")),
                   properties.last_update_date.isoformat(), data, hashlib.sha256(data).hexdigest(),
                   qubit_dates, gate_dates)

    def ages(self, qubits: Iterable[int], now: datetime | None = None) -> list[float]:
        """Seconds since each parameter of ``qubits`` (and of gates on them only) was calibrated."""
        used = set(qubits)
        moment = now or datetime.now(UTC)
        dates = [d for q in sorted(used) for d in self.qubit_dates.get(q, [])]
        dates += [d for gate, d in self.gate_dates if set(gate) <= used]
        return [(moment - (d if d.tzinfo else d.replace(tzinfo=UTC))).total_seconds() for d in dates]

    def record(self, qubits: Iterable[int], artifact: dict[str, Any], now: datetime | None = None
               ) -> dict[str, Any]:
        ages = self.ages(qubits, now)
        return {"backend": self.backend, "backend_version": self.backend_version,
                "last_update_date": self.last_update_date, "sha256": self.sha256, "snapshot": artifact,
                "parameters": len(ages),
                "max_age_seconds": round(max(ages), 3) if ages else None,
                "median_age_seconds": round(statistics.median(ages), 3) if ages else None}
