"""Pseudo item pairs (seed 001 Sec. 3.1) on a hand-built EmbeddingBank: planted partners are
found directly and through a hub, routes that do not exist are an error, labels are never read,
invalid pool rows are never retrieved, and the purity diagnostic is computed correctly."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from omnibind_train.binding.bank import EmbeddingBank
from omnibind_train.binding.pseudo_pairs import (
    PseudoTuples,
    build_tuples,
    parse_retrievers,
    tuple_purity,
)

MODS = ["image", "text", "audio"]
N = {"image": 5, "text": 6, "audio": 4}
#: the planted partners: image row i <-> text row TEXT_OF[i]; audio row j <-> image row
#: IMAGE_OF_AUDIO[j] (and so, through the image hub, text row TEXT_OF[IMAGE_OF_AUDIO[j]])
TEXT_OF = [3, 0, 5, 1, 4]
IMAGE_OF_AUDIO = [2, 4, 0, 1]
RETRIEVERS = {"image-text": ["image@A", "text@A"], "audio-image": ["audio@B", "image@B"]}


def _orthonormal(n: int, d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed)))
    return q[:n]


def make_bank() -> EmbeddingBank:
    """Space A embeds image + text, space B audio + image (other geometry). Every row is a
    unit vector; planted partners are identical vectors, everything else is near-orthogonal."""
    gen = torch.Generator().manual_seed(3)
    a_img = _orthonormal(N["image"], 16, 0)
    # text rows: row TEXT_OF[i] = image i's vector; row 2 (no image) a random unit vector
    a_txt = F.normalize(torch.randn(N["text"], 16, generator=gen), dim=-1) * 0.1
    for i, t in enumerate(TEXT_OF):
        a_txt[t] = a_img[i]
    a_txt = F.normalize(a_txt, dim=-1)
    b_img = _orthonormal(N["image"], 12, 1)
    b_aud = b_img[IMAGE_OF_AUDIO].clone()
    emb = {"A": {"image": a_img, "text": a_txt}, "B": {"audio": b_aud, "image": b_img}}
    instances = {m: np.arange(n) + 100 * k for k, (m, n) in enumerate(N.items())}
    labels = {"image": np.array([0, 1, 2, 1, 0]), "text": np.array([1, 1, 2, 0, 0, 2]),
              "audio": np.array([2, 0, 0, 2])}
    return EmbeddingBank(emb, instances, np.zeros(N["text"], dtype=np.int64), labels)


def test_direct_retrievers_return_the_planted_partner() -> None:
    bank = make_bank()
    t = build_tuples(bank, parse_retrievers(RETRIEVERS), ["image", "text"])
    assert t.modalities == ("image", "text")
    img_q = t.query == 0
    assert t.index["image"][img_q].tolist() == list(range(5))
    assert t.index["text"][img_q].tolist() == TEXT_OF
    txt_q = t.query == 1
    assert t.index["text"][txt_q].tolist() == list(range(6))
    inverse = {txt: img for img, txt in enumerate(TEXT_OF)}
    for row, img in zip(t.index["text"][txt_q], t.index["image"][txt_q], strict=True):
        if row in inverse:
            assert img == inverse[row]
    assert len(t) == 5 + 6


def test_pair_without_retriever_goes_through_the_image_hub() -> None:
    bank = make_bank()
    t = build_tuples(bank, parse_retrievers(RETRIEVERS), MODS)
    aud_q = t.query == MODS.index("audio")
    assert t.index["audio"][aud_q].tolist() == list(range(4))
    assert t.index["image"][aud_q].tolist() == IMAGE_OF_AUDIO
    # audio -> text has no retriever: audio -> image (B) -> text (A)
    assert t.index["text"][aud_q].tolist() == [TEXT_OF[i] for i in IMAGE_OF_AUDIO]
    # and text -> audio: text -> image (A) -> audio (B)
    txt_q = t.query == MODS.index("text")
    inverse = {txt: img for img, txt in enumerate(TEXT_OF)}
    audio_of_image = {img: j for j, img in enumerate(IMAGE_OF_AUDIO)}
    for txt, aud in zip(t.index["text"][txt_q], t.index["audio"][txt_q], strict=True):
        img = inverse.get(int(txt))
        if img is not None and img in audio_of_image:
            assert aud == audio_of_image[img]
    assert {m: v.dtype for m, v in t.index.items()} == {m: np.dtype(np.int64) for m in MODS}
    assert len(t) == sum(N.values())


def test_no_route_is_a_clear_error() -> None:
    bank = make_bank()
    only_it = parse_retrievers({"image-text": ["image@A", "text@A"]})
    with pytest.raises(ValueError, match="no retriever for (image|text)-audio"):
        build_tuples(bank, only_it, MODS)
    # a hub that is not allowed does not count
    with pytest.raises(ValueError, match="no retriever for audio-text"):
        build_tuples(bank, parse_retrievers(RETRIEVERS), ["audio", "text"], hubs=("text",))


def test_bad_retriever_specs() -> None:
    with pytest.raises(ValueError, match="two"):
        parse_retrievers({"x": ["image@A"]})
    with pytest.raises(ValueError, match="modality@space"):
        parse_retrievers({"x": ["image@A", "text"]})
    with pytest.raises(ValueError, match="different modalities"):
        parse_retrievers({"x": ["image@A", "image@B"]})
    r = parse_retrievers(RETRIEVERS)[frozenset(("audio", "image"))]
    assert (r.side("audio"), r.side("image")) == ("B", "B")


def test_tuples_never_read_labels() -> None:
    bank = make_bank()
    ref = build_tuples(bank, parse_retrievers(RETRIEVERS), MODS)
    rng = np.random.default_rng(0)
    shuffled = EmbeddingBank(bank.emb, bank.instances, bank.styles,
                             {m: rng.permutation(v) for m, v in bank.labels.items()})
    poisoned = EmbeddingBank(bank.emb, bank.instances, bank.styles, {})  # any read: KeyError
    for other in (shuffled, poisoned):
        got = build_tuples(other, parse_retrievers(RETRIEVERS), MODS)
        assert np.array_equal(got.query, ref.query)
        for m in MODS:
            assert np.array_equal(got.index[m], ref.index[m])


def test_invalid_pool_rows_are_neither_queries_nor_retrieved() -> None:
    bank = make_bank()
    # image row 2 could not be preprocessed: audio 0 (planted on image 2) must get another
    # image, and image 2 is never a query
    bank.valid = {"image": np.array([True, True, False, True, True])}
    t = build_tuples(bank, parse_retrievers(RETRIEVERS), MODS)
    assert 2 not in set(t.index["image"].tolist())
    img_q = t.query == 0
    assert t.index["image"][img_q].tolist() == [0, 1, 3, 4]
    assert len(t) == 4 + 6 + 4
    bank.valid["text"] = np.array([True, True, True, False, True, True])  # image 0's text
    t = build_tuples(bank, parse_retrievers(RETRIEVERS), MODS)
    assert 3 not in set(t.index["text"].tolist())


def test_tuple_purity_by_hand() -> None:
    bank = make_bank()
    # three tuples: query image 0, query text 2, query audio 1
    t = PseudoTuples({"image": np.array([0, 2, 4]), "text": np.array([3, 2, 4]),
                      "audio": np.array([1, 0, 1])}, np.array([0, 1, 2]), tuple(MODS))
    # query labels: image 0 -> 0, text 2 -> 2, audio 1 -> 0
    # image labels [0, 2, 0] vs [0, 2, 0]: 3/3; text [0, 2, 0]: 3/3; audio [0, 2, 0]: 3/3
    p = tuple_purity(t, bank)
    assert p == {"image": 1.0, "text": 1.0, "audio": 1.0, "all": 1.0}
    t2 = PseudoTuples({"image": np.array([1, 2, 4]), "text": np.array([3, 2, 0]),
                       "audio": np.array([1, 3, 1])}, np.array([0, 1, 2]), tuple(MODS))
    # query labels: image 1 -> 1, text 2 -> 2, audio 1 -> 0
    # image [1, 2, 0]: 3/3; text [0, 2, 1] vs [1, 2, 0]: 1/3; audio [0, 2, 0] vs [1, 2, 0]: 2/3
    p2 = tuple_purity(t2, bank)
    assert p2["image"] == pytest.approx(1.0)
    assert p2["text"] == pytest.approx(1 / 3)
    assert p2["audio"] == pytest.approx(2 / 3)
    assert p2["all"] == pytest.approx(1 / 3)  # only the second tuple agrees everywhere


def test_tuples_save_load_round_trip(tmp_path) -> None:
    t = build_tuples(make_bank(), parse_retrievers(RETRIEVERS), MODS)
    t.save(tmp_path / "pairs.npz")
    back = PseudoTuples.load(tmp_path / "pairs.npz")
    assert back.modalities == t.modalities and np.array_equal(back.query, t.query)
    assert all(np.array_equal(back.index[m], t.index[m]) for m in MODS)


def test_bank_raw_and_save_load(tmp_path) -> None:
    bank = make_bank()
    bank.valid = {"image": np.array([True, False, True, True, True])}
    assert bank.spaces_of("image") == ["A", "B"] and bank.spaces_of("audio") == ["B"]
    raw = bank.raw("image", np.array([4, 0]))
    assert set(raw) == {"A", "B"} and torch.equal(raw["A"], bank.emb["A"]["image"][[4, 0]])
    assert set(bank.raw("image", None, spaces=["B", "Z"])) == {"B"}
    bank.save(tmp_path / "bank.safetensors")
    back = EmbeddingBank.load(tmp_path / "bank.safetensors")
    assert torch.equal(back.emb["B"]["audio"], bank.emb["B"]["audio"])
    assert np.array_equal(back.labels["text"], bank.labels["text"])
    assert np.array_equal(back.instances["audio"], bank.instances["audio"])
    assert back.valid["image"].tolist() == bank.valid["image"].tolist()
