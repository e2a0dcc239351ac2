"""The adapters a server holds: load a folder under a name, resolve what a request names to a setup, count the
requests in flight per adapter, and unload once none is left.

Every change to the model (loading, unloading, the active setup of a forward) happens under one lock, so a
forward never sees an adapter half-loaded or deleted. A request holds references to the entries it uses from
the moment it is accepted until its last output; ``unload`` removes the name at once (new requests get 404)
and deletes the weights when the last reference is released.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.composition import Average, Fuse, Node, Stack, adapter_names, parse, validate
from ..core.model import adapter_config, adapter_modules, delete_adapter, list_adapters, set_active
from ..core.precision import Precision, apply_precision
from ..formats.detect import folder_kind, load_folder
from ..formats.names import HEAD_FILE, TASK_FILE
from ..formats.tensors import read_tensors
from ..methods.fusion import delete_fusion, list_fusions
from ..util import read_json_object
from .heads import HeadBank

__all__ = ["Entry", "Registry", "Resolved", "ServeError", "read_task_info"]

NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


class ServeError(Exception):
    """A request the server refuses: HTTP ``status``, a message, and the request ``field`` at fault."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


@dataclass
class Entry:
    """One loaded folder, under the name requests use."""

    name: str
    path: Path
    kind: str  # FolderKind value
    setup: Node  # what runs when a request names this entry
    owned: list[str]  # adapters this entry loaded (deleted with it)
    fusions: list[str]  # fusion layers this entry loaded
    task: str | None
    labels: list[str] | None
    has_head: bool
    params: int
    solo: bool = False  # whole-model adapters (prompt / prefix): they change the sequence every row shares
    refs: int = 0
    unloading: bool = False
    config: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """The JSON of ``GET /v1/adapters``."""
        return {
            "name": self.name,
            "kind": self.kind,
            "task": self.task,
            "labels": self.labels,
            "parameters": self.params,
            "setup": str(self.setup),
            "config": self.config,
        }


@dataclass(frozen=True)
class Resolved:
    """What a request's adapter expression came to."""

    text: str
    setup: Node | None  # None: the bare base model
    entries: tuple[str, ...]  # entry names it uses (each holds a reference while the request runs)
    head: str | None  # entry whose task head scores it (classification)
    labels: tuple[str, ...] | None
    solo: bool = False  # runs in forwards of its own (a whole-model adapter cannot share a batch with others)


class Registry:
    """Loaded entries of one base model.

    Args:
        model, tokenizer: the base (already in its serving precision).
        task: the server's task name (entries of other tasks are refused).
        precision: the serving precision (new adapters are stored in it).
        heads: per-entry task heads (classification servers), or None.
        lock: held around every model change and forward.
    """

    def __init__(
        self,
        model: nn.Module,
        task: str,
        precision: Precision,
        heads: HeadBank | None,
        lock: threading.Lock,
        base_name: str = "base",
    ) -> None:
        self.model, self.task, self.precision, self.heads, self.lock = model, task, precision, heads, lock
        self.base_name = base_name
        self.entries: dict[str, Entry] = {}
        self._adapters = list_adapters(model)  # the model's adapters, kept here: walking the modules per request costs
        self._refs_lock = threading.Lock()  # guards refcounts, taken without the model lock
        self._active: Any = None  # the setup the last forward activated (call ``activate`` with the lock held)

    # ---- loading -------------------------------------------------------------------------------
    def load(self, name: str | None, path: str | Path) -> Entry:
        """Load ``path`` (an adaptune or AdapterHub adapter, fusion or setup folder) as entry ``name`` (default:
        the folder's saved name or its run folder's name).

        Raises:
            ServeError: a bad name, a name in use, a task that does not fit this server, a folder that fails to load.
        """
        src = Path(path)
        if not src.is_dir():
            raise ServeError(404, f"{src}: no such adapter folder", "path")
        info = read_task_info(src)
        task = info.get("task")
        if task is not None and task != self.task:
            raise ServeError(400, f"{src}: a {task} adapter; this server runs {self.task}", "path")
        with self.lock:
            entry = self._load_locked(name, src, info)
            self._active = None  # new slots start inactive: the next forward sets its setup everywhere again
        self.entries[entry.name] = entry
        self._adapters = list_adapters(self.model)
        return entry

    def _load_locked(self, name: str | None, src: Path, info: dict[str, Any]) -> Entry:
        adapters_before, fusions_before = set(list_adapters(self.model)), set(list_fusions(self.model))
        try:
            setup = load_folder(self.model, src, activate=False, load_head=False)
        except (ValueError, KeyError, FileNotFoundError, OSError) as err:
            raise ServeError(400, f"{src}: cannot load ({err})", "path") from None
        owned = [a for a in list_adapters(self.model) if a not in adapters_before]
        fusions = [f for f in list_fusions(self.model) if f not in fusions_before]
        entry_name = name or (setup if isinstance(setup, str) else src.name)
        try:
            self._check_new(entry_name, setup, owned, src)
            modules = [m for a in owned for m in adapter_modules(self.model, a).values()]
            solo = any(m.mode == "model" for m in modules)
            if solo and self.heads is None:
                raise ServeError(
                    400,
                    f"{src}: prompt / prefix adapters cannot share decode steps yet (one sequence per batch)",
                    "path",
                )
            labels = info.get("labels")
            entry = Entry(
                name=entry_name,
                path=src,
                kind=folder_kind(src).value,
                setup=setup,
                owned=owned,
                fusions=fusions,
                task=info.get("task", self.task),
                labels=list(labels) if labels else None,
                has_head=(src / HEAD_FILE).is_file() and self.heads is not None,
                params=sum(p.numel() for m in modules for p in m.parameters()),
                config=_config_summary(self.model, owned, fusions),
                solo=solo,
            )
            if entry.has_head:
                assert self.heads is not None
                if not entry.labels:
                    raise ServeError(400, f"{src / TASK_FILE}: a head but no 'labels' list", "path")
                self.heads.add(entry.name, read_tensors(src / HEAD_FILE), str(src / HEAD_FILE))
            self.model.requires_grad_(False)  # nothing trains in a server
            apply_precision(self.model, self.precision)  # the new weights in the serving dtype (heads: HeadBank.add)
        except Exception as err:
            self._delete(owned, fusions)  # all or nothing
            if self.heads is not None:
                self.heads.remove(entry_name)
            if isinstance(err, ServeError):
                raise
            raise ServeError(400, f"{src}: cannot serve ({err})", "path") from None
        return entry

    def _check_new(self, name: str, setup: Any, owned: list[str], src: Path) -> None:
        if not NAME_RE.fullmatch(name):
            raise ServeError(
                400, f"adapter name {name!r}: use letters, digits and '_' (not first), at most 64", "name"
            )
        if name in self.entries or name == self.base_name:
            raise ServeError(409, f"adapter name {name!r} is already in use", "name")
        shared = [a for a in adapter_names(setup) if a not in owned]
        if shared:
            # A fusion reusing adapters another entry loaded would lose them when that entry is unloaded.
            raise ServeError(409, f"{src}: uses adapters {shared} that another loaded entry already holds", "path")

    def activate(self, setup: Any) -> None:
        """``set_active`` unless ``setup`` is what the previous forward set (it walks every module: at one
        decode step per token that showed). Call with ``lock`` held."""
        if setup != self._active or setup is None:
            set_active(self.model, setup)
            self._active = setup

    # ---- resolving -----------------------------------------------------------------------------
    def resolve(self, text: Any, field_name: str = "adapter", allow_base: bool = False) -> Resolved:
        """The setup of a request's ``adapter`` / ``model`` value: an entry name, the base name, or a composition
        of entry names such as ``"Stack(lang, task)"`` or ``"Average(a, b)"``.

        Raises:
            ServeError: 400 for a malformed expression, 404 for an unknown (or unloading) name.
        """
        if not isinstance(text, str) or not text.strip():
            raise ServeError(400, f"'{field_name}' must be a non-empty string naming a loaded adapter", field_name)
        if allow_base and text == self.base_name:
            return Resolved(text, None, (), None, None)
        try:
            node = parse(text)
        except ValueError as err:
            raise ServeError(400, f"'{field_name}': {err}", field_name) from None
        names = adapter_names(node)
        unknown = [n for n in names if n not in self.entries or self.entries[n].unloading]
        if unknown:
            known = sorted(n for n, e in self.entries.items() if not e.unloading)
            raise ServeError(404, f"'{field_name}': unknown adapter {unknown[0]!r}; loaded: {known}", field_name)
        setup = self._expand(node, field_name)
        try:
            validate(setup, self._adapters)
        except (ValueError, KeyError) as err:
            raise ServeError(400, f"'{field_name}': {err}", field_name) from None
        headed = [n for n in names if self.entries[n].has_head]
        head = headed[-1] if headed else None  # the task adapter comes last, e.g. Stack(lang, task)
        labels = self.entries[head].labels if head else None
        solo = any(self.entries[n].solo for n in names)
        return Resolved(text, setup, tuple(names), head, tuple(labels) if labels else None, solo)

    def _expand(self, node: Any, field_name: str) -> Node:
        """Entry names -> their setups (a fusion entry becomes its ``Fuse``)."""
        if isinstance(node, str):
            return self.entries[node].setup
        if isinstance(node, Stack):
            return Stack(*(self._expand(c, field_name) for c in node.children))
        if isinstance(node, Average):
            return Average(*(self._expand(c, field_name) for c in node.children), weights=node.weights)
        if isinstance(node, Fuse):
            raise ServeError(400, f"'{field_name}': name a loaded fusion instead of writing Fuse(...)", field_name)
        raise ServeError(400, f"'{field_name}': unsupported composition {node!r}", field_name)

    # ---- references and unloading --------------------------------------------------------------
    def acquire(self, resolved: Resolved) -> None:
        """Count a request in flight on each entry it uses (refused if one is being unloaded meanwhile)."""
        with self._refs_lock:
            gone = [n for n in resolved.entries if n not in self.entries or self.entries[n].unloading]
            if gone:
                raise ServeError(404, f"adapter {gone[0]!r} was unloaded", "adapter")
            for n in resolved.entries:
                self.entries[n].refs += 1

    def release(self, resolved: Resolved) -> None:
        """The request is done with its entries."""
        with self._refs_lock:
            for n in resolved.entries:
                if n in self.entries:
                    self.entries[n].refs -= 1

    def begin_unload(self, name: str) -> Entry:
        """Stop new requests from using ``name``; ``finish_unload`` deletes it once ``refs`` is 0."""
        with self._refs_lock:
            entry = self.entries.get(name)
            if entry is None or entry.unloading:
                raise ServeError(404, f"no loaded adapter {name!r}", "name")
            users = [
                e.name
                for e in self.entries.values()
                if e is not entry and not set(entry.owned).isdisjoint(adapter_names(e.setup))
            ]
            if users:
                raise ServeError(409, f"adapter {name!r} is used by loaded {users}; unload those first", "name")
            entry.unloading = True
            return entry

    def finish_unload(self, entry: Entry) -> None:
        """Delete the entry's weights (call when its ``refs`` reached 0)."""
        with self.lock:
            self._delete(entry.owned, entry.fusions)
            if self.heads is not None:
                self.heads.remove(entry.name)
            self._adapters = list_adapters(self.model)
        self.entries.pop(entry.name, None)

    def _delete(self, owned: list[str], fusions: list[str]) -> None:
        self.activate(None)  # forwards set their own setup; nothing may still point at these
        for f in fusions:
            delete_fusion(self.model, f)
        for a in owned:
            delete_adapter(self.model, a)

    def names(self) -> list[str]:
        """Entry names requests may use now."""
        return [n for n, e in self.entries.items() if not e.unloading]


def read_task_info(src: Path) -> dict[str, Any]:
    """The ``task.json`` that ``adaptune train`` writes beside an adapter (task, labels, model), or ``{}`` where
    there is none (AdapterHub folders and bare adapters: usable inside compositions, no labels of their own).

    Raises:
        ServeError: the file is not a JSON object (the message names it).
    """
    path = src / TASK_FILE
    if not path.is_file():
        return {}
    try:
        return read_json_object(path)
    except ValueError as err:
        raise ServeError(400, str(err), "path") from None


def _config_summary(model: nn.Module, owned: list[str], fusions: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {a: adapter_config(model, a).to_dict() for a in owned}
    if fusions:
        out["fusions"] = fusions
    return out


def tensor_device(model: nn.Module) -> torch.device:
    """Where the model's weights live (inputs go there)."""
    return next(model.parameters()).device
