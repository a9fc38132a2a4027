"""Datasets by name: everything specific to one dataset behind one `Source`.

A dataset is one module defining ``SOURCE``, an instance of a `Source` subclass, listed in
`REGISTRY` under its ``data.name``. The Source reads the distributed files into cycle records
(`records.Cycle`; all of a dataset's quirks live in its module) and owns everything else
that differs between datasets: how its root is given (a folder, or a manifest's CSV), its
`Schema` (classes with the normal class first, metadata values; fixed, or read from the
data), its splits and protocols, the recipe values it changes (epochs, class weighting), the
annotation files `predict` reads, the fingerprint its prepared copy is keyed on, what
`inspect` counts and its synthetic writer. Generic modules ask the Source and never compare
dataset names (tests/test_sources.py fails if one does).

The registry imports a dataset's module when it is first asked for, so this module imports
none of them: a dataset module may import this one (for `Source`) without a cycle.

A protocol (``data.protocol``) is a choice of splits by the Source, never a second training
loop: `Source.protocol` says what it changes (`Protocol`: its classes, the value it holds
out, the prepared splits it reads) and `Source.protocol_splits` returns the splits a run of
it sees, chosen (or subset, relabelled) from the prepared splits. The official split
(`OFFICIAL`) is the one every Source has; ICBHI adds leaving one recording device out
(`protocols.leave_one_out`, docs/method.md §13.1), SPRSound its challenge tasks (§13.3).

Class maps between datasets (``class_maps``: one dataset's classes onto another's) are
declared by the dataset whose classes are the finer ones (`declared_maps`); cross-dataset
evaluation (`resp_jax.evaluate`, docs/method.md §13.2) finds them by the classes they map.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from pathlib import Path
from typing import Optional

from resp_jax.data import records
# Protocols: the names, what one changes, and the choosing (the API here too).
from resp_jax.data.protocols import (LEAVE_DEVICE_OUT, OFFICIAL, Protocol,  # noqa: F401
                                     leave_one_out)

# data.name -> the module that defines its SOURCE, imported on first use.
REGISTRY = {
    "icbhi": "resp_jax.data.icbhi",
    "sprsound": "resp_jax.data.sprsound",
    "manifest": "resp_jax.data.manifest",
    "sprsound_releases": "resp_jax.data.sprsound_releases",
    "hf_lung": "resp_jax.data.hf_lung",
}
NAMES = tuple(REGISTRY)
# The `Cycle` attributes a fixed-schema dataset fills, and the codes its prepared copy holds
# (-1 where the dataset has no such field).
BASE_FIELDS = ("label", "sex", "age_group", "device", "location", "mode", "diagnosis")


@dataclasses.dataclass(frozen=True)
class Schema:
    """What the codes of a dataset mean: class names in label order, and the values of every
    metadata field in code order."""
    dataset: str
    classes: tuple
    vocabs: tuple   # ((field, (value, ...)), ...): the metadata fields, in order
    stored: tuple = ()  # the base fields a prepared copy holds codes of; () = `fields`

    @property
    def fields(self) -> tuple:
        """The base fields defined for the dataset ('label' first)."""
        return ("label",) + tuple(f for f, _ in self.vocabs)

    @property
    def stored_fields(self) -> tuple:
        """The base fields a prepared copy holds codes of (a fixed schema: all of
        `BASE_FIELDS`, -1 where the dataset has none; a schema read from the data: its own)."""
        return self.stored or self.fields

    def vocab(self, field: str) -> tuple:
        if field == "label":
            return self.classes
        for f, values in self.vocabs:
            if f == field:
                return values
        raise KeyError(
            f"metadata field {field!r} is not defined for dataset {self.dataset!r}; "
            f"expected one of {list(self.fields)} or a '+'-joined composite of them")

    def to_config(self) -> tuple:
        """``data.fields`` as `configuration.resolve` records it."""
        return tuple((f, tuple(v)) for f, v in self.vocabs)

    def to_json(self) -> str:
        """The classes and field values as a prepared copy of a schema read from the data
        records them (they fix its codes, so they are part of its key)."""
        return json.dumps({"classes": list(self.classes),
                           "fields": [[f, list(v)] for f, v in self.vocabs]})

    @classmethod
    def from_json(cls, dataset: str, text: str) -> "Schema":
        d = json.loads(text)
        return cls(dataset, tuple(d["classes"]), tuple((f, tuple(v)) for f, v in d["fields"]))


class Source:
    """One dataset. Subclasses set the attributes and implement `read` (and, where the
    dataset has them, `read_annotation` and `describe` for a schema read from the data)."""
    name = ""                 # data.name
    title = ""                # the dataset in messages, e.g. 'ICBHI 2017'
    root_is_file = False      # data.root names a file (a manifest's CSV), else a folder
    classes: tuple = ()       # class names in label order, normal first; () = from the data
    vocabs: tuple = ()        # ((field, values), ...) of a fixed schema
    splits: tuple = ()        # split names, 'train' first; () = those found in the data
    test_split = "test"       # the split reported as 'test' when data.test_split is None
    epochs = 400              # train.epochs when the config leaves it None
    class_weighted = True     # loss.class_weighted when the config leaves it None
    any_audio_format = False  # recordings in any format soundfile reads (else PCM WAV)
    annotation_suffix = ""    # predict --annotations: files whose name ends so ('' = none)
    inspect_fields = ("sex", "age_group")  # the metadata `inspect` counts
    dropped_note = ""         # `inspect`: what the reader's `dropped` list holds
    sprsound_score = False    # metrics report the SPRSound challenge score as well
    synthetic = ""            # 'module:function' writing a synthetic root in the real layout
    synthetic_default = 0     # recordings of the synthetic default dataset (0: none)
    protocols = (OFFICIAL,)   # protocol names `protocol` and `protocol_splits` know
    class_maps: dict = {}     # {other dataset: {own class: its class}} (docs/method.md §13.2)
    # How metadata values read in a sentence (BTS's prompts, `resp_jax.bts`): ((field,
    # ((value, words), ...)), ...); a value not listed reads as itself.
    prompt_words: tuple = ()

    # -- reading ------------------------------------------------------------------------

    def read(self, root, *, annotations_only: bool = False, skip_bad: bool = False,
             schema: Optional[Schema] = None, dropped: Optional[list] = None
             ) -> records.ReadResult:
        """Every cycle under ``root``, with the split and class names filled in.
        ``annotations_only`` leaves the audio alone; ``skip_bad`` lists bad items in
        ``ReadResult.skipped`` instead of raising `records.DataError`; ``schema`` (the run's)
        fixes the codes of a schema read from the data; ``dropped`` collects what the
        reader leaves out by rule (not bad input), for `inspect`."""
        raise NotImplementedError

    def read_prepared(self, root, *, skip_bad: bool = False,
                      schema: Optional[Schema] = None) -> records.ReadResult:
        """Everything the prepared copy holds: `read`, plus any units only a protocol uses
        (in splits of their own that `Protocol.reads` names: SPRSound's whole recordings)."""
        return self.read(root, skip_bad=skip_bad, schema=schema)

    def read_annotation(self, path) -> tuple:
        """``([(start s, end s, label)], [dropped records.Skipped])`` of one recording's
        annotation file (`predict --annotations`); labels index ``classes``."""
        raise ValueError(f"{path}: {self.name} has no annotation files to classify")

    # -- schema, splits, protocols --------------------------------------------------------

    @property
    def schema_from_data(self) -> bool:
        """Whether the classes and field values come from the data (a manifest's CSV)."""
        return not self.classes

    def schema(self, protocol: str = OFFICIAL) -> Schema:
        """The fixed schema (docs/method.md §1), with ``protocol``'s classes if it has its
        own (SPRSound's challenge tasks)."""
        if self.schema_from_data:
            raise ValueError(f"dataset {self.name!r} has no fixed classes (they come from its "
                             "data: resolve the config, or pass the schema)")
        classes = self.protocol(protocol).classes or self.classes
        return Schema(self.name, classes, self.vocabs, stored=BASE_FIELDS)

    def describe(self, root, classes=None, normal_class: Optional[str] = None,
                 protocol: str = OFFICIAL) -> tuple:
        """``(Schema, splits, normal class)``: what `configuration.resolve` records in the
        config (the schema of ``protocol``). A fixed schema's ``classes`` and
        ``normal_class``, when given, must match."""
        schema = self.schema(protocol)
        if classes and tuple(classes) != schema.classes:
            raise ValueError(f"config.data.classes: {self.name}'s classes are fixed: "
                             f"{schema.classes}, got {tuple(classes)}")
        if normal_class and normal_class != schema.classes[0]:
            raise ValueError(f"config.data.normal_class: {self.name}'s normal class is "
                             f"{schema.classes[0]!r}, got {normal_class!r}")
        return schema, self.splits_of(root), schema.classes[0]

    def splits_of(self, root) -> tuple:
        """The split names of the dataset under ``root``, 'train' first."""
        return self.splits

    def test_split_of(self, splits: tuple) -> str:
        """The split reported as 'test' when ``data.test_split`` is None."""
        return self.test_split

    def protocol(self, name: str = OFFICIAL) -> Protocol:
        """What protocol ``name`` changes; ValueError naming the known ones. A dataset with
        a 'device' field that lists `LEAVE_DEVICE_OUT` gets it from here."""
        if name not in self.protocols:
            raise ValueError(f"{self.name} has no protocol {name!r}; expected one of "
                             f"{self.protocols}")
        if name == LEAVE_DEVICE_OUT:
            return Protocol(name, held_out_field="device",
                            held_out_values=tuple(dict(self.vocabs).get("device", ())))
        return Protocol(name)

    def protocol_split_names(self, splits: tuple, protocol: str = OFFICIAL,
                             held_out: str = "") -> tuple:
        """The split names a run of ``protocol`` sees ('train' first), of the dataset's
        ``splits``: a leave-one-out protocol's 'train' and its held-out value's split."""
        p = self.protocol(protocol)
        return ("train", p.test_split(held_out)) if p.held_out_field else tuple(splits)

    def protocol_splits(self, splits: dict, protocol: str = OFFICIAL,
                        test_split: Optional[str] = None, held_out: str = "") -> dict:
        """The splits a run of ``protocol`` sees, chosen from ``splits`` (dataset split name
        -> cycles: a prepared dataset's `prepare.Split`s, or lists of `Cycle`s), 'train'
        and the reported ``test_split`` among them. The official protocol keeps every split
        and reports ``test_split`` (default: `test_split_of` the splits). A new protocol is
        a name in ``protocols`` and a branch here (or in a subclass) that selects, subsets
        (`protocols.take`) or relabels (`protocols.relabel`) cycles: the loop, the
        validation carve and the metrics stay as they are."""
        p = self.protocol(protocol)
        if p.held_out_field:
            chosen = leave_one_out(splits, p.held_out_field, held_out, p.held_out_values)
            return {"train": chosen["train"], p.test_split(held_out): chosen["test"]}
        test = test_split or self.test_split_of(tuple(splits))
        for name in ("train", test):
            if name not in splits:
                raise KeyError(f"{self.name} has no split {name!r}; expected one of "
                               f"{sorted(splits)}")
        return dict(splits)

    # -- the data root and its prepared copy ----------------------------------------------

    def check_root(self, root) -> Path:
        """``root`` resolved; `records.DataError` naming it when it is not there."""
        root = Path(root).expanduser().resolve()
        if self.root_is_file and not root.is_file():
            raise records.DataError(root, f"{self.name} root not found; expected a file")
        if not self.root_is_file and not root.is_dir():
            raise records.DataError(root, f"dataset root not found; expected a directory with "
                                          f"the distributed {self.name} files")
        return root

    def manual_dir(self, root) -> Path:
        """The folder TFDS is given as its manual directory."""
        return Path(root).parent if self.root_is_file else Path(root)

    def fingerprint(self, h, root, exclude=None, schema: Optional[Schema] = None) -> None:
        """Adds what the prepared copy of ``root`` depends on to the hash ``h``: the relative
        path, size and mtime of every file under it, leaving out the folder ``exclude``
        (a cache inside it)."""
        skip = os.path.realpath(exclude) if exclude else None
        entries = []
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames
                                 if os.path.realpath(os.path.join(dirpath, d)) != skip)
            for name in filenames:
                full = os.path.join(dirpath, name)
                st = os.stat(full)
                entries.append(f"{os.path.relpath(full, root)}\t{st.st_size}\t{st.st_mtime_ns}")
        for e in sorted(entries):
            h.update(e.encode() + b"\n")

    # -- inspect and synthetic data -------------------------------------------------------

    def inspect_view(self, result: records.ReadResult) -> tuple:
        """The metadata fields `inspect` counts for a read."""
        return self.inspect_fields

    def writer(self):
        """The function writing a synthetic root in the real layout (``synthetic``)."""
        if not self.synthetic:
            raise ValueError(f"dataset {self.name!r} has no synthetic writer")
        module, function = self.synthetic.split(":")
        return getattr(importlib.import_module(module), function)


def get(name: str) -> Source:
    """The Source registered under ``name`` (the config's ``data.name``)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; expected one of {NAMES}")
    return importlib.import_module(REGISTRY[name]).SOURCE


def declared_maps() -> list:
    """``[(dataset, other dataset, {class: other's class})]``: every class map a Source
    declares (``class_maps``), for cross-dataset evaluation (docs/method.md §13.2)."""
    return [(name, other, dict(table)) for name in NAMES
            for other, table in get(name).class_maps.items()]


def by_annotation(path) -> Source:
    """The Source whose annotation files end as ``path`` does (the longest such ending);
    `records.DataError` naming the file when none reads it."""
    name = os.path.basename(os.fspath(path)).lower()
    found = sorted((s for s in map(get, NAMES)
                    if s.annotation_suffix and name.endswith(s.annotation_suffix)),
                   key=lambda s: -len(s.annotation_suffix))
    if not found:
        known = ", ".join(f"{s.title} (*{s.annotation_suffix})" for s in map(get, NAMES)
                          if s.annotation_suffix)
        raise records.DataError(path, f"unknown annotation format; expected one of: {known}")
    return found[0]


def schema(spec) -> Schema:
    """The `Schema` of a dataset name with a fixed schema, a `Schema`, or a config's ``data``
    section (``data.classes`` and ``data.fields`` as `configuration.resolve` fills them; runs
    recorded before they existed fall back to the dataset's fixed schema)."""
    if isinstance(spec, Schema):
        return spec
    if isinstance(spec, str):
        return get(spec).schema()
    classes, fields = spec.get("classes"), spec.get("fields")
    source = get(spec["name"])
    if not classes:
        return source.schema()
    return Schema(spec["name"], tuple(classes), tuple((f, tuple(v)) for f, v in (fields or ())),
                  stored=() if source.schema_from_data else BASE_FIELDS)

