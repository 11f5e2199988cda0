"""Your own fine-tuning tasks, defined in YAML beside (or instead of) the GLUE tasks:

    own_tasks:
      topic:                       # a name of your choice: results/topic-seed19-<hash>.json
        kind: classification       # classification | multilabel | regression | token_classification
        train: data/topic/train.csv       # CSV, TSV, JSONL or parquet; CoNLL or JSONL for token_classification
        dev: data/topic/dev.csv
        test: data/topic/test.csv         # optional, labels optional: predictions only
        text: text                 # the text column, and `text_pair` for sentence pairs
        label: label
        metrics: [accuracy, macro_f1]      # averaged into the task score
        epochs: 3                  # and lr, weight_decay, batch_size, seeds, max_seq_len
        truncation: head           # of texts longer than max_seq_len keep the head, tail or head+tail

`dataset: <Hugging Face dataset>` (with `dataset_config`) reads train/dev/test as that dataset's split names
instead. A definition may also be a path to a YAML file holding one. Every file is read and checked before
any job starts, so bad input stops the run with nothing written.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from mosaicbert.config import Schema, build_config
from mosaicbert.errors import ConfigError, UserError, nearest
from mosaicbert.glue import tagging
from mosaicbert.glue.data import TRUNCATION_SIDES, Examples
from mosaicbert.glue.metrics import DEFAULT_METRICS, KIND_METRICS

KINDS = ("classification", "multilabel", "regression", "token_classification")
SPLITS = ("train", "dev", "test")
REPORTED_ONLY = ("mse", "mae")  # regression errors: lower is better, so never averaged into a score
# Kept in the job's own fields (lr, seeds, ...): out of the definition the job carries, so adding a seed or
# overriding a rate elsewhere keeps the other seeds' results (the spec hash covers the job's fields once).
HYPERPARAMETER_KEYS = ("lr", "weight_decay", "batch_size", "epochs", "seeds", "max_seq_len")
TABLE_FORMATS = (".csv", ".tsv", ".jsonl", ".json", ".parquet")


class OwnTask(Schema):
    """A task's definition as the YAML gives it; `labels` and `metrics` are filled in when it is resolved."""

    name: str = ""
    kind: str = "classification"
    train: str | None = None  # a file, or a split name of `dataset`
    dev: str | None = None
    test: str | None = None
    dataset: str | None = None  # Hugging Face dataset name (or a local folder datasets.load_dataset reads)
    dataset_config: str | None = None
    text: str = "text"  # token_classification: the words' column of a dataset (JSONL files say "tokens")
    text_pair: str | None = None
    label: str = "label"  # token_classification: the tags' column of a dataset (JSONL files say "tags")
    id: str | None = None  # a column of example ids for the saved predictions; default: the row number
    labels: list[str] | None = None  # the label set in id order; default: the training data's, sorted
    label_separator: str = "|"  # multilabel labels in a CSV/TSV cell: "sports|politics"
    metrics: list[str] | None = None
    max_seq_len: int | None = None  # default: the config's
    truncation: str = "head"  # which tokens of a longer text stay: head, tail or head+tail (glue/data.py)
    lr: float | None = None  # hyperparameters default to the config's `sane` settings
    weight_decay: float | None = None
    batch_size: int | None = None
    epochs: int | None = None
    seeds: list[int] | None = None
    files: dict[str, Any] = Field(default_factory=dict)  # not a YAML key: resolved paths, for the result cache

    # The interface the harness shares with GLUE's Task.
    @property
    def num_labels(self) -> int:
        return 1 if self.kind == "regression" else len(self.labels)

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(self.labels or ())

    @property
    def extra_metrics(self) -> tuple[str, ...]:
        """Reported beside the scored metrics: the other tagging scores (entity scores where the tags are IOB2),
        a regression's errors."""
        if self.kind == "token_classification":
            reported = tagging.TAGGING_METRICS if tagging.is_iob2(self.labels) else ("token_accuracy",)
            return tuple(m for m in reported if m not in self.metrics)
        return REPORTED_ONLY if self.kind == "regression" else ()

    @property
    def eval_splits(self) -> dict[str, str]:
        return {"dev": self.dev}

    @property
    def test_names(self) -> tuple[str, ...]:
        return ("test",) if self.test else ()

    @property
    def hyperparameters(self) -> dict[str, Any]:
        keys = ("lr", "weight_decay", "batch_size", "epochs", "seeds")
        return {key: getattr(self, key) for key in keys if getattr(self, key) is not None}


def from_json(values: dict[str, Any]) -> OwnTask:
    """The task a job carries (`Job.own_task`, from `job_definition`)."""
    return OwnTask(**values)


def definitions(config) -> dict[str, OwnTask]:
    """The config's `own_tasks`, key-checked (files are read by `resolve`)."""
    from mosaicbert.glue.tasks import TASKS

    tasks = {}
    for name, value in config.own_tasks.items():
        if name.lower() in (*TASKS, "wnli", "ax"):
            raise ConfigError(f"own_tasks.{name}: {name} is a GLUE task; give your task another name.")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise ConfigError(f"own_tasks.{name}: a task name is letters, digits, '_', '-' and '.' (it names files).")
        where = f"own_tasks.{name}"
        if isinstance(value, str):  # a file holding the definition
            value, where = _definition_file(name, Path(value)), value
        if not isinstance(value, dict):
            raise ConfigError(f"own_tasks.{name} must be a task definition (kind, train, dev, ...) or the path of a "
                              "YAML file holding one.")
        task = build_config(OwnTask, {**value, "name": name}, where)
        _check_keys(task, where)
        tasks[name] = task
    return tasks


def _definition_file(name: str, path: Path) -> dict[str, Any]:
    """A task definition in its own YAML file, or in a fine-tuning config's `own_tasks.<name>`."""
    try:
        value = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError:
        raise ConfigError(f"own_tasks.{name}: {path} is not a readable file (a task definition is a mapping of its "
                          "keys, or the path of a YAML file holding one).") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"own_tasks.{name}: {path} is not valid YAML ({getattr(err, 'problem', None) or err}).") from None
    if isinstance(value, dict) and name in (value.get("own_tasks") or {}):
        value = value["own_tasks"][name]
    if not isinstance(value, dict):
        raise ConfigError(f"own_tasks.{name}: {path} holds no task definition (a mapping of kind, train, dev, ...).")
    return value


def _check_keys(task: OwnTask, where: str) -> None:
    if task.kind not in KINDS:
        raise ConfigError(f"{where}.kind must be one of {', '.join(KINDS)}, got '{task.kind}'.{nearest(task.kind, KINDS)}")
    if task.truncation not in TRUNCATION_SIDES:
        raise ConfigError(f"{where}.truncation must be one of {', '.join(TRUNCATION_SIDES)}, got "
                          f"'{task.truncation}'.{nearest(task.truncation, TRUNCATION_SIDES)}")
    if task.kind == "token_classification" and task.truncation != "head":
        raise ConfigError(f"{where}.truncation={task.truncation}: token classification keeps a sentence's first "
                          "words (its tags are per word); set truncation: head or split long sentences.")
    for split in ("train", "dev"):
        if not getattr(task, split):
            raise ConfigError(f"{where}.{split} is missing: a file ({', '.join(TABLE_FORMATS)}; CoNLL for "
                              "token_classification), or a split name with `dataset`.")
    allowed = tagging.TAGGING_METRICS if task.kind == "token_classification" else tuple(KIND_METRICS[task.kind])
    for metric in task.metrics or ():
        if metric not in allowed:
            raise ConfigError(f"{where}.metrics: '{metric}' is not a {task.kind} metric.{nearest(metric, allowed)} "
                              f"Metrics: {', '.join(allowed)}.")
        if metric in REPORTED_ONLY:
            raise ConfigError(f"{where}.metrics: {metric} is an error (lower is better), reported for every regression "
                              "task; the score averages metrics where higher is better (pearson, spearman).")
    if task.labels is not None and len(set(task.labels)) != len(task.labels):
        raise ConfigError(f"{where}.labels names a label twice.")


def resolve(task: OwnTask) -> OwnTask:
    """The task with its label set and metrics decided, after every split is read and checked."""
    metrics = list(task.metrics or DEFAULT_METRICS[task.kind])
    files = {split: _identity(task, split) for split in SPLITS if getattr(task, split)}
    if task.kind == "token_classification":
        labels = task.labels or _dataset_classes(task) or tagging.label_names(read_tagged(task, "train"))
        for split in SPLITS:
            if getattr(task, split):
                sentences = read_tagged(task, split)
                if split != "test" or any(s.tags is not None for s in sentences):
                    tagging.check_tags(sentences, labels, Path(_where(task, split)))
        if not tagging.is_iob2(labels) and set(metrics) - {"token_accuracy"}:
            raise UserError(f"own_tasks.{task.name}: tag {tagging.is_iob2(labels, name_offender=True)!r} is not IOB2 "
                            "(O, B-<type>, I-<type>), which entity scores need. Convert the tags (IOB1 and BIOES "
                            "convert), or set metrics: [token_accuracy] for tags that are not entities (e.g. POS).")
    else:
        train_labels = [v for v in read_table(task, "train")[1][task.label] if not _missing(v)]
        labels = None if task.kind == "regression" else (task.labels or _dataset_classes(task) or _label_set(task, train_labels))
        resolved = OwnTask(**{**task.model_dump(), "labels": labels})
        for split in SPLITS:
            if getattr(task, split):
                load_examples(resolved, split)  # raises on a label outside the set, a non-number, ...
    _check_label_count(task, labels, metrics)
    return OwnTask(**{**task.model_dump(), "labels": labels, "metrics": metrics, "files": files})


def _check_label_count(task: OwnTask, labels: list[str] | None, metrics: list[str]) -> None:
    least = {"classification": 2, "multilabel": 1, "token_classification": 2}.get(task.kind, 0)
    if len(labels or ()) < least:
        raise UserError(f"own_tasks.{task.name}: {len(labels or ())} label(s) ({', '.join(labels or ())}) in the training "
                        f"data; a {task.kind} task needs at least {least}.")
    if task.kind == "classification" and "f1" in metrics and len(labels) != 2:
        raise UserError(f"own_tasks.{task.name}: metric f1 is binary (the positive class is the second label, "
                        f"{labels[1]!r}), but the task has {len(labels)} labels; use macro_f1, micro_f1 or weighted_f1.")


def job_definition(task: OwnTask) -> dict[str, Any]:
    """What a job carries of its task (`Job.own_task`): the definition without the hyperparameters it holds itself
    (and without the default truncation, so results from before it existed are still this job's)."""
    definition = {key: value for key, value in task.model_dump().items() if key not in HYPERPARAMETER_KEYS}
    if definition["truncation"] == "head":
        del definition["truncation"]
    return definition


def _identity(task: OwnTask, split: str) -> list[Any] | None:
    """Name, size and modification time of a split's file, so the result cache notices new data."""
    if task.dataset:
        return None
    path = Path(getattr(task, split))
    return [str(path), path.stat().st_size, path.stat().st_mtime_ns] if path.is_file() else None


def _where(task: OwnTask, split: str) -> str:
    value = getattr(task, split)
    return f"{task.dataset} ({value})" if task.dataset else value


def read_table(task: OwnTask, split: str) -> tuple[str, dict[str, list[Any]], list[str]]:
    """(where, {column: values}, each row's name for messages) of a split of a sequence task."""
    where = _where(task, split)
    if task.dataset:
        columns = _hub_columns(task, getattr(task, split))
        rows = [f"row {n}" for n in range(1, len(next(iter(columns.values()), [])) + 1)]
    else:
        columns, rows = _file_columns(Path(getattr(task, split)))
    label = task.label if split != "test" else None
    needed = [task.text, task.text_pair, label, task.id]
    missing = next((c for c in needed if c is not None and c not in columns), None)
    if missing is not None:
        raise UserError(f"{where} has no column '{missing}'.{nearest(missing, list(columns))} Its columns: "
                        f"{', '.join(columns)}. Set own_tasks.{task.name}.text / text_pair / label / id.")
    return where, columns, rows


def _file_columns(path: Path) -> tuple[dict[str, list[Any]], list[str]]:
    if not path.is_file():
        raise UserError(f"data file {path} does not exist.")
    if path.suffix not in TABLE_FORMATS:
        raise UserError(f"{path}: unknown format '{path.suffix}'; use one of {', '.join(TABLE_FORMATS)}.")
    try:
        if path.suffix in (".jsonl", ".json"):
            return _jsonl_columns(path)
        if path.suffix in (".csv", ".tsv"):
            return _delimited_columns(path)
        import pandas

        frame = pandas.read_parquet(path)
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 (byte {err.start}); convert it, e.g. iconv -t UTF-8.") from None
    except (ValueError, OSError) as err:  # pyarrow's errors are ValueErrors and OSErrors
        raise UserError(f"{path} could not be read as parquet: {str(err).splitlines()[0]}") from None
    if frame.empty:
        raise UserError(f"{path} holds no rows.")
    columns = {str(column): [None if _missing(v) else v for v in frame[column].tolist()] for column in frame.columns}
    return columns, [f"row {n}" for n in range(1, len(frame) + 1)]


def _delimited_columns(path: Path) -> tuple[dict[str, list[Any]], list[str]]:
    """CSV (quoted fields may hold commas, quotes and newlines) or TSV (tabs separate, quotes are text), every
    cell as written ("NA" is a word, "007" a label); a row with more or fewer fields than the header is an
    error naming its line, not a shifted row; blank lines are skipped."""
    tsv = path.suffix == ".tsv"
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t" if tsv else ",", quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL)
        header = next(reader, None)
        rows, lines = [], []
        for row in reader:
            if not any(field.strip() for field in row):
                continue
            if len(row) != len(header):
                raise UserError(f"{path}:{reader.line_num}: {len(row)} fields where the header has {len(header)} "
                                f"({', '.join(header)}); quote fields that hold a {'tab' if tsv else 'comma'}.")
            rows.append(row)
            lines.append(f"line {reader.line_num}")
    if not rows:
        raise UserError(f"{path} holds no rows.")
    return {name: [row[i] for row in rows] for i, name in enumerate(header)}, lines


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _jsonl_columns(path: Path) -> tuple[dict[str, list[Any]], list[str]]:
    rows, lines = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").split("\n"), start=1):  # not splitlines():
        if line.strip():  # U+2028 and friends may sit inside a JSON string
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{number}: not a JSON object (JSONL holds one object per line).")
            rows.append(row)
            lines.append(f"line {number}")
    if not rows:
        raise UserError(f"{path} holds no rows.")
    names = list(dict.fromkeys(key for row in rows for key in row))
    return {name: [row.get(name) for row in rows] for name in names}, lines


def _hub_split(task: OwnTask, split: str):
    import datasets

    try:
        return datasets.load_dataset(task.dataset, task.dataset_config, split=split)
    except Exception as err:  # noqa: BLE001  (offline, auth, unknown split alike)
        raise UserError(f"could not load split '{split}' of the dataset {task.dataset} ({err.__class__.__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''}). Offline: write the splits to files and "
                        "name them in train/dev/test.") from None


def _hub_columns(task: OwnTask, split: str) -> dict[str, list[Any]]:
    """A dataset split's columns, class ids turned into their names (ClassLabel features)."""
    data = _hub_split(task, split)
    columns = {}
    for name in data.column_names:
        names = _class_names(data.features[name])
        values = data[name]
        if names is not None:
            values = [[names[i] for i in v] if isinstance(v, list) else names[v] for v in values]
        columns[name] = values
    return columns


def _dataset_classes(task: OwnTask) -> list[str] | None:
    """A dataset's label names, in id order, where its label column is a ClassLabel (or a sequence of them)."""
    return _class_names(_hub_split(task, task.train).features[task.label]) if task.dataset else None


def _class_names(feature) -> list[str] | None:
    feature = getattr(feature, "feature", feature)  # a Sequence of ClassLabel (tags, multi-labels)
    return list(feature.names) if hasattr(feature, "names") else None


def _label_set(task: OwnTask, values: list[Any]) -> list[str]:
    """The training labels, sorted (numerically when they are all integers)."""
    seen = {name for value in values for name in _names(task, value)}
    numeric = all(re.fullmatch(r"-?\d+", name) for name in seen)
    return sorted(seen, key=lambda name: (int(name), name) if numeric else (0, name))


def _names(task: OwnTask, value: Any) -> list[str]:
    """A label cell as label names: one for classification, any number for multilabel."""
    if task.kind != "multilabel":
        return [str(value)]
    if isinstance(value, str):
        return [name.strip() for name in value.split(task.label_separator) if name.strip()]
    if value is None or isinstance(value, (int, float)):  # no labels, or a single one written as a number
        return [] if _missing(value) else [str(value)]
    return [str(name) for name in value]


def load_examples(task: OwnTask, split: str) -> tuple[list[str], Examples]:
    """Example ids and examples of a sequence task's split; a test split without labels gets label 0."""
    where, columns, rows = read_table(task, split)
    for column in (task.text, task.text_pair):
        empty = next((row for row, value in zip(rows, columns.get(column) or ()) if value is None), None)
        if empty is not None:
            raise UserError(f"{where}, {empty}: no {column!r} text; fill it in or drop the row.")
    ids = [str(v) for v in columns[task.id]] if task.id else [str(i) for i in range(len(rows))]
    raw = columns.get(task.label) if split != "test" or task.label in columns else None
    labels = [0.0] * len(rows) if raw is None else [_label(task, value, f"{where}, {row}") for row, value in zip(rows, raw)]
    text_b = [str(v) for v in columns[task.text_pair]] if task.text_pair else None
    return ids, Examples([str(v) for v in columns[task.text]], text_b, labels)


def _label(task: OwnTask, value: Any, where: str) -> Any:
    if task.kind == "regression":
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise UserError(f"{where}: label {value!r} is not a number; a regression task's labels are finite numbers.")
        return number
    names = _names(task, value)
    if task.kind == "classification" and names in ([""], ["None"]):
        raise UserError(f"{where}: no label; fill it in or drop the row.")
    unknown = next((name for name in names if name not in task.labels), None)
    if unknown is not None:
        raise UserError(f"{where}: label {unknown!r} never occurs in the training data (its labels: "
                        f"{', '.join(task.labels)}); fix the row, or list every label in own_tasks.{task.name}.labels.")
    if task.kind == "multilabel":
        return [float(label in names) for label in task.labels]
    return task.labels.index(names[0])


def read_tagged(task: OwnTask, split: str) -> list[tagging.Sentence]:
    """Sentences of a token-classification split: a CoNLL or JSONL file, or a dataset's word and tag lists."""
    if not task.dataset:
        return tagging.read_sentences(Path(getattr(task, split)), tags_required=split != "test")
    _, columns, _ = read_table(task, split)
    tags = columns.get(task.label) or [None] * len(columns[task.text])  # a test split may have none
    return [tagging.Sentence([str(w) for w in words], None if row is None else [str(t) for t in row])
            for words, row in zip(columns[task.text], tags)]
