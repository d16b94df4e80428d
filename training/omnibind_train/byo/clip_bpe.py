"""OpenAI CLIP's BPE tokenizer as a Hugging Face ``tokenizer.json``, from the published vocab file.

CLIP, open_clip and ImageBind tokenise with OpenAI's ``SimpleTokenizer`` over
``bpe_simple_vocab_16e6.txt.gz`` (a gzip text file: a header line holding ``#version``, then
one merge per line, ``"i n"``). The runtime tokenises with the ``tokenizers`` library from the
bundle's ``tokenizer.json`` (no torch, no open_clip), so this module writes that file:

- vocabulary, in ``SimpleTokenizer``'s order: the 256 byte symbols of GPT-2's byte-to-unicode
  table, the same with ``</w>`` (end of word), one entry per merge, then ``<|startoftext|>`` and
  ``<|endoftext|>``, so the end-of-text token has the largest id (CLIP pools there);
- the merges: the first ``vocab_size - 512 - 2`` lines after the header (OpenAI uses 48,894 of
  the file's 262,144 for its 49,408-token vocabulary; the size comes from the checkpoint's
  token embedding, so a model and its tokenizer cannot disagree);
- normalisation: NFC, whitespace runs to one space, lower-case; pre-tokenisation with CLIP's
  regular expression, then byte-level symbols; BPE with the ``</w>`` suffix;
- every text becomes ``<|startoftext|> ... <|endoftext|>``; truncation keeps both (the start,
  the first ``context_length - 2`` tokens, the end, as open_clip's ``tokenize`` does); padding
  is id 0, as open_clip pads.

Not reproduced: ``ftfy.fix_text`` and HTML unescaping of ``basic_clean`` (they repair mojibake
and ``&amp;`` in web captions; label names and operator text do not need them).

Where the vocab file is: ``--bpe-vocab`` on the command line, else the first that exists of a
file named ``bpe_simple_vocab_16e6.txt.gz`` next to the checkpoint or in its ``bpe/`` sibling
directory (ImageBind's repository layout), or inside an installed ``open_clip`` or ``clip``
package (found without importing them).
"""
from __future__ import annotations

import gzip
import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path

__all__ = ["BPE_VOCAB_NAME", "EOT", "SOT", "CLIPTokenizerFiles", "bytes_to_unicode",
           "find_bpe_vocab", "read_merges", "write_clip_tokenizer"]

BPE_VOCAB_NAME = "bpe_simple_vocab_16e6.txt.gz"
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
#: CLIP's pre-tokenisation pattern (open_clip ``SimpleTokenizer.pat``, ``\p`` classes).
_PATTERN = (r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
            r"""[^\s\p{L}\p{N}]+""")
_SPECIALS = 2
_BYTE_SYMBOLS = 256


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (CLIP's byte symbols, in order)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def read_merges(path: str | Path) -> list[tuple[str, str]]:
    """The merges of a ``bpe_simple_vocab_16e6.txt.gz``-format file (header line skipped)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    # OpenAI's file starts '"bpe_simple_vocab_16e6.txt#version: 0.2' (SimpleTokenizer skips
    # line 1 whatever it holds); a header is required so another text file is not misread.
    if not lines or "#version" not in lines[0]:
        raise ValueError(f"{path} is not a CLIP BPE vocab file: the first line must be the "
                         f"'#version: ...' header, got {lines[0][:40]!r}")
    merges = []
    for number, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{number}: a merge is two symbols, got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


class CLIPTokenizerFiles:
    """What :func:`write_clip_tokenizer` wrote: the directory, sizes, the special ids."""

    def __init__(self, directory: Path, vocab_size: int, merges: int, context_length: int
                 ) -> None:
        self.directory = directory
        self.vocab_size = vocab_size
        self.merges = merges
        self.context_length = context_length
        self.sot_id = vocab_size - 2
        self.eot_id = vocab_size - 1


def write_clip_tokenizer(vocab_file: str | Path, out_dir: str | Path, *, vocab_size: int,
                         context_length: int = 77) -> CLIPTokenizerFiles:
    """Write ``tokenizer.json`` for a CLIP text tower with ``vocab_size`` token embeddings.

    Raises
    ------
    ValueError
        The file is not a CLIP BPE vocab, or has fewer merges than ``vocab_size`` needs.
    """
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    n_merges = vocab_size - 2 * _BYTE_SYMBOLS - _SPECIALS
    merges = read_merges(vocab_file)
    if n_merges < 0 or len(merges) < n_merges:
        raise ValueError(f"{vocab_file} has {len(merges)} merges but a text tower with "
                         f"{vocab_size} token embeddings needs {max(n_merges, 0)} "
                         f"(vocab = 512 byte symbols + merges + 2 special tokens): "
                         "wrong vocab file for this checkpoint")
    merges = merges[:n_merges]
    symbols = list(bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab_list += [SOT, EOT]
    vocab = {token: i for i, token in enumerate(vocab_list)}
    if len(vocab) != vocab_size:
        raise ValueError(f"{vocab_file}: the merges produce duplicate tokens "
                         f"({len(vocab_list) - len(vocab)}); not a CLIP BPE vocab")
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, continuing_subword_prefix="",
                        end_of_word_suffix="</w>", unk_token=EOT, fuse_unk=False))
    tok.normalizer = normalizers.Sequence([
        normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip(),
        normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.Sequence([decoders.ByteLevel(),
                                     decoders.Replace("</w>", " "), decoders.Strip()])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SOT} $A {EOT}", special_tokens=[(SOT, vocab[SOT]), (EOT, vocab[EOT])])
    tok.add_special_tokens([SOT, EOT])
    tok.enable_truncation(max_length=context_length)
    tok.enable_padding(pad_id=0, pad_token="!")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer": "clip_bpe", "model_max_length": context_length, "bos_token": SOT,
        "eos_token": EOT, "pad_id": 0, "source": str(vocab_file)}, indent=2) + "\n")
    return CLIPTokenizerFiles(out, vocab_size, len(merges), context_length)


def _package_dir(name: str) -> Path | None:
    """An installed package's directory, found without importing it (open_clip imports
    torchvision at import time)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) if locations else None


def find_bpe_vocab(explicit: str | Path | None = None,
                   near: Sequence[str | Path] = ()) -> Path:
    """The CLIP BPE vocab file to use (see the module docstring for the search order).

    Raises
    ------
    FileNotFoundError
        None is found; the message lists every place looked at.
    """
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise FileNotFoundError(f"--bpe-vocab {path} does not exist")
        return path
    candidates = []
    for base in near:
        parent = Path(base).parent
        candidates += [parent / BPE_VOCAB_NAME, parent / "bpe" / BPE_VOCAB_NAME,
                       parent.parent / "bpe" / BPE_VOCAB_NAME]
    for package in ("open_clip", "clip"):
        directory = _package_dir(package)
        if directory is not None:
            candidates.append(directory / BPE_VOCAB_NAME)
    for path in candidates:
        if path.is_file():
            return path
    looked = "\n  ".join(str(c) for c in candidates) or "(no checkpoint, no open_clip / clip)"
    raise FileNotFoundError(
        f"no CLIP BPE vocab ({BPE_VOCAB_NAME}) found; pass --bpe-vocab PATH (it ships in the "
        f"open_clip and ImageBind repositories and in the open_clip_torch wheel). Looked at:\n  "
        f"{looked}")
