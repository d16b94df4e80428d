"""``omnibind-train teach`` end to end on a tiny synthetic bag (rosbags-written, no rclpy).

The world: five labels; in each 1 s episode the camera sees the label's colour and a thermal
camera (mono16 counts, 8 Hz, stamps not aligned with the 10 Hz camera) a disc at the label's
temperature. The image teacher of the tiny bundle is fitted to the colours in the fixture, so
its embeddings carry the label; the thermal sensor is new to the bundle. Teaching must pair,
drop what has no camera frame (a 1 s camera gap), distil, retrain AF and export a bundle that
carries thermal with its provenance, and the taught thermal encoder must classify a held-out bag
far better than the same student untrained.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from omnibind_train.teach import TeachConfig, TeachError, teach
from omnibind_train.testing import TINY_EXPORTER, TINY_LABELS, tiny_models

T0 = 1_700_000_000_000_000_000
S = 1_000_000_000
COLOURS = np.array([[230, 40, 40], [40, 200, 40], [40, 60, 230], [230, 220, 40],
                    [200, 40, 220]], np.float32)
TEMPS_C = (5.0, 15.0, 25.0, 35.0, 45.0)
CAM, THERMAL, TRUTH = "/robot/camera/image_raw", "/robot/thermal/image_raw", \
    "/omnibind/ground_truth"


def _frame(label: int, rng: np.random.Generator, px: int = 40) -> np.ndarray:
    """The camera's view: the label's colour on a noisy background square."""
    img = rng.normal(120, 20, (px, px, 3))
    y, x = rng.integers(0, px // 3, 2)
    img[y:y + 2 * px // 3, x:x + 2 * px // 3] = COLOURS[label] + rng.normal(0, 15, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def _thermal(label: int, rng: np.random.Generator) -> np.ndarray:
    """mono16 counts (K x 100): a disc at the label's temperature on a 20 C room."""
    yy, xx = np.mgrid[:30, :40]
    cy, cx, r = rng.uniform(10, 20), rng.uniform(12, 28), rng.uniform(7, 11)
    temp = np.where((yy - cy) ** 2 + (xx - cx) ** 2 < r * r, TEMPS_C[label], 20.0)
    temp = temp + rng.normal(0, 0.5, temp.shape)
    return np.round((temp + 273.15) * 100).astype(np.uint16)


def write_bag(path: Path, *, seed: int, seconds: int, camera: bool = True,
              thermal: bool = True, camera_gap: tuple[float, float] | None = None,
              empty_topics: bool = False) -> None:
    from rosbags.rosbag2 import StoragePlugin, Writer

    from omnibind_ros.bag.types import typestore

    ts = typestore()
    Image, Header, Time, GT = (ts.types[t] for t in (
        "sensor_msgs/msg/Image", "std_msgs/msg/Header", "builtin_interfaces/msg/Time",
        "omnibind_ros/msg/GroundTruth"))
    rng = np.random.default_rng(seed)
    labels = np.concatenate([rng.permutation(5) for _ in range(seconds // 5 + 1)])[:seconds]

    def stamp(ns: int):
        return Time(sec=ns // S, nanosec=ns % S)

    msgs = []
    for k in range(seconds * 10):
        t = k / 10
        if not camera or (camera_gap and camera_gap[0] <= t < camera_gap[1]):
            continue
        ns = T0 + k * S // 10
        px = _frame(int(labels[int(t)]), rng)
        msgs.append((ns, CAM, Image(header=Header(stamp=stamp(ns), frame_id="cam"), height=40,
                                    width=40, encoding="rgb8", is_bigendian=0, step=120,
                                    data=px.reshape(-1))))
    for k in range(seconds * 8 if thermal else 0):
        ns = T0 + k * S // 8 + 7_000_000  # 8 Hz, 7 ms after the tick: never on a camera stamp
        counts = _thermal(int(labels[(ns - T0) // S]), rng)
        msgs.append((ns, THERMAL, Image(header=Header(stamp=stamp(ns), frame_id="lepton"),
                                        height=30, width=40, encoding="mono16", is_bigendian=0,
                                        step=80, data=counts.reshape(-1).view(np.uint8))))
    for k in range(seconds * 2):
        ns = T0 + k * S // 2
        e = int((ns - T0) // S)
        msgs.append((ns, TRUTH, GT(header=Header(stamp=stamp(ns), frame_id=""),
                                   label=TINY_LABELS[labels[e]], class_index=int(labels[e]),
                                   episode=e, episode_start=stamp(T0 + e * S), shape="",
                                   material="")))
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conns = {topic: w.add_connection(topic, msgtype, typestore=ts) for topic, msgtype in (
            (CAM, "sensor_msgs/msg/Image"), (THERMAL, "sensor_msgs/msg/Image"),
            (TRUTH, "omnibind_ros/msg/GroundTruth"))
            if empty_topics or any(m[1] == topic for m in msgs)}
        for ns, topic, msg in sorted(msgs, key=lambda m: m[0]):
            w.write(conns[topic], ns, ts.serialize_cdr(msg, msg.__msgtype__))


@pytest.fixture(scope="module")
def teacher_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny bundle (image + point cloud, no thermal) whose image encoder knows the colours."""
    from omnibind_ros.core.preprocess import build_preprocessor
    from omnibind_train.export import export_bundle

    models = tiny_models(modalities=("image", "point_cloud"))
    image = models.encoders["image"].train()
    pre = build_preprocessor("image", models.preprocess_configs["image"])
    rng = np.random.default_rng(1)
    labels = torch.arange(400) % 5
    x = torch.from_numpy(np.stack([pre(_frame(int(c), rng)) for c in labels]))
    opt = torch.optim.Adam(image.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        idx = torch.randint(0, 400, (50,), generator=gen)
        logits = 10 * F.normalize(image(x[idx]), dim=-1) @ models.label_embeddings.T
        loss = F.cross_entropy(logits, labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    image.eval()
    with torch.no_grad():
        acc = float(((image(x) @ models.label_embeddings.T).argmax(1) == labels).float().mean())
    assert acc > 0.95, f"the tiny image teacher did not learn the colours ({acc:.2f})"
    out = tmp_path_factory.mktemp("teacher") / "bundle"
    return export_bundle(out, **models.export_kwargs(), exporter=TINY_EXPORTER)


def _cfg(tmp: Path, **changes) -> TeachConfig:
    overrides = [f"cache_dir={tmp / 'cache'}", f"work_dir={tmp / 'work'}", "progress=false",
                 "trunk_runtime=torch", "preprocess={size: 32}", "crossfit_block_s=2.0",
                 "cad.loop.epochs=25", "cad.loop.batch_size=16",
                 "af={loop: {epochs: 4, batch_size: 32}}", "export.exporter={'*': torchscript, "
                 "text: dynamo}"]
    overrides += [f"{k}={v}" for k, v in changes.items()]
    return TeachConfig.from_yaml(Path(__file__).parents[1] / "configs" / "teach.yaml", overrides)


def _thermal_accuracy(bag: Path, embed, preprocess: dict, label_emb: torch.Tensor) -> float:
    """Top-1 of ``embed(inputs [B, ...]) -> [B, D]`` on a bag's thermal messages vs truth."""
    from omnibind_ros.bag.reader import open_info
    from omnibind_ros.bag.truth import GroundTruth
    from omnibind_ros.bag_inputs import InputSpec, iter_inputs

    spec = InputSpec("thermal", "thermal", THERMAL, "sensor_msgs/msg/Image", preprocess)
    got = [(a.stamp_ns, x) for _, a, x in iter_inputs(bag, [spec], {"thermal": range(10**6)})]
    truth = GroundTruth.from_bag(bag, end_ns=open_info(bag).end_ns + 1)
    names = list(TINY_LABELS)
    y = torch.tensor([names.index(truth.label_at(t)) for t, _ in got])
    emb = torch.as_tensor(embed(np.stack([x for _, x in got])))
    return float(((F.normalize(emb, dim=-1) @ label_emb.T).argmax(1) == y).float().mean())


def test_teach_a_thermal_camera_from_a_tiny_bag(teacher_bundle: Path, tmp_path: Path) -> None:
    from omnibind_ros.core.backends import create_backend
    from omnibind_ros.core.bundle import load_bundle
    from omnibind_train.teach.bundle_io import student_encoder

    bag, held_out = tmp_path / "teach_bag", tmp_path / "held_out"
    write_bag(bag, seed=0, seconds=16, camera_gap=(6.0, 7.0))
    write_bag(held_out, seed=5, seconds=10, camera=False)
    before = hashlib.sha256((teacher_bundle / "bundle.yaml").read_bytes()).hexdigest()
    cfg = _cfg(tmp_path)
    result = teach(bag, teacher_bundle, tmp_path / "taught", cfg)

    taught = load_bundle(result.bundle)  # loads and validates (checksums, graphs' I/O)
    assert taught.modality_names == ("image", "thermal", "point_cloud")
    assert hashlib.sha256((teacher_bundle / "bundle.yaml").read_bytes()).hexdigest() == before
    assert "thermal" not in load_bundle(teacher_bundle).modalities
    prov = taught.provenance["teach"][-1]
    assert prov["modality"] == "thermal" and prov["bag"]["path"] == str(bag.absolute())
    assert prov["topics"] == {"camera": {"topic": CAM, "type": "sensor_msgs/msg/Image"},
                              "sensor": {"topic": THERMAL, "type": "sensor_msgs/msg/Image"}}
    pairing = prov["pairing"]
    assert pairing["sensor_samples"] == 128 and pairing["camera_frames"] == 150
    # the camera gap [6, 7) s leaves the 8 thermal samples at 6.007 .. 6.882 s without a frame
    # within 50 ms (frames at 5.9 and 7.0 s); the rest pair 7 ms / 43 ms away from a frame
    assert pairing["dropped_no_camera_within_tolerance"] == 8
    assert pairing["paired"] == pairing["pairs_used"] == 120
    assert pairing["abs_offset_ms"]["max"] <= 50
    assert prov["span"]["seconds"] > 15 and prov["labels"]["source"] == "none"
    assert prov["labels"]["pseudo_label_accuracy"] > 0.95  # the teacher is right
    assert prov["cad"]["terms"] == ["in", "se"] and prov["cad"]["centre"] == "image"
    assert prov["af"]["bag_rows"] == 120 and prov["af"]["run_samples"] == 0

    untrained = student_encoder(cfg, load_bundle(teacher_bundle)).eval()
    pre = dict(taught.modalities["thermal"].preprocess.to_dict())
    labels = torch.from_numpy(np.array(taught.label_embeddings))
    with torch.no_grad():
        acc_before = _thermal_accuracy(held_out, lambda x: untrained(torch.from_numpy(x)), pre,
                                       labels)
    backend = create_backend("onnxruntime", taught, threads=1, modalities=["thermal"],
                             fusion=False, text=False)
    acc_after = _thermal_accuracy(held_out, lambda x: backend.encode("thermal", x), pre, labels)
    assert acc_after >= 0.8, (acc_before, acc_after)
    assert acc_after >= acc_before + 0.4, (acc_before, acc_after)


def test_bad_bags_name_what_is_missing(teacher_bundle: Path, tmp_path: Path) -> None:
    no_camera, no_thermal = tmp_path / "no_camera", tmp_path / "no_thermal"
    write_bag(no_camera, seed=0, seconds=2, camera=False)
    write_bag(no_thermal, seed=0, seconds=2, thermal=False)
    cfg = _cfg(tmp_path)
    with pytest.raises(TeachError, match=r"no topic the camera.*Teaching needs the camera"):
        teach(no_camera, teacher_bundle, tmp_path / "a", cfg)
    with pytest.raises(TeachError, match=r"looks like the new thermal sensor.*"
                                         r"/robot/camera/image_raw"):
        teach(no_thermal, teacher_bundle, tmp_path / "b", cfg)
    with pytest.raises(TeachError, match=r"has no topic /robot/flir/image \(the new thermal"):
        teach(no_camera, teacher_bundle, tmp_path / "c", _cfg(tmp_path, topic="/robot/flir/image"))
    silent = tmp_path / "silent_camera"
    write_bag(silent, seed=0, seconds=2, camera=False, empty_topics=True)
    with pytest.raises(TeachError, match=r"topic /robot/camera/image_raw \(the camera\) has no "
                                         "messages"):
        teach(silent, teacher_bundle, tmp_path / "d", cfg)
    with pytest.raises(TeachError, match="never overwrites its input"):
        teach(no_camera, teacher_bundle, teacher_bundle, cfg)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_reports_a_bad_bag_in_one_line(teacher_bundle: Path, tmp_path: Path, capsys) -> None:
    from omnibind_train.cli import main

    bag = tmp_path / "no_camera"
    write_bag(bag, seed=0, seconds=2, camera=False)
    code = main(["teach", str(bag), "--bundle", str(teacher_bundle), "--out",
                 str(tmp_path / "out"), "--modality", "thermal", "--no-progress",
                 "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "Teaching needs the camera" in err[0]
    assert main(["teach", str(bag), "--out", str(tmp_path / "o"), "--modality", "image"]) == 2
    assert "is a teacher" in capsys.readouterr().err


def test_labels_from_the_truth_topic_switch_on_every_cad_term(teacher_bundle: Path,
                                                             tmp_path: Path) -> None:
    bag = tmp_path / "bag"
    write_bag(bag, seed=1, seconds=6)
    cfg = _cfg(tmp_path, labels="topic", crossfit_folds=0, **{"cad.loop.epochs": 5})
    prov = teach(bag, teacher_bundle, tmp_path / "taught", cfg).report
    assert prov["labels"]["source"] == "topic" and prov["labels"]["pseudo_labelled_samples"] == 0
    assert prov["labels"]["labelled_samples"] == prov["pairing"]["pairs_used"] == 48
    assert prov["cad"]["terms"] == ["in", "cr", "se"]
    with pytest.raises(TeachError, match="init: bundle, but bundle .* has no thermal encoder"):
        teach(bag, teacher_bundle, tmp_path / "again", _cfg(tmp_path, init="bundle"))
