"""The checkpoint record schema, names and metric cleaning."""

from __future__ import annotations

import dataclasses
import decimal
import math
import re

import numpy as np
import pytest

from tracked_ckpt.record import (
    FORMATS,
    SCHEMA_KEYS,
    TAG_PREFIX,
    CheckpointRecord,
    checkpoint_name,
    clean_metrics,
    file_format,
    sanitize_name,
    split_checkpoint_name,
    validate_name,
)

SHA = "ab" * 32


def make_record(**overrides) -> CheckpointRecord:
    fields = {
        "name": "digits-e0003",
        "epoch": 3,
        "step": 120,
        "monitor": "val_loss",
        "mode": "min",
        "is_best": True,
        "sha256": SHA,
        "size_bytes": 123_456,
        "format": "keras",
        "filepath": "/ckpt/digits-e0003.keras",
        "keras_version": "3.10.0",
        "backend": "tensorflow",
        "requirements": ("keras-hub==0.21.1", "tinylayers==0.1.0"),
        "value": 0.1 + 0.2,
        "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "git_branch": "main",
        "git_dirty": False,
        "git_remote": "https://github.com/org/repo.git",
        "metrics": {"loss": 0.5, "val_loss": 0.1 + 0.2},
    }
    fields.update(overrides)
    return CheckpointRecord(**fields)


def is_ordered_subset(keys, schema) -> bool:
    positions = [schema.index(k) for k in keys]  # raises ValueError for unknown keys
    return positions == sorted(positions)


# -- schema ---------------------------------------------------------------------------------


def test_schema_keys_are_unique_and_record_fields():
    assert len(set(SCHEMA_KEYS)) == len(SCHEMA_KEYS)
    field_names = {f.name for f in dataclasses.fields(CheckpointRecord)}
    assert set(SCHEMA_KEYS) <= field_names
    assert TAG_PREFIX == "tracked_ckpt."
    assert FORMATS == ("keras", "h5", "weights.h5")


#: Keys only some checkpoints have: a batch-level save's batch, a preemption save's flag.
ONLY_SOME = ("batch", "preempted", "storage")
EVERY_EPOCH_SAVE_KEY = [key for key in SCHEMA_KEYS if key not in ONLY_SOME]


def test_metadata_full_record_has_every_key_in_order():
    record = make_record()
    meta = record.metadata()
    assert list(meta) == EVERY_EPOCH_SAVE_KEY
    assert meta["epoch"] == 3 and meta["step"] == 120
    assert meta["value"] == 0.1 + 0.2
    assert meta["is_best"] is True
    assert meta["git_dirty"] is False
    # Not part of the schema.
    for key in ("name", "metrics", "batch", "preempted", "storage"):
        assert key not in meta


def test_a_preempted_batch_save_reads_back_whole():
    record = make_record(batch=45, preempted=True, storage="incremental")
    meta = record.metadata()
    assert list(meta) == list(SCHEMA_KEYS)
    assert meta["batch"] == 45 and meta["preempted"] is True
    for stored in (meta, record.string_metadata()):
        back = CheckpointRecord.from_metadata(stored)
        assert (back.batch, back.preempted) == (45, True)
    assert CheckpointRecord.from_metadata(make_record().metadata()).preempted is False


def test_storage_is_stored_only_when_incremental():
    assert "storage" not in make_record().metadata()
    assert CheckpointRecord.from_metadata(make_record().metadata()).storage == "full"
    incremental = make_record(storage="incremental")
    assert incremental.metadata()["storage"] == "incremental"
    assert CheckpointRecord.from_metadata(incremental.string_metadata()).storage == "incremental"


def test_metadata_omits_none_values_and_keeps_falsy_ones():
    record = make_record(
        value=None, git_commit=None, git_branch=None, git_dirty=None, git_remote=None, requirements=None
    )
    meta = record.metadata()
    assert is_ordered_subset(list(meta), SCHEMA_KEYS)
    assert set(SCHEMA_KEYS) - set(meta) == {
        "value",
        "git_commit",
        "git_branch",
        "git_dirty",
        "git_remote",
        "requirements",
        *ONLY_SOME,
    }
    assert "requirements" not in make_record(requirements=()).metadata()  # none beyond Keras: left out
    assert None not in meta.values()

    falsy = make_record(value=0.0, is_best=False, git_dirty=False, size_bytes=0, epoch=0, step=0)
    meta = falsy.metadata()
    assert meta["value"] == 0.0
    assert meta["is_best"] is False
    assert meta["git_dirty"] is False
    assert meta["size_bytes"] == 0
    assert list(meta) == EVERY_EPOCH_SAVE_KEY


def test_metadata_values_are_plain_types():
    for key, value in make_record().metadata().items():
        if key == "requirements":
            assert value == ["keras-hub==0.21.1", "tinylayers==0.1.0"]  # a list of strings (W&B keeps it typed)
        else:
            assert type(value) in (str, int, float, bool)


def test_requirements_as_one_string_and_back():
    record = make_record()
    assert record.string_metadata()["requirements"] == "keras-hub==0.21.1,tinylayers==0.1.0"
    for meta in (record.metadata(), record.string_metadata()):
        assert CheckpointRecord.from_metadata(meta).requirements == ("keras-hub==0.21.1", "tinylayers==0.1.0")
    # The spool's JSON gives a list back: the record keeps a tuple.
    assert dataclasses.replace(record, requirements=["a==1"], code_paths=["/x/m.py"]).requirements == ("a==1",)


def test_string_metadata_formats():
    meta = make_record(is_best=True, git_dirty=False).string_metadata()
    assert list(meta) == EVERY_EPOCH_SAVE_KEY
    assert all(type(v) is str for v in meta.values())
    assert meta["is_best"] == "true"
    assert meta["git_dirty"] == "false"
    assert meta["epoch"] == "3"
    assert meta["size_bytes"] == "123456"
    assert meta["value"] == repr(0.1 + 0.2) == "0.30000000000000004"

    meta = make_record(is_best=False, git_dirty=True).string_metadata()
    assert meta["is_best"] == "false"
    assert meta["git_dirty"] == "true"


@pytest.mark.parametrize(
    "value",
    [0.1 + 0.2, 1 / 3, 1e-310, 5e-324, 1.7976931348623157e308, -0.0, 123456789.12345679, 2.0**-40],
)
def test_float_value_round_trips_exactly(value):
    record = make_record(value=value)
    back = CheckpointRecord.from_metadata(record.string_metadata(), name=record.name)
    assert back.value == value
    assert math.copysign(1.0, back.value) == math.copysign(1.0, value)
    assert type(back.value) is float


def test_numpy_float_value_round_trips():
    # np.float64 is a float subclass; its repr under NumPy 2 is 'np.float64(...)'.
    record = make_record(value=np.float64(0.1 + 0.2))
    meta = record.string_metadata()
    assert meta["value"] == "0.30000000000000004"
    assert CheckpointRecord.from_metadata(meta).value == 0.1 + 0.2


@pytest.mark.parametrize("batch", [None, 20])
def test_round_trip_through_string_metadata(batch):
    record = make_record(batch=batch, name=checkpoint_name("digits", 3, batch))
    back = CheckpointRecord.from_metadata(record.string_metadata(), name=record.name, metrics=record.metrics)
    assert back.metadata() == record.metadata()
    assert back.string_metadata() == record.string_metadata()
    assert back.key == record.key
    assert back.name == record.name
    assert back.metrics == record.metrics
    if batch is None:
        assert back == record


def test_round_trip_through_plain_metadata():
    record = make_record()
    back = CheckpointRecord.from_metadata(record.metadata(), name=record.name, metrics=record.metrics)
    assert back == record


def test_round_trip_with_unknown_values():
    record = make_record(
        value=None, is_best=False, git_commit=None, git_branch=None, git_dirty=None, git_remote=None, requirements=None
    )
    for meta in (record.metadata(), record.string_metadata()):
        back = CheckpointRecord.from_metadata(meta, name=record.name, metrics=record.metrics)
        assert back == record
        assert back.value is None and back.git_dirty is None and back.git_commit is None


def test_from_metadata_reads_empty_strings_as_unknown():
    meta = make_record().string_metadata()
    meta.update(value="", git_dirty="", git_commit="", git_branch="", git_remote="")
    back = CheckpointRecord.from_metadata(meta)
    assert back.value is None
    assert back.git_dirty is None
    assert back.git_commit is None and back.git_branch is None and back.git_remote is None


@pytest.mark.parametrize(
    "text, expected",
    [("true", True), ("True", True), (" TRUE ", True), ("false", False), ("False", False), ("0", False)],
)
def test_from_metadata_booleans(text, expected):
    meta = make_record().string_metadata()
    meta["is_best"] = text
    meta["git_dirty"] = text
    back = CheckpointRecord.from_metadata(meta)
    assert back.is_best is expected
    assert back.git_dirty is expected


def test_from_metadata_ignores_unknown_keys_and_defaults_name_and_metrics():
    meta = {**make_record().string_metadata(), "some_future_key": "x"}
    back = CheckpointRecord.from_metadata(meta)
    assert back.name == ""
    assert back.metrics == {}


def test_from_metadata_minimal():
    back = CheckpointRecord.from_metadata({"epoch": "1", "step": "10", "sha256": SHA})
    assert (back.epoch, back.step, back.sha256) == (1, 10, SHA)
    assert back.is_best is False
    assert back.value is None
    assert back.size_bytes == 0


@pytest.mark.parametrize("missing", [["epoch"], ["step"], ["sha256"], ["epoch", "sha256"], ["epoch", "step", "sha256"]])
def test_from_metadata_missing_required_keys(missing):
    meta = make_record().string_metadata()
    for key in missing:
        del meta[key]
    with pytest.raises(ValueError) as excinfo:
        CheckpointRecord.from_metadata(meta)
    message = str(excinfo.value)
    assert "Not a tracked-ckpt checkpoint" in message
    for key in missing:
        assert key in message
    for key in {"epoch", "step", "sha256"} - set(missing):
        assert repr(key) not in message


def test_from_metadata_empty_mapping():
    with pytest.raises(ValueError, match=r"lacks \['epoch', 'step', 'sha256'\]"):
        CheckpointRecord.from_metadata({})


def test_record_is_frozen():
    record = make_record()
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.epoch = 4  # type: ignore[misc]


def test_key_identifies_epoch_step_and_content():
    record = make_record()
    assert record.key == f"e3-s120-{SHA[:16]}"
    assert make_record(step=121).key != record.key
    assert make_record(sha256="cd" * 32).key != record.key
    assert make_record(name="other", filepath="/elsewhere.keras").key == record.key


# -- file formats ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, expected",
    [
        ("model.keras", "keras"),
        ("/ckpt/run.1/model-e0003.keras", "keras"),
        ("model.h5", "h5"),
        ("model.weights.h5", "weights.h5"),
        ("/ckpt/dir.weights.h5/model-e0001.weights.h5", "weights.h5"),
        ("/ckpt/x.weights.h5/model.h5", "h5"),
    ],
)
def test_file_format(path, expected):
    assert file_format(path) == expected
    assert expected in FORMATS


@pytest.mark.parametrize(
    "path",
    [
        "model",
        "model.pb",
        "model.tf",
        "model.hdf5",
        "model.weights",
        "model.keras.bak",
        "model.h5.tmp",
        "",
        "model.KERAS",
    ],
)
def test_file_format_rejects_other_extensions(path):
    with pytest.raises(ValueError) as excinfo:
        file_format(path)
    message = str(excinfo.value)
    assert repr(path) in message
    assert "'.keras'" in message
    assert "'.weights.h5'" in message
    assert "save_weights_only=True" in message


# -- names ----------------------------------------------------------------------------------


SUGGESTION_RE = re.compile(r"name='([^']*)'")


@pytest.mark.parametrize(
    "name",
    [
        "org/model",
        "model:v1",
        "model.v1",
        "100%",
        'my"model',
        "my'model",
        "with space",
        "-leading-dash",
        "_leading_underscore",
        "",
        "model\n",
        "tab\tname",
        "café",
        "x" * 201,
    ],
)
def test_validate_name_rejects_with_a_valid_suggestion(name):
    with pytest.raises(ValueError) as excinfo:
        validate_name(name)
    message = str(excinfo.value)
    assert "Invalid checkpoint name" in message
    found = SUGGESTION_RE.search(message)
    assert found, message
    suggestion = found.group(1)
    assert validate_name(suggestion) == suggestion


@pytest.mark.parametrize("name", [None, 3, b"model"])
def test_validate_name_rejects_non_strings(name):
    with pytest.raises(ValueError, match="Invalid checkpoint name"):
        validate_name(name)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["m", "0", "digits", "Model_v2-final", "a" * 200, "9lives"])
def test_validate_name_accepts(name):
    assert validate_name(name) == name


TRICKY = [
    "",
    "   ",
    "-",
    "---___",
    "-leading-dash",
    "_underscore",
    "org/team/model:v1.2",
    "100% 'quoted' \"name\"",
    "modèle-économique",
    "模型",
    "🚀rocket🚀",
    "a.b.c",
    "x" * 500,
    "-" * 300 + "tail",
    "\n\t",
    "model\n",
    "sequential_1",
    "Ünïcödé_",
]


@pytest.mark.parametrize("name", TRICKY)
def test_sanitize_name_output_always_validates(name):
    cleaned = sanitize_name(name)
    assert validate_name(cleaned) == cleaned
    assert sanitize_name(cleaned) == cleaned  # idempotent
    # Leaves room for the longest epoch/batch suffix.
    full = checkpoint_name(cleaned, 9999, 999_999)
    assert validate_name(full) == full


def test_sanitize_name_examples():
    assert sanitize_name("sequential_1") == "sequential_1"
    assert sanitize_name("org/model:v1.2") == "org-model-v1-2"
    assert sanitize_name("") == "model"
    assert sanitize_name("模型") == "model"
    assert sanitize_name("-x-") == "x"
    assert len(sanitize_name("y" * 500)) <= 180


# -- checkpoint names -----------------------------------------------------------------------


@pytest.mark.parametrize("base, epoch, batch", [("m", 3, None), ("digits-e0001", 12, 40), ("a_b-c", 10000, 1_000_000)])
def test_split_checkpoint_name_inverts_checkpoint_name(base, epoch, batch):
    assert split_checkpoint_name(checkpoint_name(base, epoch, batch)) == (base, epoch, batch)


def test_split_checkpoint_name_without_a_suffix():
    assert split_checkpoint_name("digits") == ("digits", None, None)
    assert split_checkpoint_name("digits-e12") == ("digits-e12", None, None)  # fewer than 4 digits: not ours


def test_checkpoint_name_formats():
    assert checkpoint_name("m", 3, None) == "m-e0003"
    assert checkpoint_name("m", 3, 20) == "m-e0003-b000020"
    assert checkpoint_name("digits", 12345, None) == "digits-e12345"
    assert checkpoint_name("digits", 1, 1_234_567) == "digits-e0001-b1234567"
    assert checkpoint_name("m", 0, 0) == "m-e0000-b000000"


# -- metrics --------------------------------------------------------------------------------


def test_clean_metrics_drops_non_finite_and_non_numeric():
    logs = {
        "loss": 0.25,
        "acc": 1,
        "nan": float("nan"),
        "inf": float("inf"),
        "ninf": -math.inf,
        "np_nan": np.float32("nan"),
        "none": None,
        "text": "abc",
        "list": [1.0, 2.0],
        "vector": np.array([1.0, 2.0]),
        "dict": {"a": 1},
        "complex": 1 + 2j,
        "obj": object(),
    }
    assert clean_metrics(logs) == {"loss": 0.25, "acc": 1.0}


def test_clean_metrics_converts_numpy_scalars_to_float():
    logs = {
        "f32": np.float32(0.5),
        "f64": np.float64(0.1 + 0.2),
        "f16": np.float16(2.0),
        "i64": np.int64(7),
        "u8": np.uint8(3),
        "zero_d": np.array(1.5),
        "dec": decimal.Decimal("0.75"),
    }
    out = clean_metrics(logs)
    assert out == {"f32": 0.5, "f64": 0.1 + 0.2, "f16": 2.0, "i64": 7.0, "u8": 3.0, "zero_d": 1.5, "dec": 0.75}
    assert all(type(v) is float for v in out.values())


def test_clean_metrics_converts_keras_tensor_scalars():
    keras = pytest.importorskip("keras")
    out = clean_metrics({"loss": keras.ops.convert_to_tensor(0.5), "bad": keras.ops.convert_to_tensor(float("nan"))})
    assert out == {"loss": 0.5}
    assert type(out["loss"]) is float


def test_clean_metrics_empty_and_none():
    assert clean_metrics(None) == {}
    assert clean_metrics({}) == {}


def test_clean_metrics_stringifies_keys_and_does_not_mutate_input():
    logs = {1: 2.0, "loss": float("nan")}
    assert clean_metrics(logs) == {"1": 2.0}
    assert set(logs) == {1, "loss"}
