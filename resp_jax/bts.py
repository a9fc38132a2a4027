"""BTS: each cycle's metadata as a sentence, read by a text tower beside the audio encoder
(Kim et al., Interspeech 2024; kaen2891/bts; docs/method.md §14).

BTS writes the patient's age group, sex, the chest location and the recording device of a
cycle as one English sentence (its template: [bts] util/meta_description.py:6-69), tokenises
it (CLAP's RoBERTa tokenizer, padded to 64 tokens: util/icbhi_dataset.py:189), and classifies
the concatenation of CLAP's L2-normalised text and audio embeddings with one Linear layer
trained by cross-entropy (models/clap.py:20-37, main.py:186-197, 267-273). The sentences are a
fixed set, one per combination of field values (a value or unknown), so they are written and
tokenised once when a run starts: `prompts` keeps them with their token ids in the run
directory (`PROMPTS_FILE`), and a batch carries only the fields' codes, which `PromptText`
turns into the tower's input. Predicting and resuming read the stored ids: no tokenizer.

The tokenizer: a converted CLAP text tower's own (`clap_text.TOKENIZER_FILE`, read with the
``tokenizers`` package: the ``text`` extra), or, for a text tower trained from scratch, a
word vocabulary of the sentences themselves (`WordTokenizer`: RoBERTa's special-token ids,
one id per word or punctuation mark; no package needed).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from pathlib import Path
from typing import Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from resp_jax.data import metadata, sources

# The fields BTS writes, in the template's roles (its --meta_mode 'all': age, sex, location,
# device). A config's bts.fields is a subset (its other meta_modes).
FIELDS = ("age_group", "sex", "location", "device")
NO_DESCRIPTION = "No description."  # every field unknown ([bts] icbhi_util.py:371-372)
PROMPTS_FILE = "prompts.json"
MAX_ROWS = 100_000  # combinations of field values a prompt table may hold


def _article(words: str) -> str:
    return f"an {words}" if words[:1].lower() in "aeiou" else f"a {words}"


def sentence(values: Mapping[str, str | None], fields: Sequence[str] = FIELDS) -> str:
    """BTS's sentence for the ``fields`` it writes, each value given in words (None: unknown).

    The template of [bts] util/meta_description.py:6-69: "This sound was recorded from the
    <location> of <an age sex patient>, using <a device>." (without location or device:
    "This patient is ..."), "unknown" for an unknown value ("a male patient with unknown
    age", "an unknown region", "an unknown device"). Beyond it: two or more fields, all
    unknown, give "No description." (BTS's --test_unknown_all sentence), and an unknown age
    and sex leave the patient out (the template would write "a unknown patient of unknown
    age")."""
    given = {f: values.get(f) for f in fields}
    if len(given) > 1 and all(v is None for v in given.values()):
        return NO_DESCRIPTION
    age, sex = given.get("age_group", False), given.get("sex", False)
    location, device = given.get("location", False), given.get("device", False)
    out = "This sound was recorded" if location is not False or device is not False \
        else "This patient is"
    patient = None
    if age is not False and sex is not False and not (age is None and sex is None):
        if age is None:
            patient = f"a {sex} patient of unknown age"
        elif sex is None:
            patient = f"{_article(age)} patient of unknown sex"
        elif age == "adult":
            patient = f"an adult {sex} patient"
        else:  # the template puts other ages after the sex: "a female pediatric patient"
            patient = f"{_article(sex)} {age} patient"
    elif age is not False and sex is False:
        patient = "a patient of unknown age" if age is None else f"{_article(age)} patient"
    elif sex is not False and age is False:
        patient = "a patient of unknown sex" if sex is None else f"a {sex} patient"
    if location is not False:
        out += " from " + ("an unknown region" if location is None else f"the {location}")
        if patient:
            out += " of " + patient.replace(" of ", " with ")
    elif patient:
        out += (" from " if device is not False else " ") + patient
    if device is not False:
        out += (", using " if patient else " with ") + (
            "an unknown device" if device is None else _article(device))
    return out + "."


def words(schema: metadata.Schema) -> dict[str, dict[str, str]]:
    """field -> value -> how it reads in a sentence (the dataset Source's ``prompt_words``;
    a value not listed reads as itself)."""
    source = sources.get(schema.dataset)
    known = {f: dict(pairs) for f, pairs in source.prompt_words}
    return {f: {v: known.get(f, {}).get(v, str(v)) for v in schema.vocab(f)}
            for f, _ in schema.vocabs}


def sentences(schema: metadata.Schema, fields: Sequence[str]) -> list[str]:
    """The sentence of every combination of the fields' values, unknown first, in the order
    of `Prompts.rows` (mixed radix, the first field most significant)."""
    spoken = words(schema)
    options = [[None] + [spoken[f][v] for v in schema.vocab(f)] for f in fields]
    count = int(np.prod([len(o) for o in options]))
    if count > MAX_ROWS:
        raise ValueError(f"bts.fields {tuple(fields)} have {count} combinations of values; at "
                         f"most {MAX_ROWS} are tokenised")
    return [sentence(dict(zip(fields, combo)), fields) for combo in itertools.product(*options)]


@dataclasses.dataclass(frozen=True, eq=False)
class Prompts:
    """The tokenised sentences of every combination of ``fields``' values: ``ids`` and
    ``mask`` [rows, length]; ``sizes``: each field's number of values (a row's code digit
    is the value's code + 1, 0 for unknown)."""
    fields: tuple
    sizes: tuple
    sentences: tuple
    ids: np.ndarray
    mask: np.ndarray
    tokenizer: str  # what tokenised them: 'word' or the converted tower's directory
    pad: int = 1    # the padding id after each sentence's tokens

    def rows(self, codes):
        """Rows [B] of the codes [B, len(fields)] (-1 unknown) of a batch."""
        codes = jnp.asarray(codes, jnp.int32)
        row = jnp.zeros(codes.shape[:1], jnp.int32)
        for i, size in enumerate(self.sizes):
            row = row * (size + 1) + jnp.clip(codes[:, i], -1, size - 1) + 1
        return row

    def _key(self):
        return (self.fields, self.sizes, self.sentences, self.ids.tobytes(), self.mask.tobytes())

    def __hash__(self):
        return hash(self._key())

    def __eq__(self, other):
        return isinstance(other, Prompts) and self._key() == other._key()

    def to_json(self) -> dict:
        return {"fields": list(self.fields), "sizes": list(self.sizes),
                "tokenizer": self.tokenizer, "sentences": list(self.sentences),
                "ids": [" ".join(map(str, row[:n])) for row, n in
                        zip(self.ids.tolist(), self.mask.sum(axis=1).tolist())],
                "length": int(self.ids.shape[1]), "pad": self.pad}

    @classmethod
    def from_json(cls, d: dict) -> "Prompts":
        rows = [[int(t) for t in row.split()] for row in d["ids"]]
        ids, mask = _padded(rows, int(d["length"]), int(d["pad"]))
        return cls(tuple(d["fields"]), tuple(d["sizes"]), tuple(d["sentences"]), ids, mask,
                   d["tokenizer"], int(d["pad"]))


def _padded(rows: Sequence[Sequence[int]], length: int, pad: int) -> tuple[np.ndarray,
                                                                         np.ndarray]:
    """``ids`` and ``mask`` [n, length] int32 of token rows padded with ``pad`` after them."""
    ids = np.full((len(rows), length), pad, np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        ids[i, :len(row)], mask[i, :len(row)] = row, 1
    return ids, mask


class WordTokenizer:
    """A from-scratch text tower's tokenizer: RoBERTa's special ids (<s> 0, <pad> 1, </s> 2,
    <unk> 3), then one id per word or punctuation mark of ``texts`` in sorted order."""
    SPECIAL = ("<s>", "<pad>", "</s>", "<unk>")
    PAD = 1

    def __init__(self, texts: Sequence[str]):
        self.vocab = {w: i for i, w in enumerate(self.SPECIAL + tuple(sorted(
            {w for t in texts for w in self.split(t)})))}

    @staticmethod
    def split(text: str) -> list[str]:
        return re.findall(r"\w+|[^\w\s]", text)

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return [[0] + [self.vocab.get(w, 3) for w in self.split(t)] + [2] for t in texts]


def _tokenize(texts: Sequence[str], tokenizer: str) -> tuple[list, int]:
    """(token ids of each text, the padding id) with ``tokenizer``: 'word' or a converted
    text tower's directory (its tokenizers JSON)."""
    if tokenizer == "word":
        return WordTokenizer(texts).encode(texts), WordTokenizer.PAD
    try:
        import tokenizers
    except ImportError:
        raise ImportError("tokenising BTS's sentences with a converted CLAP text tower needs "
                          "the 'tokenizers' package: pip install -e '.[text]' (once, when the "
                          "run starts: resuming and predict read prompts.json)") from None
    from resp_jax.models import clap_text

    tok = tokenizers.Tokenizer.from_str(clap_text.tokenizer_text(tokenizer))
    tok.no_padding()
    tok.no_truncation()
    pad = clap_text.encoder_meta(tokenizer)["pad_token_id"]
    return [e.ids for e in tok.encode_batch(list(texts))], int(pad)


def tokenize(texts: Sequence[str], tokenizer: str, length: int) -> tuple[np.ndarray,
                                                                        np.ndarray, int]:
    """``ids`` and ``mask`` [n, length] int32 and the padding id: each text's tokens, padded
    to ``length`` as BTS's tokenizer call pads them (``padding='max_length'``, no
    truncation: a longer text is an error)."""
    encoded, pad = _tokenize(texts, tokenizer)
    longest = max(len(e) for e in encoded)
    if longest > length:
        raise ValueError(f"a BTS sentence has {longest} tokens, more than bts.max_length="
                         f"{length}: {texts[int(np.argmax([len(e) for e in encoded]))]!r}")
    return (*_padded(encoded, length, pad), pad)


def build_prompts(config) -> Prompts:
    """The prompts of a resolved config (``bts.fields``, ``bts.max_length``, the tokenizer
    of ``model.text.init_from``, or 'word' from scratch)."""
    schema = metadata.schema(config.data)
    fields = tuple(config.bts.fields)
    texts = sentences(schema, fields)
    tokenizer = config.model.text.init_from or "word"
    ids, mask, pad = tokenize(texts, tokenizer, int(config.bts.max_length))
    if pad != int(config.model.text.pad_token_id):
        raise ValueError(f"the tokenizer pads with {pad}, the text tower with "
                         f"{config.model.text.pad_token_id} (config.model.text.pad_token_id)")
    return Prompts(fields, tuple(len(schema.vocab(f)) for f in fields), tuple(texts), ids,
                   mask, tokenizer, pad)


def read_prompts(workdir) -> Prompts:
    path = Path(workdir) / PROMPTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a BTS run writes its tokenised sentences "
                                "there when it starts")
    return Prompts.from_json(json.loads(path.read_text()))


def write_prompts(workdir, made: Prompts) -> None:
    """Keeps a run's prompts in ``workdir`` (`PROMPTS_FILE`), once."""
    from resp_jax import logging_utils

    path = Path(workdir) / PROMPTS_FILE
    if not path.is_file():
        logging_utils.write_json(path, made.to_json())


def prompts(config, workdir, write: bool = True) -> Prompts:
    """The run's prompts: those ``workdir`` holds (a resumed run: no tokenizer needed; their
    sentences must be the config's), else tokenised now and, with ``write``, kept there
    (`write_prompts`)."""
    path = Path(workdir) / PROMPTS_FILE
    if path.is_file():
        held = read_prompts(workdir)
        want = sentences(metadata.schema(config.data), tuple(config.bts.fields))
        if list(held.sentences) != want or held.ids.shape[1] != int(config.bts.max_length):
            raise ValueError(f"{path} holds other sentences than this config writes; resume "
                             "with the same config or use a new --workdir")
        return held
    made = build_prompts(config)
    if made.ids.max() >= int(config.model.text.vocab_size):
        raise ValueError(f"token id {int(made.ids.max())} is outside the text tower's "
                         f"vocabulary of {config.model.text.vocab_size}")
    if write:
        write_prompts(workdir, made)
    return made


def resolve(config) -> None:
    """Method 'bts' when a run starts (`configuration.resolve`, after the schema): checks
    ``bts.fields`` against `FIELDS` and the dataset, and fills ``model.text``'s placeholders:
    ``init_from`` None = ``<model.init_from>/text`` (tools/convert_clap.py writes it) or ''
    (from scratch); the architecture from the converted tower, or RoBERTa-base's with the
    word vocabulary of the sentences; the dropouts from the tower's record (0.1)."""
    from resp_jax.models import clap_text

    if "bts" not in config or "text" not in config.model:
        raise ValueError("method 'bts' reads config.bts and config.model.text "
                         "(configs/htsat_recipes.py bts_recipe: start from configs/clap_bts.py)")
    fields = tuple(config.bts.fields)
    if not fields or len(set(fields)) != len(fields) or set(fields) - set(FIELDS):
        raise ValueError(f"config.bts.fields must be distinct fields among {FIELDS}, got "
                         f"{fields}")
    schema = metadata.schema(config.data)
    try:
        metadata.check_fields(schema, fields)
    except KeyError as e:
        raise ValueError(f"config.bts.fields: {e.args[0]}") from None
    t, m = config.model.text, config.model
    if t.init_from is None:
        t.init_from = str(Path(m.init_from) / "text") if m.init_from else ""
        if m.init_from and not (Path(t.init_from) / "encoder.json").is_file():
            raise FileNotFoundError(f"{t.init_from} not found: {m.init_from} holds no CLAP text "
                                    "tower; convert the ClapModel again with "
                                    "tools/convert_clap.py, or set config.model.text.init_from="
                                    "'' to train the text tower from scratch")
    meta = clap_text.encoder_meta(t.init_from) if t.init_from else None
    for field in clap_text.ARCH_FIELDS:
        if t[field] is None:
            if meta is not None:
                t[field] = meta[field]
            elif field == "vocab_size":
                t[field] = len(WordTokenizer(sentences(schema, fields)))
            else:
                t[field] = clap_text.ARCH_DEFAULTS[field]
    record = (meta or {}).get("regularisation", {})
    for field, key in (("dropout", "hidden_dropout_prob"),
                       ("attention_dropout", "attention_probs_dropout_prob")):
        if t[field] is None:
            t[field] = float(record.get(key, 0.1))
    longest = t.max_position_embeddings - t.pad_token_id - 1
    if not 0 < config.bts.max_length <= longest:
        raise ValueError(f"config.bts.max_length={config.bts.max_length}: the text tower takes "
                         f"1 to {longest} tokens (max_position_embeddings - pad_token_id - 1)")
    text_tower(config).check()


def text_tower(config):
    """The `clap_text.ClapTextEncoder` of a resolved config."""
    from resp_jax.models import clap_text

    t = config.model.text
    return clap_text.ClapTextEncoder(**{k: t[k] for k in clap_text.ARCH_FIELDS},
                                     dropout=float(t.dropout),
                                     attention_dropout=float(t.attention_dropout),
                                     dtype=jnp.dtype(config.model.dtype))


def pretrained_text(config) -> dict | None:
    """The converted tower of ``model.text.init_from`` ({'params'}), checked against the
    config; None from scratch."""
    from resp_jax.models import clap_text

    if not config.model.text.init_from:
        return None
    loaded, variables = clap_text.load_pretrained(config.model.text.init_from)
    want = text_tower(config)
    diffs = [f"{k} {getattr(loaded, k)!r} (config: {getattr(want, k)!r})"
             for k in clap_text.ARCH_FIELDS if getattr(loaded, k) != getattr(want, k)]
    if diffs:
        raise ValueError(f"{config.model.text.init_from} holds a text tower that does not "
                         f"match config.model.text: {'; '.join(diffs)}")
    return variables


class PromptText(nn.Module):
    """The text side of a BTS model: the batch's codes of ``prompts.fields`` [B, F] -> the
    text tower's output for their sentences [B, D] float32."""

    tower: nn.Module
    prompts: Prompts

    @property
    def fields(self) -> tuple:
        return self.prompts.fields

    def __call__(self, codes, train: bool):
        rows = self.prompts.rows(codes)
        ids = jnp.asarray(self.prompts.ids)[rows]
        mask = jnp.asarray(self.prompts.mask)[rows]
        return self.tower(ids, mask, train).astype(jnp.float32)
