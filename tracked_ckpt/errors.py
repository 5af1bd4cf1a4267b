"""The error classes of tracked-ckpt, in one family.

Each derives from `TrackedCkptError`, so one `except TrackedCkptError` catches
every failure of the library's own (a tracker that cannot do what was asked, a
checksum mismatch, a job key held elsewhere, a missing package or class, an
unsupported version); an invalid argument stays a plain `ValueError` or `TypeError`, as in
Keras. Each also keeps the built-in base that says what kind of failure it is
(`RuntimeError`, `ImportError`), so code catching those goes on catching them.

This module is the bottom layer: it imports nothing from the package. Each error
is still importable from the module that raises it (`tracked_ckpt.tracker`,
`tracked_ckpt.resume`, `tracked_ckpt.requirements`, `tracked_ckpt.versions`) and
keeps that module as its `__module__`, so tracebacks and pickles name it as they
always did (`tracked_ckpt.versions.UnsupportedVersionError: ...`).

Example:
    >>> try:
    ...     raise ChecksumError("digits-e0007: downloaded sha256 differs from the one recorded")
    ... except TrackedCkptError as exc:
    ...     print(type(exc).__name__, isinstance(exc, RuntimeError))
    ChecksumError True
"""

from __future__ import annotations


class TrackedCkptError(Exception):
    """The base of every error class of tracked-ckpt: catch it to catch them all.

    Example:
        ```python
        try:
            tracked_ckpt.load_model("digits-classifier")
        except tracked_ckpt.TrackedCkptError as exc:  # checksum, missing package, tracker, ...
            print(exc)
        ```
    """


class TrackerError(TrackedCkptError, RuntimeError):
    """A tracker could not do what was asked; the message says why and what to do."""

    __module__ = "tracked_ckpt.tracker"


class ChecksumError(TrackedCkptError, RuntimeError):
    """A downloaded checkpoint's bytes do not match the sha256 recorded when it was logged.

    Example:
        ```python
        try:
            tracked_ckpt.load_model("digits-classifier")
        except ChecksumError as exc:
            print(exc)
        ```
    """

    __module__ = "tracked_ckpt.tracker"


class JobLockedError(TrackedCkptError, RuntimeError):
    """Another live job holds the job key; the message names it."""

    __module__ = "tracked_ckpt.resume"


class MissingRequirementError(TrackedCkptError, ImportError):
    """A checkpoint's recorded requirements name a package this environment lacks.

    Example:
        >>> from tracked_ckpt.requirements import check_requirements
        >>> try:
        ...     check_requirements(["keras-hub==0.21.1"], "bert-e0003")  # as `tracked_ckpt.load_model` does
        ... except MissingRequirementError as exc:
        ...     print(exc)
        bert-e0003 needs the package 'keras-hub', which is not installed: pip install 'keras-hub==0.21.1'
    """

    __module__ = "tracked_ckpt.requirements"


class MissingCodeError(TrackedCkptError, TypeError):
    """A checkpoint's config names a class or function that neither Keras nor the code logged with it defines.

    The message names the class, its module and both fixes (`custom_objects=`,
    `code_paths=`). It is also the `TypeError` Keras raises for the same failure,
    so code catching that goes on catching it.

    Example:
        ```python
        try:
            tracked_ckpt.load_model("digits-classifier")
        except MissingCodeError as exc:
            print(exc)  # digits-e0007 needs class 'Scale' of module 'my_layers', ...: pass ...
        ```
    """

    __module__ = "tracked_ckpt.logged_code"


class UnknownKeyError(TrackedCkptError, ValueError):
    """A metric (`monitor=`) or schema key (`where=`) that no checkpoint of the scope has.

    The message lists the ones that exist. It is also a `ValueError`, so code
    catching invalid arguments goes on catching it.

    Example:
        ```python
        try:
            tracked_ckpt.promote_best("digits-classifier", monitor="val_los")
        except UnknownKeyError as exc:
            print(exc)  # No checkpoint in run=... has a value for 'val_los': ... have loss, val_loss.
        ```
    """

    __module__ = "tracked_ckpt.registry"


class UnsupportedVersionError(TrackedCkptError, RuntimeError):
    """An installed package is outside the range tracked-ckpt supports (one-line message)."""

    __module__ = "tracked_ckpt.versions"


class ChunkStoreError(ChecksumError):
    """A checkpoint cannot be rebuilt from its chunks: a pack is missing or a chunk is corrupt."""

    __module__ = "tracked_ckpt.packs"


class BlobNotFoundError(TrackedCkptError, FileNotFoundError):
    """The chunk store holds no blob of that name."""

    __module__ = "tracked_ckpt.blobstore"


class CheckpointNotFoundError(TrackedCkptError, LookupError):
    """No logged checkpoint matches what was asked for; the message names the ones that exist.

    Example:
        ```python
        try:
            tracked_ckpt.delete_checkpoint("digits-e0009", run_id=run_id)
        except CheckpointNotFoundError as exc:
            print(exc)  # No checkpoint matches digits-e0009 in run 1a2b: it has digits-e0001, digits-e0002.
        ```
    """

    __module__ = "tracked_ckpt.lookup"


class AmbiguousCheckpointError(TrackedCkptError, LookupError):
    """What was asked for names more than one checkpoint; the message lists them and how to choose."""

    __module__ = "tracked_ckpt.lookup"


class ProtectedCheckpointError(TrackedCkptError, RuntimeError):
    """A registered model version or an alias points at the checkpoint, so it is not deleted unless forced.

    Example:
        ```python
        try:
            tracked_ckpt.delete_checkpoint("digits-e0007", run_id=run_id)
        except ProtectedCheckpointError as exc:
            print(exc)  # digits-e0007 of run 1a2b is held by digits-classifier version 1 (alias 'champion'): ...
        ```
    """

    __module__ = "tracked_ckpt.verbs"
