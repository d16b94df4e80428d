"""Sanity probe: does each simulated modality carry the information the design says it carries?

A small class-balanced student set is generated with the real World through the data-set writer
(2 processes), hand-made features are computed per modality, and a leave-one-out nearest-centroid
probe measures how well each modality separates materials, shapes and the 18 classes:

- thermal and audio separate MATERIALS, LiDAR and events separate SHAPES, the image separates
  CLASSES, each well above chance (>= 2x chance, so a constant or noise-only modality fails);
- no student modality separates the 18 classes nearly as well as the image (so fusion matters).

The numbers are printed (``pytest -s``) and kept in ``RESULTS`` for the report. Features are
deliberately crude (no learning): they bound from below what a trained encoder can extract.
"""
from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import pytest

from omnibind_ros.core.types import AudioBlock, EventPacket, TactileFrame, ThermalFrame
from omnibind_ros.sim.audio import pink_noise
from omnibind_ros.sim.catalog import CLASSES, MATERIALS, SHAPES
from omnibind_ros.sim.dataset import DatasetConfig, SimDataset, generate

pytest.importorskip("omnibind_ros.sim.world")

PER_CLASS = 12  # 216 samples: enough for stable leave-one-out accuracies, still quick
N_MAT, N_SHAPE, N_CLASS = len(MATERIALS), len(SHAPES), len(CLASSES)
RESULTS: dict[str, dict[str, float]] = {}


# --- features (one small vector per sample) ------------------------------------------------------

def thermal_features(frame: ThermalFrame) -> np.ndarray:
    """Coldest and hottest deviation from the scene median (the background), kelvin."""
    t = frame.data.astype(np.float64) * frame.kelvin_per_count
    dev = t - np.median(t)
    return np.array([np.percentile(dev, 0.5), np.percentile(dev, 99.5)])


def audio_features(block: AudioBlock) -> np.ndarray:
    """Log pitch and two log decay ratios of the noise-corrected energy envelope."""
    x, sr = block.samples.astype(np.float64), block.sample_rate
    onset = int(np.argmax(np.abs(x) > 0.3 * np.abs(x).max()))
    w = sr // 200  # 5 ms windows
    n_win = (x.size - onset) // w
    energy = (x[onset:onset + n_win * w].reshape(n_win, w) ** 2).mean(1)
    pre = x[: (onset // w) * w]
    floor = (pre.reshape(-1, w) ** 2).mean(1).min() if pre.size else energy[-20:].min()
    e = np.maximum(energy - floor, 1e-12)
    seg = np.pad(x[onset:onset + sr // 4], (0, max(sr // 4 - (x.size - onset), 0)))
    spectrum = np.abs(np.fft.rfft(seg * np.hanning(seg.size)))
    f = np.fft.rfftfreq(seg.size, 1.0 / sr)
    band = f > 100.0
    return np.array([np.log(f[band][np.argmax(spectrum[band])]),
                     np.log(e[2:6].mean()) - np.log(e[:2].mean()),  # 10-30 ms vs 0-10 ms
                     np.log(e[10:40].mean()) - np.log(e[:2].mean())])  # 50-200 ms


def lidar_features(points: np.ndarray) -> np.ndarray:
    """Height, width, aspect and width/density profiles over height of the above-ground points."""
    z = points[:, 2]
    ground = np.percentile(z, 1)
    obj = points[z > ground + 0.015]
    if len(obj) < 10:
        return np.zeros(9)
    height = obj[:, 2].max() - ground
    width = np.percentile(obj[:, 1], 97) - np.percentile(obj[:, 1], 3)
    zn = (obj[:, 2] - ground) / height
    profile = []
    for lo in (0.0, 0.25, 0.5, 0.75):
        sel = (zn >= lo) & (zn < lo + 0.25)
        profile.append(np.std(obj[sel, 1]) / width if sel.sum() > 3 else 0.0)
    density = np.histogram(zn, bins=4, range=(0, 1))[0][:2] / len(obj)
    return np.array([height, width, height / width, *profile, *density])


def mask_features(mask: np.ndarray) -> np.ndarray:
    """Silhouette descriptors of a binary mask: aspect, fill, 3 Hu moments, width profile."""
    ys, xs = np.nonzero(mask)
    if len(xs) < 10:
        return np.zeros(9)
    x0, x1 = np.percentile(xs, [2, 98])
    y0, y1 = np.percentile(ys, [2, 98])
    w, h = x1 - x0 + 1, y1 - y0 + 1
    hu = cv2.HuMoments(cv2.moments(mask.astype(np.uint8), binaryImage=True)).ravel()
    hu = -np.sign(hu) * np.log10(np.abs(hu) + 1e-30)
    profile = []
    for k in range(4):
        sel = (ys >= y0 + k * h / 4) & (ys < y0 + (k + 1) * h / 4)
        profile.append((np.percentile(xs[sel], 95) - np.percentile(xs[sel], 5)) / w
                       if sel.sum() > 3 else 0.0)
    return np.array([h / w, len(xs) / (w * h), *hu[:3], *profile])


def event_features(ev: EventPacket) -> np.ndarray:
    """Silhouette of the de-noised event-count image (isolated noise events removed)."""
    img = np.zeros((ev.height, ev.width), np.float32)
    np.add.at(img, (ev.y.astype(int), ev.x.astype(int)), 1.0)
    support = cv2.boxFilter(img, -1, (5, 5), normalize=False)
    return mask_features((img > 0) & (support >= 4))


def _gradient_histograms(gray: np.ndarray, cells: int = 4, bins: int = 8) -> np.ndarray:
    """HOG-like: per cell of a cells x cells grid, an L2-normalised orientation histogram."""
    g = gray.astype(np.float32)
    gx, gy = cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1)
    mag, ang = np.hypot(gx, gy), np.mod(np.arctan2(gy, gx), np.pi)
    b = np.minimum((ang / np.pi * bins).astype(int), bins - 1)
    ci = np.minimum(np.arange(g.shape[0]) * cells // g.shape[0], cells - 1)
    cj = np.minimum(np.arange(g.shape[1]) * cells // g.shape[1], cells - 1)
    cell = ci[:, None] * cells + cj[None, :]
    hist = np.zeros(cells * cells * bins)
    np.add.at(hist, (cell * bins + b).ravel(), mag.ravel())
    hist = hist.reshape(cells * cells, bins)
    return (hist / (np.linalg.norm(hist, axis=1, keepdims=True) + 1e-6)).ravel()


def image_colour_features(img: np.ndarray) -> np.ndarray:
    """Colour/texture statistics of the sharp, central region (the object, roughly)."""
    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)
    mag = cv2.magnitude(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))
    h, w = gray.shape
    yy, xx = np.mgrid[:h, :w]
    centrality = np.exp(-((xx - w / 2) ** 2 + (yy - h / 2) ** 2) / (2 * (0.28 * w) ** 2))
    sharp = cv2.GaussianBlur(mag, (0, 0), 4) * centrality
    m = sharp > np.percentile(sharp, 80)
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(np.float64)
    hue, s, v = hsv[..., 0][m], hsv[..., 1][m] / 255, hsv[..., 2][m] / 255
    brown = ((hue >= 5) & (hue <= 20) & (s > 0.35)).mean()
    return np.array([s.mean(), v.mean(), v.std(), brown, (s < 0.15).mean(),
                     mag[m].mean() / (gray[m].mean() + 1), np.percentile(v, 98)])


def image_features(img: np.ndarray) -> list[np.ndarray]:
    """Two groups: colour/texture (material) and gradient histograms of the centre (shape)."""
    h, w = img.shape[:2]
    centre = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[h // 5:h - h // 5, w // 5:w - w // 5]
    return [image_colour_features(img), _gradient_histograms(centre)]


def tactile_features(frame: TactileFrame) -> np.ndarray:
    """Contact area, fine texture inside the contact, and sharpness of the contact edge."""
    d = frame.image.astype(np.float32) - frame.reference.astype(np.float32)
    change = np.abs(d).sum(axis=2)
    contact = cv2.GaussianBlur(change, (0, 0), 3) > 15
    inner = cv2.erode(contact.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    if inner.sum() < 20:
        inner = contact if contact.sum() >= 20 else np.ones_like(contact)
    g = d.mean(axis=2)
    fine = np.abs(g - cv2.GaussianBlur(g, (0, 0), 2.0))[inner]
    edge = np.abs(cv2.Laplacian(cv2.GaussianBlur(change, (0, 0), 1), cv2.CV_32F))
    return np.array([contact.mean(), np.log(np.median(fine) + 1e-2),
                     np.log(np.percentile(fine, 90) + 1e-2),
                     np.log((edge[contact].mean() if contact.any() else 0.0) + 1e-3)])


# --- probe ---------------------------------------------------------------------------------------

def standardise(groups: list[np.ndarray], weights: list[float] | None = None) -> np.ndarray:
    """z-score every column, then weight each group so its total variance is ``weight**2``."""
    weights = weights or [1.0] * len(groups)
    cols = [wt * (g - g.mean(0)) / (g.std(0) + 1e-9) / np.sqrt(g.shape[1])
            for g, wt in zip(groups, weights, strict=True)]
    return np.concatenate(cols, axis=1)


def loo_nearest_centroid(x: np.ndarray, y: np.ndarray) -> float:
    """Leave-one-out accuracy of the nearest class centroid (Euclidean), ``x`` [n, d]."""
    classes, yi = np.unique(y, return_inverse=True)
    sums = np.stack([x[yi == k].sum(0) for k in range(len(classes))])
    counts = np.bincount(yi).astype(np.float64)
    correct = 0
    for i in range(len(x)):
        s, n = sums.copy(), counts.copy()
        s[yi[i]] -= x[i]
        n[yi[i]] -= 1
        correct += int(np.argmin((((s / n[:, None]) - x[i]) ** 2).sum(1)) == yi[i])
    return correct / len(x)


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> dict[str, object]:
    cfg = DatasetConfig(name="probe", seed=2024, teacher_train=0, teacher_val=0,
                        student_train=PER_CLASS * N_CLASS, student_val=0, student_test=0,
                        shard_size=36, workers=2)
    root = generate(cfg, tmp_path_factory.mktemp("probe"), progress=False)
    ds = SimDataset(root, "train", "student")
    samples = [ds[i] for i in range(len(ds))]
    labels = ds.labels
    image_groups = [np.stack(g) for g in
                    zip(*(image_features(s.image) for s in samples), strict=True)]
    feats = {
        "thermal": standardise([np.stack([thermal_features(s.thermal) for s in samples])]),
        "audio": standardise([np.stack([audio_features(s.audio) for s in samples])]),
        "point_cloud": standardise([np.stack([lidar_features(s.points) for s in samples])]),
        "event": standardise([np.stack([event_features(s.events) for s in samples])]),
        "tactile": standardise([np.stack([tactile_features(s.tactile) for s in samples])]),
        # Shape needs more dimensions than colour: weight the gradient group up (our choice).
        "image": standardise(image_groups, [1.0, 2.5]),
    }
    targets = {"material": np.array([CLASSES[c].material.name for c in labels]),
               "shape": np.array([CLASSES[c].shape.name for c in labels]),
               "class": labels}
    for name, x in feats.items():
        RESULTS[name] = {t: loo_nearest_centroid(x, y) for t, y in targets.items()}
    print("\nleave-one-out nearest-centroid accuracy "
          f"(chance: material {1 / N_MAT:.2f}, shape {1 / N_SHAPE:.2f}, class {1 / N_CLASS:.3f})")
    for name, acc in RESULTS.items():
        print(f"  {name:<12} " + "  ".join(f"{t} {a:.2f}" for t, a in acc.items()))
    return {"samples": samples, "targets": targets}


@pytest.mark.parametrize("modality, target, chance, floor", [
    ("thermal", "material", 1 / N_MAT, 0.8),
    ("audio", "material", 1 / N_MAT, 0.8),
    ("point_cloud", "shape", 1 / N_SHAPE, 0.45),
    ("event", "shape", 1 / N_SHAPE, 2 / N_SHAPE),
    ("image", "class", 1 / N_CLASS, 0.3),
    ("image", "material", 1 / N_MAT, 0.7),
    ("image", "shape", 1 / N_SHAPE, 0.45),
])
def test_modality_separates_what_it_should(probe, modality, target, chance, floor) -> None:
    acc = RESULTS[modality][target]
    assert floor >= 2 * chance - 1e-9  # thresholds never drop below twice chance
    assert acc >= floor, f"{modality} separates {target} at {acc:.2f} (chance {chance:.2f})"


def test_no_student_modality_names_the_class_alone(probe) -> None:
    image = RESULTS["image"]["class"]
    for name in ("thermal", "audio", "point_cloud", "event", "tactile"):
        student = RESULTS[name]["class"]
        assert student < 0.6 * image, f"{name} class accuracy {student:.2f} vs image {image:.2f}"
        # a material-only sensor cannot beat ~1/6 on 18 classes, a shape-only one ~1/3
        assert student < 0.4


@pytest.mark.parametrize("make", [
    lambda s, rng: AudioBlock(np.zeros_like(s.audio.samples), s.audio.sample_rate),
    lambda s, rng: AudioBlock(0.05 * pink_noise(s.audio.samples.size, rng).astype(np.float32),
                              s.audio.sample_rate),
], ids=["constant", "noise-only"])
def test_probe_fails_a_degenerate_modality(probe, make: Callable) -> None:
    """The thresholds are meaningful: audio with no signal does not pass the material floor."""
    rng = np.random.default_rng(0)
    with np.errstate(all="ignore"):
        x = np.stack([np.nan_to_num(audio_features(make(s, rng)) + 1e-6 * rng.standard_normal(3))
                      for s in probe["samples"]])
    acc = loo_nearest_centroid(standardise([x]), probe["targets"]["material"])
    assert acc < 2 / N_MAT, acc
