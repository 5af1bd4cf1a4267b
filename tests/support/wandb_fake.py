"""An in-memory stand-in for the part of `wandb.Api` / `wandb.Artifact` that tracked-ckpt uses.

`FakeServer` holds collections and applies W&B's rules:

* versions of a collection are numbered v0, v1, ... in logging order;
* logging content identical to an existing version (same artifact digest)
  creates no new version, the existing one gets the aliases;
* an alias is unique within a collection: giving it to a version takes it off
  the previous holder; `latest` always names the newest version;
* aliases may not contain "/" or ":";
* a version holding aliases is only deleted with `delete_aliases=True`;
* `link` to `wandb-registry-<registry>/<collection>` makes a linked version in
  the registry's own collection (its own version numbers and aliases, no data
  copied); linking the same source again returns that version; deleting a
  linked version only unlinks it; the model registry takes type "model" only;
* a version fetched by alias is named by that alias (`name`, `qualified_name`:
  `tiny-r1:best`), while `source_*` always name the logged version
  (`team/proj/tiny-r1:v2`), also on a registry link;
* `linked_artifacts` of a source version lists its registry links, each with
  its version index among its aliases (as W&B's own list does);
* a failing call of an `Api` method is a `wandb.errors.CommError`: the fake raises
  what W&B's own code raises inside the call (`RunNotFoundError` for no such run,
  a `ValueError` for no such project, artifact or type, `WandbApiFailedError` for
  a request the server failed) and W&B's own `normalize_exceptions` wraps it, as
  on the real `Api` (so with WANDB_DEBUG set the inner error comes out unwrapped);
* listings (`artifact_collections`, `artifacts`, `Run.logged_artifacts`) and
  `Artifact.linked_artifacts` are lazy as W&B's paginators are: they ask the
  server while being iterated (or read), and fail there with W&B's unwrapped
  errors (`ValueError` for no such project or collection, `WandbApiFailedError`);
* `Api.artifact_exists` answers False for any failed request except a transport
  failure (a timeout, no HTTP response), which it raises, as wandb 0.31 does.
  `test_fake_raises_what_wandb_raises` holds the errors and their messages
  against the real `wandb.Api` on a stub server;
* a file is stored once per collection while its digest (MD5) stays the same across versions
  ("only files that change between two artifact versions incur storage costs"):
  `FakeServer.uploaded_bytes` counts the bytes a sync or log had to send, and
  `downloaded_bytes` those `Artifact.download` / `file` wrote;
* `Api.runs` answers the one filter tracked-ckpt sends, runs by id
  (`{"name": {"$in": [...]}}`: W&B stores a run's id as its `name`, its display
  name as `displayName`); any other filter fails rather than being ignored;
* `Artifact.url` is the version's page in the W&B app, a Registry link's its
  Registry page, as wandb 0.31 forms them;
* `FakeServer.failure` makes every request fail: "http" as a server answering
  HTTP 503 does (`FakeServer.unreachable = True` is the same), "timeout" as a
  request that got no answer in time.

`FakeApi` and `FakeArtifact` expose only members the real `wandb.Api` and
`wandb.Artifact` have, with the same parameter names (checked by
`test_fake_matches_real_wandb_classes`), so code written against the fake runs
against W&B. Test helpers live on `FakeServer`.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import quote

import wandb.errors
from wandb.apis.normalize import normalize_exceptions

try:  # wandb 0.31's service API client, whose failures this fake reproduces
    from wandb.apis.public.api import _is_service_api_transport_error
    from wandb.proto import wandb_api_pb2
    from wandb.sdk.lib.service.service_connection import WandbApiFailedError
except ImportError:  # older wandb (the floor session): its API failures are CommErrors
    _is_service_api_transport_error = None
    wandb_api_pb2 = None
    WandbApiFailedError = None

try:
    from wandb.apis.public import RunNotFoundError
except ImportError:  # wandb before RunNotFoundError: a missing run was a bare ValueError
    RunNotFoundError = ValueError

from support.wandb_records import logged_artifacts, run_display_name, run_summary

REGISTRY_PREFIX = "wandb-registry-"
APP_URL = "https://wandb.ai/"
_SEP = ("/", ":")


@dataclasses.dataclass(eq=False)
class _Version:
    collection: _Collection
    index: int
    files: dict[str, bytes]
    digest: str
    metadata: dict[str, Any]
    source: _Version | None = None  # set on registry links
    run_id: str = ""  # the run that logged it (source versions)
    state: str = "COMMITTED"  # "PENDING" while its files upload

    @property
    def aliases(self) -> list[str]:
        return sorted(a for a, v in self.collection.aliases.items() if v is self)


@dataclasses.dataclass(eq=False)
class _Collection:
    entity: str
    project: str
    name: str
    type: str
    versions: list[_Version] = dataclasses.field(default_factory=list)
    aliases: dict[str, _Version] = dataclasses.field(default_factory=dict)
    stored: set[str] = dataclasses.field(default_factory=set)  # digests of the files W&B holds for it

    def live(self) -> list[_Version]:
        return [v for v in self.versions if v in self._alive]

    def __post_init__(self):
        self._alive: list[_Version] = []

    def set_alias(self, alias: str, version: _Version) -> None:
        if any(sep in alias for sep in _SEP):
            raise ValueError(f"Aliases must not contain any of the following characters: {_SEP}")
        self.aliases[alias] = version

    def add(
        self, files: dict[str, bytes], digest: str, metadata: dict[str, Any], source=None, run_id: str = ""
    ) -> _Version:
        version = _Version(self, len(self.versions), files, digest, metadata, source, run_id)
        self.versions.append(version)
        self._alive.append(version)
        self.set_alias("latest", version)
        return version


class FakeServer:
    """W&B's artifact store, in memory. `api()` gives a `wandb.Api`-like client on it.

    Args:
        entity, project: defaults for paths that leave them out.
        organization: the entity registry collections live under.
    """

    def __init__(self, entity: str = "team", project: str = "proj", organization: str = "org"):
        self.entity = entity
        self.project = project
        self.organization = organization
        self.collections: dict[tuple[str, str, str], _Collection] = {}
        self.runs: set[tuple[str, str, str]] = set()  # (entity, project, run id)
        self.summaries: dict[tuple[str, str, str], dict[str, Any]] = {}  # what runs wrote to `run.summary`
        self.run_names: dict[tuple[str, str, str], str] = {}  # display names (`wandb.init(name=...)`)
        self.configs: dict[tuple[str, str, str], dict[str, Any]] = {}  # runs' `run.config` (set by tests)
        self.failure: str | None = None  # "http" or "timeout": every request fails so
        self.uploaded_bytes = 0  # what logging sent: files the collection did not hold yet
        self.downloaded_bytes = 0  # what downloads wrote

    @property
    def unreachable(self) -> bool:
        """Whether every request fails (as with `failure = "http"`, a server answering HTTP 503)."""
        return self.failure is not None

    @unreachable.setter
    def unreachable(self, value: bool) -> None:
        self.failure = "http" if value else None

    def api(self) -> FakeApi:
        return FakeApi(self)

    def request(self) -> None:
        """One request to the server: raises what wandb-core's API client raises if it fails."""
        if self.failure in ("http", "timeout") and WandbApiFailedError is None:
            raise wandb.errors.CommError(f"W&B does not answer ({self.failure})")  # wandb before 0.31
        if self.failure == "http":
            message = "HTTP 503: service unavailable"
            raise WandbApiFailedError(message, wandb_api_pb2.ApiErrorResponse(message=message, http_status=503))
        if self.failure == "timeout":
            raise WandbApiFailedError(
                "Failed to execute API request: the service process is busy and did not respond in time."
            )
        if self.failure is not None:
            raise ValueError(f"unknown failure {self.failure!r}: use 'http' or 'timeout'")

    # -- writing (what `run.log_artifact` + `wandb sync` do) -----------------------------

    def log(
        self,
        name: str,
        files: dict[str, bytes],
        metadata: dict[str, Any] | None = None,
        aliases: Iterable[str] = (),
        type: str = "model",
        project: str | None = None,
        run_id: str = "",
        run_name: str | None = None,
    ) -> FakeArtifact:
        """Log a version the way the server records `run.log_artifact(...)` by run `run_id` (named `run_name`)."""
        collection = self._collection(self.entity, project or self.project, name, type, create=True)
        if run_id:
            self.runs.add((collection.entity, collection.project, run_id))
            if run_name is not None:
                self.run_names[(collection.entity, collection.project, run_id)] = run_name
        for data in files.values():
            file_digest = _md5_b64(data)
            if file_digest not in collection.stored:
                collection.stored.add(file_digest)
                self.uploaded_bytes += len(data)
        digest = _digest(files)
        version = next((v for v in collection.live() if v.digest == digest), None)
        if version is None:
            version = collection.add(dict(files), digest, dict(metadata or {}), run_id=run_id)
        for alias in ["latest", *aliases]:
            collection.set_alias(alias, version)
        return FakeArtifact(self, version)

    def sync(self, run_dir: str) -> list[FakeArtifact]:
        """Upload an offline run's artifact records, as `wandb sync <run_dir>` would."""
        out = []
        run_id = os.path.basename(run_dir.rstrip(os.sep)).split("-", 3)[3]  # offline-run-<time>-<run id>
        self.summaries[(self.entity, self.project, run_id)] = run_summary(run_dir)
        name = run_display_name(run_dir)
        for art in logged_artifacts(run_dir):
            files = {}
            for f in art.files:
                with open(f.local_path, "rb") as fh:
                    files[f.path] = fh.read()
            out.append(
                self.log(art.name, files, art.metadata, art.aliases, art.type, art.project or None, art.run_id, name)
            )
        return out

    def corrupt(self, path: str) -> None:
        """Flip the stored bytes of a version's files (to test checksum verification)."""
        version = self.resolve(path)
        for name, data in version.files.items():
            version.files[name] = bytes([data[0] ^ 0xFF]) + data[1:]

    # -- reading --------------------------------------------------------------------------

    def resolve(self, path: str) -> _Version:
        """The version an "entity/project/name:version-or-alias" path names (KeyError if none)."""
        collection_path, _, ref = path.partition(":")
        collection = self._collection(*self._split(collection_path), type=None)
        ref = ref or "latest"
        if ref in collection.aliases and collection.aliases[ref] in collection.live():
            return collection.aliases[ref]
        if ref.startswith("v") and ref[1:].isdigit():
            for version in collection.live():
                if version.index == int(ref[1:]):
                    return version
        raise KeyError(f"no version {ref!r} in {collection_path}")

    def has_project(self, entity: str, project: str) -> bool:
        """Whether anything was logged to entity/project (W&B makes a project with its first run)."""
        return any(key[:2] == (entity, project) for key in (*self.collections, *self.runs))

    def collection_of(self, path: str) -> _Collection:
        return self._collection(*self._split(path), type=None)

    def live_versions(self, path: str) -> list[_Version]:
        """The versions of a collection that are not deleted (or unlinked), oldest first."""
        return self.collection_of(path).live()

    def _split(self, path: str) -> tuple[str, str, str]:
        parts = path.split("/")
        if len(parts) == 2 and parts[0].startswith(REGISTRY_PREFIX):
            return self.organization, parts[0], parts[1]
        if len(parts) == 1:
            return self.entity, self.project, parts[0]
        if len(parts) == 2:
            return self.entity, parts[0], parts[1]
        return parts[0], parts[1], parts[2]

    def _collection(self, entity: str, project: str, name: str, type: str | None, create: bool = False):
        key = (entity, project, name)
        if key not in self.collections:
            if not create:
                raise KeyError(f"no collection {'/'.join(key)}")
            self.collections[key] = _Collection(entity, project, name, type or "model")
        return self.collections[key]


class FakeApi:
    """`wandb.Api`, on a `FakeServer`: the methods tracked-ckpt calls, with W&B's signatures."""

    def __init__(self, server: FakeServer):
        self._server = server

    @normalize_exceptions
    def artifact(self, name: str, type: str | None = None):
        server = self._server
        server.request()
        try:
            version = server.resolve(name)
        except KeyError:
            # W&B's `Artifact._from_name`: no such project, or no such version in it.
            collection_path, _, ref = name.partition(":")
            entity, project, collection = server._split(collection_path)
            if not server.has_project(entity, project):
                raise ValueError(f"project {project!r} not found under entity {entity!r}") from None
            raise ValueError(
                f"artifact membership {collection + ':' + (ref or 'latest')!r} not found in {entity + '/' + project!r}"
            ) from None
        if type is not None and version.collection.type != type:
            raise ValueError(f"type {type!r} specified but this artifact is of type {version.collection.type!r}")
        ref = name.partition(":")[2] or "latest"
        return FakeArtifact(self._server, version, ref=ref)

    def artifact_exists(self, name: str, type: str | None = None) -> bool:
        try:
            self.artifact(name, type)
        except wandb.errors.CommError as exc:
            # wandb 0.31: only a transport failure is raised; any other error answers False.
            if _is_service_api_transport_error is not None and _is_service_api_transport_error(exc.exc):
                raise
            return False
        return True

    def artifacts(
        self,
        type_name: str,
        name: str,
        order: str | None = None,
        per_page: int = 50,
        tags: list[str] | None = None,
        start: str | None = None,
    ) -> _Listing:
        """Versions of a collection, newest first (as W&B lists them), read while iterated."""

        def versions() -> list[FakeArtifact]:
            try:
                collection = self._server.collection_of(name)
            except KeyError as exc:
                raise ValueError("Unable to parse 'Artifacts' response data") from exc
            if collection.type != type_name:
                return []
            return [FakeArtifact(self._server, v) for v in reversed(collection.live())]

        return _Listing(self._server, versions)

    def artifact_collections(
        self,
        project_name: str,
        type_name: str,
        order: str | None = None,
        per_page: int = 50,
        start: str | None = None,
    ) -> _Listing:
        """The collections of a type in a project ("entity/project" or "project"), read while iterated."""
        server = self._server
        entity, _, project = project_name.rpartition("/")
        entity = entity or (server.organization if project.startswith(REGISTRY_PREFIX) else server.entity)

        def collections() -> list[FakeCollection]:
            found = [
                FakeCollection(c)
                for (e, p, _), c in server.collections.items()
                if (e, p) == (entity, project) and c.type == type_name and c.live()
            ]
            if not found:
                # W&B: no such project or no collection of that type -> the listing fails to parse.
                raise ValueError("Unable to parse 'ArtifactCollections' response data")
            return found

        return _Listing(server, collections)

    def runs(
        self,
        path: str | None = None,
        filters: dict[str, Any] | None = None,
        order: str = "+created_at",
        per_page: int = 50,
        include_sweeps: bool = False,
        lazy: bool = True,
    ) -> _Listing:
        """The runs of a project ("entity/project" or "project") by id, read while iterated."""
        server = self._server
        entity, _, project = (path or server.project).rpartition("/")
        entity = entity or server.entity
        by_id = filters is not None and set(filters) == {"name"} and set(filters["name"]) == {"$in"}
        if filters is not None and not by_id:
            raise ValueError(f"the fake answers only filters={{'name': {{'$in': [run ids]}}}}, not {filters!r}")
        wanted = None if filters is None else set(filters["name"]["$in"])

        def runs() -> list[FakeRun]:
            found = sorted(r for e, p, r in server.runs if (e, p) == (entity, project))
            return [FakeRun(server, entity, project, r) for r in found if wanted is None or r in wanted]

        return _Listing(server, runs)

    def flush(self):
        """W&B's Api caches runs; the fake reads the server every time, so there is nothing to drop."""

    @normalize_exceptions
    def run(self, path: str = ""):
        """A run by "entity/project/run_id" (or "project/run_id")."""
        server = self._server
        parts = path.split("/")
        if len(parts) == 3:
            entity, project, run_id = parts
        elif len(parts) == 2:
            entity, (project, run_id) = server.entity, parts
        else:
            entity, project, run_id = server.entity, server.project, path
        server.request()
        if (entity, project, run_id) not in server.runs:
            raise RunNotFoundError(f"Could not find run <Run {entity}/{project}/{run_id} (not found)>")
        return FakeRun(server, entity, project, run_id)


class FakeRun:
    """`wandb.apis.public.Run`: what tracked-ckpt reads from a run."""

    def __init__(self, server: FakeServer, entity: str, project: str, run_id: str):
        self._server = server
        self._entity = entity
        self._project = project
        self._id = run_id

    @property
    def id(self) -> str:
        return self._id

    @property
    def entity(self) -> str:
        return self._entity

    @property
    def name(self) -> str | None:
        """The run's display name (W&B: None when it has none)."""
        return self._server.run_names.get((self._entity, self._project, self._id))

    @property
    def summary(self) -> dict[str, Any]:
        """A copy of what the run last wrote to its summary (read-only here, as tracked-ckpt uses it)."""
        return dict(self._server.summaries.get((self._entity, self._project, self._id), {}))

    @property
    def config(self) -> dict[str, Any]:
        """A copy of the run's config (its hyperparameters), as W&B's public `Run.config` gives it."""
        return dict(self._server.configs.get((self._entity, self._project, self._id), {}))

    def logged_artifacts(self, per_page: int = 100) -> _Listing:
        """Every version this run logged (never registry links), in logging order, read while iterated."""
        return _Listing(
            self._server,
            lambda: [
                FakeArtifact(self._server, v)
                for (e, p, _), c in self._server.collections.items()
                if (e, p) == (self._entity, self._project)
                for v in c.live()
                if v.run_id == self._id and v.source is None
            ],
        )


class _Listing:
    """W&B's paginators: nothing is asked until the first item is wanted; errors come out unwrapped then."""

    def __init__(self, server: FakeServer, read: Callable[[], list[Any]]):
        self._server = server
        self._read = read
        self._items: Iterator[Any] | None = None

    def __iter__(self) -> _Listing:
        return self

    def __next__(self) -> Any:
        if self._items is None:
            self._server.request()
            self._items = iter(self._read())
        return next(self._items)


class FakeCollection:
    """`wandb.apis.public.ArtifactCollection`: a collection's identity."""

    def __init__(self, collection: _Collection):
        self._collection = collection

    @property
    def name(self) -> str:
        return self._collection.name

    @property
    def type(self) -> str:
        return self._collection.type

    @property
    def entity(self) -> str:
        return self._collection.entity

    @property
    def project(self) -> str:
        return self._collection.project


class FakeArtifact:
    """A logged `wandb.Artifact` version: a view on the server, edited through `save()`."""

    def __init__(self, server: FakeServer, version: _Version, ref: str | None = None, aliases: list[str] | None = None):
        self._server = server
        self._version = version
        self._ref = ref if ref is not None else f"v{version.index}"  # how it was fetched
        self._aliases = list(version.aliases if aliases is None else aliases)
        self._saved_aliases = list(self._aliases)
        self._metadata = dict(self._source.metadata)

    @property
    def _source(self) -> _Version:
        return self._version.source or self._version

    @property
    def name(self) -> str:
        return f"{self._version.collection.name}:{self._ref}"

    @property
    def version(self) -> str:
        return f"v{self._version.index}"

    @property
    def state(self) -> str:
        return self._version.state

    @property
    def type(self) -> str:
        return self._version.collection.type

    @property
    def entity(self) -> str:
        return self._version.collection.entity

    @property
    def project(self) -> str:
        return self._version.collection.project

    @property
    def qualified_name(self) -> str:
        return f"{self.entity}/{self.project}/{self.name}"

    @property
    def digest(self) -> str:
        return self._version.digest

    @property
    def source_entity(self) -> str:
        return self._source.collection.entity

    @property
    def source_project(self) -> str:
        return self._source.collection.project

    @property
    def source_name(self) -> str:
        return f"{self._source.collection.name}:v{self._source.index}"

    @property
    def source_qualified_name(self) -> str:
        return f"{self.source_entity}/{self.source_project}/{self.source_name}"

    @property
    def source_version(self) -> str:
        return f"v{self._source.index}"

    @property
    def is_link(self) -> bool:
        return self._version.source is not None

    @property
    def url(self) -> str:
        """The version's page in the W&B app; a Registry link's is its Registry page (as wandb 0.31 forms them)."""
        version, collection = self._version, self._version.collection
        if self.is_link:
            self._server.request()  # W&B asks for the entity's organization
            selection = quote(f"{collection.entity}/{collection.project}/{collection.name}", safe="")
            registry = collection.project[len(REGISTRY_PREFIX) :]
            return (
                f"{APP_URL}orgs/{self._server.organization}/registry/{registry}?selectionPath={selection}"
                f"&view=membership&version=v{version.index}"
            )
        return (
            f"{APP_URL}{collection.entity}/{collection.project}/artifacts/{quote(collection.type)}/"
            f"{quote(collection.name)}/v{version.index}"
        )

    @property
    def linked_artifacts(self) -> list[FakeArtifact]:
        self._server.request()  # W&B fetches them on first read, unwrapped errors and all
        if self.is_link:
            return []
        return [
            # W&B's list puts the link's version index among its aliases.
            FakeArtifact(self._server, v, aliases=[*v.aliases, f"v{v.index}"])
            for c in self._server.collections.values()
            if c.project.startswith(REGISTRY_PREFIX)
            for v in c.live()
            if v.source is self._version
        ]

    @property
    def aliases(self) -> list[str]:
        return self._aliases

    @aliases.setter
    def aliases(self, aliases: list[str]) -> None:
        if any(sep in a for a in aliases for sep in _SEP):
            raise ValueError(f"Aliases must not contain any of the following characters: {_SEP}")
        self._aliases = list(aliases)

    @property
    def metadata(self) -> dict[str, Any]:
        return self._metadata

    def save(self, project: str | None = None, settings: Any = None) -> None:
        # W&B sends only the changes: aliases added and removed since the last save.
        collection = self._version.collection
        for alias in set(self._saved_aliases) - set(self._aliases):
            if collection.aliases.get(alias) is self._version:
                del collection.aliases[alias]
        for alias in set(self._aliases) - set(self._saved_aliases):
            collection.set_alias(alias, self._version)
        self._source.metadata = dict(self._metadata)
        self._aliases = self._version.aliases
        self._saved_aliases = list(self._aliases)

    def delete(self, delete_aliases: bool = False) -> None:
        version = self._version
        collection = version.collection
        if version.source is None and version.aliases and not delete_aliases:
            raise wandb.errors.CommError(
                f"cannot delete {self.qualified_name}: it has aliases {version.aliases}; pass delete_aliases=True"
            )
        for alias in version.aliases:
            del collection.aliases[alias]
        collection._alive.remove(version)
        if collection.live() and "latest" not in collection.aliases:
            collection.set_alias("latest", collection.live()[-1])

    def link(self, target_path: str, aliases: Iterable[str] | None = None) -> FakeArtifact:
        project, _, name = target_path.partition("/")
        if not project.startswith(REGISTRY_PREFIX) or not name or "/" in name:
            raise ValueError(f"target_path {target_path!r} is not wandb-registry-<registry>/<collection>")
        if project == REGISTRY_PREFIX + "model" and self.type != "model":
            raise ValueError(f"the model registry only accepts type 'model', not {self.type!r}")
        server = self._server
        collection = server._collection(server.organization, project, name, self.type, create=True)
        source = self._source
        linked = next((v for v in collection.live() if v.source is source), None)
        if linked is None:
            linked = collection.add(source.files, source.digest, source.metadata, source=source)
        for alias in aliases or ():
            collection.set_alias(alias, linked)
        return FakeArtifact(server, linked)

    def file(self, root: str | None = None) -> str:
        files = self._version.files
        if len(files) > 1:
            raise ValueError("This artifact contains more than one file, call `.download()`")
        ((name, data),) = files.items()
        return self._write(root, name, data)

    def download(
        self,
        root: str | None = None,
        allow_missing_references: bool = False,
        skip_cache: bool | None = None,
        path_prefix: str | None = None,
        multipart: bool | None = None,
    ) -> str:
        root = root or os.path.join(".", "artifacts", self.name)
        for name, data in self._version.files.items():
            if path_prefix is None or name.startswith(str(path_prefix)):
                self._write(root, name, data)
        return root

    def _write(self, root: str | None, name: str, data: bytes) -> str:
        root = root or os.path.join(".", "artifacts", self.name)
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        self._server.downloaded_bytes += len(data)
        return path


def _md5_b64(data: bytes) -> str:
    """A file's digest as W&B's manifests hold it: base64 of its MD5."""
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def _digest(files: dict[str, bytes]) -> str:
    """W&B's artifact digest idea: a hash over (name, content md5) of every file."""
    entries = {name: _md5_b64(data) for name, data in files.items()}
    return hashlib.md5(json.dumps(sorted(entries.items())).encode()).hexdigest()
