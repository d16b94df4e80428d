"""The teach run's summary: what was paired and dropped, the labels, the student before and
after, stage II's data, where the bundle went."""
from __future__ import annotations

from typing import Any

__all__ = ["summary"]


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def summary(result: Any) -> str:
    """Plain-text summary of a :class:`~omnibind_train.teach.TeachResult`."""
    r = result.report
    p, lab, acc = r["pairing"], r["labels"], r["student_accuracy_on_bag"]
    sensor = p.get("sensor_messages") or {}
    camera = p.get("camera_messages") or {}
    m = r["modality"]
    off = p.get("abs_offset_ms") or {}
    lines = [
        f"taught {m} into {result.bundle}",
        f"  bag {r['bag']['path']} ({r['bag']['duration_s']:.1f} s), {m} on "
        f"{r['topics']['sensor']['topic']}, camera on {r['topics']['camera']['topic']}",
        f"  paired {r['pairing']['pairs_used']} of {sensor.get('messages', '?')} {m} messages "
        f"with {p['camera_frames'] - p['camera_frames_unused']} of "
        f"{camera.get('messages', '?')} camera frames (tolerance {p['tolerance_ms']:.0f} ms, "
        f"|offset| median {off.get('median', float('nan')):.1f} ms, max "
        f"{off.get('max', float('nan')):.1f} ms; {p['camera_frames_reused']} frames reused)",
        f"  dropped {m}: {p['dropped_no_camera_within_tolerance']} without a camera frame "
        f"within tolerance, {sensor.get('undecodable', 0)} undecodable, "
        f"{sensor.get('rejected', 0)} rejected (stamp order/conversion), "
        f"{sensor.get('preprocessing_failed', 0)} failed preprocessing",
        f"  span {r['span']['seconds']:.1f} s of {m} samples; labels: {lab['source']} "
        f"({lab['labelled_samples']} labelled, {lab['pseudo_labelled_samples']} pseudo-labelled"
        f", {lab['distinct_targets']} classes); pseudo-label accuracy vs "
        f"{lab['truth_for_checks'] or 'no truth'}: {_pct(lab['pseudo_label_accuracy'])}",
        f"  CAD ({'+'.join('L_' + t for t in r['cad']['terms'])}, image-centred): "
        f"{r['cad']['steps']} steps in {r['cad']['seconds']:.0f} s",
        f"  {m} zero-shot on the bag: before teaching {_pct(acc['before']['vs_truth'])} vs "
        f"truth / {_pct(acc['before']['vs_targets'])} vs targets; taught (out-of-fold) "
        f"{_pct(acc['taught_out_of_fold']['vs_truth'])} / "
        f"{_pct(acc['taught_out_of_fold']['vs_targets'])}; in-sample "
        f"{_pct(acc['taught_in_sample']['vs_truth'])} / "
        f"{_pct(acc['taught_in_sample']['vs_targets'])}",
        f"  AF: {r['af']['run_samples']} run samples + {r['af']['bag_rows']} bag rows "
        f"({r['af']['bag_rows_label_matched']} label-matched); run data: {r['af']['run_data']}"
        f"; {r['af']['steps']} steps",
        f"  report: {result.work_dir / 'teach_report.json'}; "
        f"{r['seconds'].get('total', 0):.0f} s in all",
    ]
    return "\n".join(lines)
