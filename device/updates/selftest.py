"""A bundle's self-test on this device: its golden inputs must reproduce the stored outputs within
the per-precision tolerances of device/runtime/variant_check.py, both on every CPU variant (what ``bedside
doctor`` checks) and on the variant this appliance serves, loaded on its configured backend the way
the kiosk loads it (a TensorRT engine is built or loaded there)."""

from __future__ import annotations

from dataclasses import dataclass

from device.runtime.backend_choice import AUTO, choose
from device.runtime.base import RuntimeFailure, RuntimeUnavailable
from device.runtime.triager import Triager
from device.runtime.variant_check import live_check, selftest_variants
from models.bundle import Bundle


@dataclass(frozen=True)
class SelfTestResult:
    exam_id: str
    version: str
    ok: bool
    checks: list[dict]  # one per variant run: file, precision, backend, ok, max_prob_diff, tolerance, ...

    def reason(self) -> str:
        """The first failed check, as one line ("" when ok)."""
        for c in self.checks:
            if not c["ok"]:
                if "error" in c:
                    return f"{c['precision']} on {c['backend']}: {c['error']}"
                return (f"{c['precision']} on {c['backend']} ({c['file']}): max |dp| {c['max_prob_diff']:.1e} "
                        f"(limit {c['tolerance']:.0e}), agreement {c['agreement']:.0%} (needs {c['min_agreement']:.0%})")
        return ""

    def as_json(self) -> dict:
        return {"exam": self.exam_id, "version": self.version, "ok": self.ok, "checks": self.checks}


def selftest(bundle: Bundle, backend: str, precision: str, threads: int | None = None,
             backend_settings: object | None = None) -> SelfTestResult:
    """Run every check; a runtime that cannot load the served variant is a failed check, not a crash."""
    checks = [{**c, "backend": "onnxruntime"} for c in selftest_variants(bundle)]
    checks.append(_served_check(bundle, backend, precision, threads, backend_settings))
    m = bundle.manifest
    return SelfTestResult(m.id, m.version, all(c["ok"] for c in checks), checks)


def _served_check(bundle: Bundle, backend: str, precision: str, threads: int | None,
                  backend_settings: object | None) -> dict:
    """The served variant chosen and loaded as the kiosk does (device.runtime.backend_choice: "auto" picks,
    engines are built or loaded), then checked."""
    try:
        choice, loaded = choose(bundle, backend, precision, threads or 1,
                                {} if backend == AUTO else {backend: backend_settings}, None)
        triager = Triager(bundle, choice.backend, choice.precision, threads or 1, backend_settings, loaded)
    except (RuntimeFailure, RuntimeUnavailable) as exc:
        return {"file": "", "precision": precision, "backend": backend, "ok": False, "error": str(exc)}
    try:
        return live_check(triager)
    except RuntimeFailure as exc:
        return {"file": "", "precision": precision, "backend": backend, "ok": False, "error": str(exc)}
    finally:
        triager.close()
