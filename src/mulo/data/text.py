"""Language-modelling datasets: int32 token ids, ``x = tokens[:-1]``, ``y = tokens[1:]``, pad id 0.

* ``tinyshakespeare-s{seq}-vbyte``: the local Tiny Shakespeare file (``tinyshakespeare_path``, default the copy shipped
  in ``mulo/data/assets/tinyshakespeare/input.txt``), encoded as seqio's ``ByteVocabulary`` does (``byte_ids``)
  (259 ids: pad 0, eos 1, unk 2, then the 256 bytes). The text is split by position 90/5/5 into train / meta_valid /
  test. Training batches are random crops of seq+1 tokens; evaluation walks non-overlapping windows in order.
* ``lm1b-s{seq}-v32k``: TFDS ``lm1b`` tokenised with a SentencePiece model (``vocab_path``; the reference used T5's
  cc_all.32000 with 100 extra ids = 32,100 ids) through ``seqio.SentencePieceVocabulary``. One sentence per example:
  its tokens, then EOS, cropped or padded with 0 to seq+1 (as the reference). Splits: train = ``train[2%:]``,
  meta_valid = ``train[0%:1%]``, test = the official ``test`` split. Streamed through tf.data (shuffle buffer
  10 x batch, reproducible from the seed).

seqio/TensorFlow are imported only when data is first needed, so building a task stays cheap.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from mulo.data.sampling import check_split, num_items, split_rng
from mulo.data.tf_env import import_seqio, import_tf, import_tfds
from mulo.errors import DataError, one_line
from mulo.io import private_tempdir

ASSETS = Path(__file__).resolve().parent / "assets"  # data shipped with the package (see assets/README.md)
DEFAULT_TINYSHAKESPEARE = ASSETS / "tinyshakespeare" / "input.txt"
TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
BYTE_VOCAB_SIZE = 256 + 3  # seqio.ByteVocabulary: pad, eos, unk, then bytes
T5_VOCAB_SIZE = 32_000 + 100  # T5 cc_all.32000 + 100 extra ids, the reference's lm1b vocabulary
T5_VOCAB_URL = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"
LM1B_EXTRA_IDS = 100
TS_FRACTIONS = (0.90, 0.05, 0.05)


def byte_ids(text: str) -> np.ndarray:
    """seqio's ``ByteVocabulary`` ids of ``text`` (its UTF-8 bytes + 3: ids 0-2 are pad, eos, unk), computed with
    numpy, so byte-level tasks need neither seqio nor TensorFlow (the tests check it against seqio)."""
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32) + 3


class TinyShakespeare:
    """Byte-level Tiny Shakespeare; the whole text (1.1M tokens) lives in RAM as int32."""

    kind = "text"

    def __init__(self, name: str, seq_len: int, settings: Any = None):
        self.name = name
        self.seq_len = int(seq_len)
        self.vocab_size = BYTE_VOCAB_SIZE
        configured = getattr(settings, "tinyshakespeare_path", None)
        self.path = Path(configured) if configured else DEFAULT_TINYSHAKESPEARE
        self._tokens: np.ndarray | None = None
        self._lock = threading.Lock()

    def example_spec(self) -> dict[str, tuple[tuple[int, ...], Any]]:
        return {"x": ((self.seq_len,), np.int32), "y": ((self.seq_len,), np.int32)}

    def tokens(self) -> np.ndarray:
        with self._lock:
            if self._tokens is None:
                if not self.path.is_file():
                    raise DataError(f"Tiny Shakespeare not found at {self.path}: download {TINYSHAKESPEARE_URL} "
                                    f"there or set tinyshakespeare_path")
                try:
                    text = self.path.read_text(encoding="utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(f"{self.path} is not a UTF-8 text file (byte {exc.start} cannot be decoded): "
                                    f"set tinyshakespeare_path to Tiny Shakespeare's input.txt") from None
                except OSError as exc:
                    raise DataError(f"cannot read {self.path}: {exc.strerror or exc}") from None
                self._tokens = byte_ids(text)
            return self._tokens

    def split_tokens(self, split: str) -> np.ndarray:
        check_split(self.name, split)
        tokens = self.tokens()
        n = len(tokens)
        a = int(n * TS_FRACTIONS[0])
        b = int(n * (TS_FRACTIONS[0] + TS_FRACTIONS[1]))
        part = {"train": tokens[:a], "meta_valid": tokens[a:b], "test": tokens[b:]}[split]
        if len(part) < self.seq_len + 1:
            raise DataError(f"{self.name}: the {split} split has {len(part)} tokens, fewer than seq+1 = "
                            f"{self.seq_len + 1}")
        return part

    def batches(self, split: str, shape: tuple[int, ...], seed: int,
                part: tuple[slice, ...] | None = None) -> Iterator[dict]:
        """Endless batches of ``shape``; ``part`` (slices of ``shape``) yields only that block of each."""
        tokens = self.split_tokens(split)
        shape = tuple(int(s) for s in shape)
        count = num_items(shape)
        rng = split_rng(seed, split, self.name)
        offsets = np.arange(self.seq_len + 1)
        while True:
            starts = rng.integers(0, len(tokens) - self.seq_len, size=count).reshape(shape)
            if part is not None:
                starts = starts[tuple(part)]
            windows = tokens[starts[..., None] + offsets]
            yield {"x": windows[..., :-1], "y": windows[..., 1:]}

    def eval_batches(self, split: str, batch_size: int, max_examples: int | None = None) -> Iterator[dict]:
        tokens = self.split_tokens(split)
        width = self.seq_len + 1
        n = len(tokens) // width
        if max_examples is not None:
            n = min(n, int(max_examples))
        windows = tokens[:n * width].reshape(n, width)
        for start in range(0, n, int(batch_size)):
            w = windows[start:start + int(batch_size)]
            yield {"x": w[:, :-1], "y": w[:, 1:]}


class LM1B:
    """TFDS lm1b with a SentencePiece vocabulary, streamed through tf.data."""

    kind = "text"
    SPLITS = {"train": "train[2%:]", "meta_valid": "train[0%:1%]", "test": "test"}

    def __init__(self, name: str, seq_len: int, settings: Any = None):
        self.name = name
        self.seq_len = int(seq_len)
        self.vocab_path = getattr(settings, "vocab_path", None)
        self.data_dir = getattr(settings, "data_dir", None)
        self.download = bool(getattr(settings, "tfds_download", False))
        if self.vocab_path is not None and not Path(self.vocab_path).is_file():
            raise DataError(f"SentencePiece model not found at {self.vocab_path}: set vocab_path to a SentencePiece "
                            f".model file (the reference used {T5_VOCAB_URL})")
        self._vocab = None
        self._vocab_size: int | None = None

    def example_spec(self) -> dict[str, tuple[tuple[int, ...], Any]]:
        return {"x": ((self.seq_len,), np.int32), "y": ((self.seq_len,), np.int32)}

    @property
    def vocab_size(self) -> int:
        """The vocabulary size of ``vocab_path`` (+100 extra ids, as T5); 32,100 when no model is configured (so the
        model's shapes exist without data; asking for batches then fails with a clear error)."""
        if self._vocab_size is None:
            if self.vocab_path is None:
                self._vocab_size = T5_VOCAB_SIZE
            else:
                import sentencepiece as spm

                sp = spm.SentencePieceProcessor()
                sp.Load(str(self.vocab_path))
                self._vocab_size = int(sp.GetPieceSize()) + LM1B_EXTRA_IDS
        return self._vocab_size

    def vocabulary(self):
        if self.vocab_path is None:
            raise DataError(f"{self.name} needs a SentencePiece model: set vocab_path (the reference used "
                            f"{T5_VOCAB_URL}, 32k pieces)")
        if self._vocab is None:
            seqio = import_seqio()

            self._vocab = seqio.SentencePieceVocabulary(str(self.vocab_path), extra_ids=LM1B_EXTRA_IDS)
        return self._vocab

    def _dataset(self, split: str, seed: int | None):
        check_split(self.name, split)
        vocab = self.vocabulary()
        tf, tfds = import_tf(), import_tfds()

        read_config = tfds.ReadConfig(shuffle_seed=seed) if seed is not None else None
        try:
            with private_tempdir("mulo-tfds-"):  # TFDS leaves an empty temporary directory per dataset-info lookup
                ds = tfds.load("lm1b", split=self.SPLITS[split], data_dir=self.data_dir, download=self.download,
                               shuffle_files=seed is not None, read_config=read_config)
        except Exception as exc:
            where = self.data_dir or "the TFDS default data_dir"
            msg = one_line(exc)
            raise DataError(f"TFDS dataset lm1b not available in {where}: prepare it with `tfds build lm1b` or set "
                            f"tfds_download true [{type(exc).__name__}: {msg}]") from None
        length, eos = self.seq_len + 1, int(vocab.eos_id)

        def tokenize(example):
            ids = tf.cast(vocab.encode_tf(example["text"]), tf.int32)
            ids = tf.concat([ids, tf.constant([eos], tf.int32)], axis=0)[:length]
            return tf.pad(ids, [[0, length - tf.shape(ids)[0]]])

        return ds, tokenize

    def batches(self, split: str, shape: tuple[int, ...], seed: int,
                part: tuple[slice, ...] | None = None) -> Iterator[dict]:
        """Endless batches of ``shape``; ``part`` yields only that block of each (tokenised whole, then cut)."""
        tf, tfds = import_tf(), import_tfds()

        shape = tuple(int(s) for s in shape)
        count = num_items(shape)
        seed = int(split_rng(seed, split, self.name).integers(2**31 - 1))
        ds, tokenize = self._dataset(split, seed)
        ds = (ds.repeat().shuffle(10 * count, seed=seed, reshuffle_each_iteration=True)
              .map(tokenize, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
              .batch(count, drop_remainder=True).prefetch(2))
        for tokens in tfds.as_numpy(ds):
            tokens = np.asarray(tokens, np.int32)
            batch = {"x": tokens[:, :-1].reshape(shape + (self.seq_len,)),
                     "y": tokens[:, 1:].reshape(shape + (self.seq_len,))}
            yield batch if part is None else {k: v[tuple(part)] for k, v in batch.items()}

    def eval_batches(self, split: str, batch_size: int, max_examples: int | None = None) -> Iterator[dict]:
        tf, tfds = import_tf(), import_tfds()

        ds, tokenize = self._dataset(split, None)
        if max_examples is not None:
            ds = ds.take(int(max_examples))
        ds = ds.map(tokenize, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(int(batch_size))
        for tokens in tfds.as_numpy(ds):
            tokens = np.asarray(tokens, np.int32)
            yield {"x": tokens[:, :-1], "y": tokens[:, 1:]}


__all__ = ["TinyShakespeare", "LM1B", "BYTE_VOCAB_SIZE", "T5_VOCAB_SIZE"]
