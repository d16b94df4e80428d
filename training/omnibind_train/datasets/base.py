"""What every reader shares: the reader protocol, layout errors, file decoding, split helpers.

A reader indexes one selection (split or folds) of a data set laid out as its authors publish
it. ``reader[i]`` is ``(raw sample, label index)`` where the raw sample is the payload type the
runtime's conversions produce for that modality (:mod:`omnibind_ros.core.types`: a uint8 RGB
array for images, :class:`ThermalFrame`, :class:`EventPacket`, :class:`TactileFrame`,
:class:`AudioBlock`, a float ``[N, 3]`` array for point clouds), so training feeds it through the
one shared preprocessing (:meth:`DatasetReader.preprocessed` runs
:class:`omnibind_train.data.SamplePreprocessor`, the class the simulated data goes through).

Nothing is downloaded: a root that is not there, or lacks a file of the published layout, raises
:class:`DatasetLayoutError` naming the data set, the root and what is missing.
"""
from __future__ import annotations

import abc
import json
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np

from omnibind_ros.core.types import AudioBlock

__all__ = ["IMAGE_SUFFIXES", "DatasetFormatError", "DatasetLayoutError", "DatasetReader",
           "per_class_split", "read_audio", "read_image_gray", "read_image_rgb", "require_dir",
           "require_file", "select_folds"]

#: File suffixes (lower case) counted as images in folder layouts.
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


class DatasetLayoutError(FileNotFoundError):
    """A data set root is missing, or lacks a file or folder of the published layout."""


class DatasetFormatError(ValueError):
    """A file of a data set is not in its published format (bad header, truncated record...)."""


def require_dir(root: Path, dataset: str, rel: str | Path) -> Path:
    """``root / rel`` if it is a folder, else DatasetLayoutError "<dataset> root <root> lacks
    <rel>/"."""
    path = root / rel
    if not path.is_dir():
        raise DatasetLayoutError(f"{dataset} root {root} lacks {Path(rel).as_posix()}/")
    return path


def require_file(root: Path, dataset: str, rel: str | Path, hint: str = "") -> Path:
    """``root / rel`` if it is a file, else DatasetLayoutError "<dataset> root <root> lacks
    <rel>" (plus ``hint``)."""
    path = root / rel
    if not path.is_file():
        raise DatasetLayoutError(f"{dataset} root {root} lacks {Path(rel).as_posix()}"
                                 + (f" ({hint})" if hint else ""))
    return path


def _read_bytes(path: Path) -> np.ndarray:
    try:
        return np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise DatasetLayoutError(f"{path} is missing") from None


def read_image_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file (JPEG/PNG; grayscale and CMYK are converted) to uint8 [H, W, 3] RGB."""
    import cv2

    image = cv2.imdecode(_read_bytes(Path(path)), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetFormatError(f"{path}: not a decodable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_image_gray(path: str | Path) -> np.ndarray:
    """Decode an image file to uint8 [H, W] (a colour file is converted to luma)."""
    import cv2

    image = cv2.imdecode(_read_bytes(Path(path)), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise DatasetFormatError(f"{path}: not a decodable image")
    return image


def read_audio(path: str | Path) -> AudioBlock:
    """Decode an audio file (``soundfile``/libsndfile: WAV PCM, float, IMA-ADPCM, FLAC...) to an
    :class:`AudioBlock` of float32 ``[n_frames, channels]`` at the file's own rate."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise DatasetLayoutError(f"{path} is missing")
    try:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except RuntimeError as exc:  # soundfile's LibsndfileError is a RuntimeError
        raise DatasetFormatError(f"{path}: not a readable audio file ({exc})") from exc
    return AudioBlock(samples=samples, sample_rate=int(rate))


def select_folds(folds: int | Iterable[int] | None, valid: Sequence[int], dataset: str
                 ) -> tuple[int, ...]:
    """Normalise a fold selection (one fold, several, or None for all) against ``valid``."""
    if folds is None:
        return tuple(valid)
    chosen = (int(folds),) if isinstance(folds, int | np.integer) else tuple(int(f) for f in folds)
    bad = [f for f in chosen if f not in valid]
    if bad or not chosen:
        raise ValueError(f"{dataset} folds must be among {list(valid)}, got {list(chosen)}")
    return tuple(sorted(set(chosen)))


def per_class_split(stems: Sequence[str], class_name: str, split: str, train_per_class: int,
                    test_per_class: int | None, seed: int) -> list[str]:
    """The seeded per-class split of the usual Caltech protocol.

    The class's file stems are sorted, permuted by a generator seeded with ``(seed, crc32(class
    name))`` and the first ``train_per_class`` form "train", the next ``test_per_class`` (None:
    all the rest) "test"; "all" keeps every file. Seeding by class *name* and file *stem* (not by
    index or extension) puts Caltech-101 ``image_0001.jpg`` and N-Caltech101 ``image_0001.bin``
    in the same split whenever both copies of a class hold the same files.
    """
    ordered = sorted(stems)
    if split == "all":
        return ordered
    rng = np.random.default_rng([int(seed), zlib.crc32(class_name.encode())])
    perm = [ordered[k] for k in rng.permutation(len(ordered))]
    if split == "train":
        chosen = perm[:train_per_class]
    elif split == "test":
        rest = perm[train_per_class:]
        chosen = rest if test_per_class is None else rest[:test_per_class]
    else:
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    return sorted(chosen)


class DatasetReader(abc.ABC):
    """One selection of a published data set: ``reader[i] -> (raw sample, label index)``.

    Subclasses fill ``self._paths`` (the file each sample comes from), ``self._labels`` and
    ``self.label_names`` in ``__init__`` and implement :meth:`load`.

    Class attributes
    ----------------
    name : the data set's name in messages ("ESC-50").
    modality : the core modality of the raw samples ("audio").
    preprocess_overrides : changes to the core preprocessing config that this data set needs
        (e.g. ShapeNet's pre-segmented objects have no ground and lie around the origin); applied
        by :meth:`preprocess_config`, and by :meth:`preprocessed` when it is given no config.
    """

    name: ClassVar[str] = ""
    modality: ClassVar[str] = ""
    preprocess_overrides: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DatasetLayoutError(f"{self.name} root {self.root} does not exist or is not a "
                                     "folder")
        self._paths: list[Path] = []
        self._labels = np.zeros(0, dtype=np.int64)
        self.label_names: tuple[str, ...] = ()
        self._preprocessors: dict[str, Any] = {}

    # --- indexing -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._labels)

    def _index(self, i: int) -> int:
        n = len(self)
        j = int(i) + n if int(i) < 0 else int(i)
        if not 0 <= j < n:
            raise IndexError(f"{self.name}: index {i} out of range for {n} samples")
        return j

    def __getitem__(self, i: int) -> tuple[Any, int]:
        j = self._index(i)
        return self.load(j), int(self._labels[j])

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        return self.samples()

    def samples(self) -> Iterator[tuple[Any, int]]:
        """Every ``(raw sample, label index)`` of the selection, in order."""
        for i in range(len(self)):
            yield self[i]

    @property
    def labels(self) -> np.ndarray:
        """int64 [len] label index of every sample (a copy)."""
        return self._labels.copy()

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def label(self, i: int) -> int:
        """The label index of sample ``i`` (no file is read)."""
        return int(self._labels[self._index(i)])

    def path(self, i: int) -> Path:
        """The file sample ``i`` is read from."""
        return self._paths[self._index(i)]

    @abc.abstractmethod
    def load(self, i: int) -> Any:
        """The raw sample ``i`` (see the module docstring for the payload types)."""

    # --- preprocessing ------------------------------------------------------------------------
    def preprocess_config(self, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``base`` (a bundle's config for :attr:`modality`, or None for the core defaults) with
        this data set's :attr:`preprocess_overrides` applied, validated by core."""
        from omnibind_ros.core.preprocess import build_config

        config = build_config(self.modality, dict(base) if base is not None else None).to_dict()
        config.update(self.preprocess_overrides)
        return build_config(self.modality, config).to_dict()

    def _for_preprocessing(self, payload: Any, config: Mapping[str, Any]) -> Any:
        """Hook: the part of a raw sample the preprocessing sees (default: all of it)."""
        return payload

    def preprocessed(self, i: int, config: Mapping[str, Any] | None = None
                     ) -> np.ndarray | None:
        """Sample ``i`` through the shared core preprocessing, exactly as training does it.

        Parameters
        ----------
        i : sample index.
        config : the modality's preprocessing config (e.g. the bundle's); None uses
            :meth:`preprocess_config` (core defaults + this data set's overrides). A given config
            is used as it is: call ``preprocess_config(config)`` to add the overrides.

        Returns
        -------
        The model input (float32, the preprocessor's ``output_shape``), or None when core
        preprocessing rejects the payload (the training feature cache marks such samples
        invalid the same way).
        """
        from omnibind_train.data.preprocess import PAYLOAD_FIELD, SamplePreprocessor

        cfg = self.preprocess_config() if config is None else dict(config)
        key = json.dumps(cfg, sort_keys=True, default=str)
        pre = self._preprocessors.get(key)
        if pre is None:
            pre = self._preprocessors[key] = SamplePreprocessor(self.modality, cfg)
        payload = self._for_preprocessing(self.load(self._index(i)), pre.config.to_dict())
        return pre(SimpleNamespace(**{PAYLOAD_FIELD[self.modality]: payload}))

    def __repr__(self) -> str:
        sel = getattr(self, "split", None) or getattr(self, "folds", None)
        return (f"{type(self).__name__}(root={str(self.root)!r}, selection={sel!r}, "
                f"samples={len(self)}, classes={self.num_classes})")
