"""Backends by name: the Aer simulators, and ``fake:<device>`` for each device model that
``qiskit_ibm_runtime.fake_provider`` ships (a real device's coupling map, basis and calibration)."""

from __future__ import annotations

import functools
import inspect
import re
import threading
from typing import Any

from qiskit_ibm_runtime import fake_provider

SIMULATORS = frozenset({"aer_ideal", "aer_noisy", "aer_mps"})
_PREFIX = "fake:"
_lock = threading.Lock()


def _device_classes() -> dict[str, type]:
    """``fake:brisbane`` -> FakeBrisbane, for every V2 device model in the provider."""
    found: dict[str, type] = {}
    for name, cls in vars(fake_provider).items():
        if (inspect.isclass(cls) and name.startswith("Fake")
                and issubclass(cls, fake_provider.fake_backend.FakeBackendV2)
                and getattr(cls, "backend_name", None)):
            device = re.sub(r"^fake_", "", str(getattr(cls, "backend_name", "")))
            found[_PREFIX + device] = cls
    return found


DEVICE_CLASSES = _device_classes()
DEVICE_MODELS = frozenset(DEVICE_CLASSES)


@functools.cache
def _instance(name: str) -> Any:
    return DEVICE_CLASSES[name]()


def fake_device(name: str) -> Any:
    """The device model ``fake:<device>`` (one instance per process: loading one reads its JSON)."""
    with _lock:
        return _instance(name)


def device_qubits(name: str) -> int | None:
    """The device's qubit count for a device model; None for a simulator."""
    return int(fake_device(name).num_qubits) if name in DEVICE_MODELS else None
