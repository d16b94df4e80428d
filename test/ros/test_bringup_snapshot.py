"""``omnibind-bringup --snapshot PNG``: the bringup subscribes to ``~/annotated_image`` (so the
node renders it), saves one answered frame as a PNG and stops."""
from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest

from omnibind_ros.tools import bringup


def test_snapshot_option_defaults_to_the_cache(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.setenv("OMNIBIND_CACHE_DIR", str(tmp_path))
    args = bringup.build_parser().parse_args(["--snapshot"])
    assert args.snapshot == tmp_path / "screenshots" / "annotated_image.png"
    args = bringup.build_parser().parse_args(["--snapshot", "x.png", "--snapshot-after", "2"])
    assert (args.snapshot, args.snapshot_after) == (Path("x.png"), 2.0)
    assert bringup.build_parser().parse_args([]).snapshot is None


@pytest.mark.ros
def test_bringup_saves_one_annotated_frame_and_stops(tiny_bundle_dir: Path,
                                                     tmp_path: Path) -> None:
    import cv2

    png = tmp_path / "shots" / "annotated.png"
    opts = bringup.BringupOptions(bundle=str(tiny_bundle_dir), ui=False, snapshot=png,
                                  snapshot_after_s=1.0, duration_s=60.0)
    stop = threading.Event()
    watchdog = threading.Timer(90.0, stop.set)
    watchdog.start()
    try:
        summary = bringup.run_bringup(opts, stop=stop, out=io.StringIO())
    finally:
        watchdog.cancel()
    assert not stop.is_set(), "the run did not end after the snapshot"
    assert summary["snapshot"] == str(png) and summary["snapshot_error"] is None, summary
    assert summary["duration_s"] < 30.0, "stopped once the frame was saved"
    image = cv2.imread(str(png))
    assert image is not None and image.shape[1] == 640 and image.shape[0] > 480
