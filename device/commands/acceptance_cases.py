"""The cases of a site acceptance and how they are scored: a labelled folder (one subfolder per
label, as `bedside eval` reads it), a CSV of file,label[,patient], or the kiosk's own reviewed
studies (labelled by the reviewer's agree / disagree with the triage); each run through the exam as
the kiosk serves it (its decoder and budget, reduced decode, quality checks, preprocessing, backend
and variant), at the bundle's own operating point."""

from __future__ import annotations

import csv
import hashlib
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from device import intake
from device.commands.evaluate import NOT, DataFolderError, labelled_files
from device.core.decoding import Decoder
from device.core.serving import Exam
from device.core.store import Store
from device.decision.triage import UNGRADABLE, URGENT, TriageResult
from device.site.acceptance import Case
from device.site.signals import signals_of
from models.bundle import AcceptanceRule, Manifest
from models.drift import P_URGENT


@dataclass(frozen=True)
class Source:
    """One labelled case before it is scored."""

    name: str
    label: str
    positive: bool
    urgent: bool
    patient: str
    read: Callable[[], bytes]


def _is_positive(index: int, manifest: Manifest, rule: AcceptanceRule, single: str | None) -> bool:
    if index == NOT:
        return False
    if rule.on == "focus_label":
        return manifest.labels[index] == manifest.policy.focus_label
    return manifest.labels[index] == single if single else index in manifest.urgent_indices


def folder_sources(data: Path, manifest: Manifest, rule: AcceptanceRule) -> tuple[list[Source], str | None]:
    """A labelled folder (or a one-vs-rest pair such as mel/ + not_mel/): its cases, and the one label
    of a one-vs-rest pair (then the positive cases are that label's)."""
    items, single = labelled_files(data, manifest)
    if rule.on == "focus_label" and single not in (None, manifest.policy.focus_label):
        raise DataFolderError(f"this bundle's rule protects {manifest.policy.focus_label}: a one-vs-rest folder "
                              f"must name it, not {single}")
    policy = manifest.evaluation
    sources = []
    for path, index in items:
        label = f"not_{single}" if index == NOT else manifest.labels[index]
        patient = policy.patient_of(path.name) if policy else path.name
        sources.append(Source(path.relative_to(data).as_posix(), label, _is_positive(index, manifest, rule, single),
                              index != NOT and index in manifest.urgent_indices, patient, path.read_bytes))
    return sources, single


def csv_sources(table: Path, manifest: Manifest, rule: AcceptanceRule) -> Iterable[Source]:
    """A CSV with a header naming file and label (and optionally patient); files relative to its folder."""
    by_lower = {label.lower(): i for i, label in enumerate(manifest.labels)}
    with open(table, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"file", "label"} <= set(rows[0]):
        raise DataFolderError(f"{table}: a CSV needs a header with the columns file,label (and optionally patient)")
    policy = manifest.evaluation
    for n, row in enumerate(rows, start=2):
        index = by_lower.get(row["label"].strip().lower())
        if index is None:
            raise DataFolderError(f"{table}, line {n}: label {row['label']!r} is none of {', '.join(manifest.labels)}")
        path = (table.parent / row["file"].strip()).resolve()
        patient = (row.get("patient") or "").strip() or (policy.patient_of(path.name) if policy else path.name)
        yield Source(row["file"].strip(), manifest.labels[index], _is_positive(index, manifest, rule, None),
                     index in manifest.urgent_indices, patient, path.read_bytes)


def reviewed_sources(store: Store, manifest: Manifest) -> Iterable[Source]:
    """The exam's reviewed studies whose reviewer said agree or disagree: an URGENT study agreed with, or
    a ROUTINE one disagreed with, is a case of the urgent group; the others are not. UNGRADABLE studies
    had no triage to agree with."""
    finding = manifest.finding
    for study in store.reviewed_with_agreement(manifest.id):
        if study.triage == UNGRADABLE:
            continue
        urgent = (study.triage == URGENT) == (study.review_agreement == "agree")
        path = store.image_path(study.image_sha256)
        yield Source(f"study #{study.id} ({study.filename})", f"{finding} (by review)" if urgent else "other (by review)",
                     urgent, urgent, study.reference or f"study {study.id}", path.read_bytes)


def score(exam: Exam, decoder: Decoder, sources: Iterable[Source], total: int | None = None
          ) -> tuple[list[Case], list[dict]]:
    """Every case through the exam as served, in batches as a burst would run; and the unreadable files."""
    triager = exam.triager
    cases: list[Case] = []
    unreadable: list[dict] = []
    pending: list[tuple[Source, str, intake.DecodedImage]] = []
    prepared = []

    def flush() -> None:
        for (source, sha, img), result in zip(pending, triager.triage_prepared(prepared)):
            cases.append(_case(source, sha, img, result))
        pending.clear()
        prepared.clear()

    for source in tqdm(sources, total=total, desc="acceptance", unit="case", file=sys.stderr, leave=False):
        try:
            data = source.read()
        except OSError as exc:
            unreadable.append({"file": source.name, "reason": f"cannot read: {exc.strerror or exc}"})
            continue
        try:
            img, decode_ms = decoder.decode(data, source.name, triager.reduced_decode)
        except intake.IntakeError as exc:
            unreadable.append({"file": source.name, "reason": exc.reason})
            continue
        pending.append((source, hashlib.sha256(data).hexdigest(), img))
        prepared.append(triager.prepare(img, source.name, decode_ms, triager.operating_point))
        if len(prepared) == triager.max_batch:
            flush()
    if prepared:
        flush()
    return cases, unreadable


def _case(source: Source, sha: str, img: intake.DecodedImage, result: TriageResult) -> Case:
    height, width = img.original_size
    gradable = result.triage != UNGRADABLE
    return Case(file=source.name, sha256=sha, label=source.label, positive=source.positive, urgent=source.urgent,
                patient=source.patient, p_urgent=min(1.0, max(0.0, result.model_output.urgent_probability)),
                gradable=gradable, reasons=[i.message for i in result.reasons],
                triage=result.triage, aspect=width / height,
                signals={k: round(v, 6) for k, v in signals_of(result).items() if k != P_URGENT})
