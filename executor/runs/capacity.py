"""How wide a circuit each backend can take on this machine, from a memory estimate.

A statevector of n qubits is 2**n complex amplitudes of 16 bytes; a circuit whose statevector
would not fit in a quarter of this machine's memory is refused when it is submitted, with the
field named, instead of being killed for memory halfway through a run.  Matrix product states
grow with entanglement, not width, so ``aer_mps`` takes wide circuits; a device model takes at
most its device's qubits.
"""

from __future__ import annotations

import os

AMPLITUDE_BYTES = 16
MPS_MAX_QUBITS = 512
MEMORY_SHARE = 4  # a statevector may use at most a quarter of the machine's memory


def machine_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def statevector_qubits(memory: int | None = None) -> int:
    """The widest statevector that fits in this machine's share of memory."""
    budget = (memory if memory is not None else machine_memory()) // MEMORY_SHARE
    return max(1, (budget // AMPLITUDE_BYTES).bit_length() - 1)


def statevector_bytes(qubits: int) -> int:
    return AMPLITUDE_BYTES << qubits


def too_wide(backend: str, qubits: int, device_qubits: int | None = None) -> str | None:
    """Why ``qubits`` is too many for ``backend`` here, or None if it fits."""
    if backend == "aer_mps":
        return None if qubits <= MPS_MAX_QUBITS else (
            f"{qubits} qubits is more than aer_mps takes ({MPS_MAX_QUBITS})")
    if device_qubits is not None and qubits > device_qubits:
        return f"{backend} has {device_qubits} qubits; the circuit needs {qubits}"
    limit = statevector_qubits()
    if qubits > limit:
        gib = statevector_bytes(qubits) / 2**30
        return (f"a statevector of {qubits} qubits needs {gib:,.0f} GiB; {backend} here takes at most "
                f"{limit} qubits (a quarter of this machine's memory); use aer_mps for wide, "
                "weakly entangled circuits")
    return None
