"""The reference workflows shipped with qledger."""

from __future__ import annotations

from typing import Any

BELL: dict[str, Any] = {
    "schema_version": 1, "name": "bell-sampling", "version": 1,
    "circuit": {"template": "bell", "qubits": 2},
    "transpile": {"optimization_level": 1, "seed_transpiler": 11},
    "execute": {"backend": "aer_ideal", "shots": 2048, "seed_simulator": 7, "noise_seed": None},
}

GHZ_NOISY: dict[str, Any] = {
    "schema_version": 1, "name": "ghz-noisy", "version": 1,
    "circuit": {"template": "ghz", "qubits": 4},
    "transpile": {"optimization_level": 2, "seed_transpiler": 5},
    "execute": {"backend": "aer_noisy", "shots": 4096, "seed_simulator": 3, "noise_seed": 42},
}
