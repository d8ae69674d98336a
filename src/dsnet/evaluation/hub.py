"""Models on the Hugging Face Hub: `hf://ORG/REPO[@REVISION][/FILE]`, read through `huggingface_hub`'s cache.

A reference names a repository, optionally a revision (a branch, a tag or a commit; default `main`) and optionally
one file in it (default: the export in the repository's root, `config.json` + `model.safetensors` as
`dsnet export --format safetensors` writes them). Files are downloaded by `huggingface_hub.hf_hub_download` into
its cache (`HF_HUB_CACHE`, `HF_HOME`), so a model is downloaded once and shared with every other Hub library.

Two promises a paper's number needs:

- **The commit is recorded.** The first file resolves the revision to a commit; every other file is then fetched at
  that commit (a branch moved in between cannot mix two versions), and the evaluation report records the
  repository, the revision asked for and the commit used.
- **Offline mode is honoured.** With `HF_HUB_OFFLINE=1` (read when the model is loaded, not when Python started)
  nothing is requested from the network: the files come from the cache, at the commit the cache's `refs/` name for
  a branch, or a clear error says the file is not cached.

Code is never run from the Hub: an export whose network is built by a factory file (`--model-factory`) is refused
from an `hf://` reference; download the repository, read the file, and load the folder.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsnet.errors import CheckpointError, ConfigError

__all__ = ["HUB_PREFIX", "HubReference", "parse_hub_reference", "is_hub_reference", "hub_download",
           "resolve_hub_checkpoint", "EXPORT_CONFIG", "EXPORT_WEIGHTS"]

HUB_PREFIX = "hf://"
EXPORT_CONFIG = "config.json"
EXPORT_WEIGHTS = "model.safetensors"

_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class HubReference:
    """A parsed `hf://ORG/REPO[@REVISION][/FILE]`.

    Attributes:
        repo: "ORG/REPO".
        revision: a branch, tag or commit; None for the repository's default branch (`main`).
        file: a path inside the repository; None for the export in its root.
    """

    repo: str
    revision: str | None = None
    file: str | None = None

    def __str__(self) -> str:
        return (f"{HUB_PREFIX}{self.repo}{'@' + self.revision if self.revision else ''}"
                f"{'/' + self.file if self.file else ''}")


def is_hub_reference(text: object) -> bool:
    """Whether `text` is an `hf://` reference."""
    return str(text).startswith(HUB_PREFIX)


def parse_hub_reference(text: str) -> HubReference:
    """Parses `hf://ORG/REPO[@REVISION][/FILE]` (a revision holding '/', such as refs/pr/1, is written %2F).

    Raises:
        ConfigError: not of that form.
    """
    rest = str(text)[len(HUB_PREFIX):] if is_hub_reference(text) else str(text)
    parts = rest.split("/")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise ConfigError(f"{text!r} is not a Hub reference; write hf://ORG/REPO, hf://ORG/REPO@REVISION or "
                          "hf://ORG/REPO[@REVISION]/FILE")
    name, _, revision = parts[1].partition("@")
    repo = f"{parts[0]}/{name}"
    if not _REPO.match(repo) or "--" in repo or ".." in repo:
        raise ConfigError(f"{text!r}: {repo!r} is not a Hub repository name (ORG/REPO: letters, digits, '-', '_', '.')")
    if "@" in parts[1] and not revision:
        raise ConfigError(f"{text!r}: an empty revision after '@'; write hf://ORG/REPO@REVISION (a branch, tag or "
                          "commit)")
    file = "/".join(parts[2:]) or None
    if file is not None and any(piece in ("", ".", "..") for piece in file.split("/")):
        raise ConfigError(f"{text!r}: {file!r} is not a file path inside the repository")
    return HubReference(repo, revision.replace("%2F", "/") or None, file)


def _offline() -> bool:
    """`HF_HUB_OFFLINE` as it is now (huggingface_hub reads it once, when it is imported)."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE")
    if value is not None:
        return value.strip().upper() in ("1", "ON", "YES", "TRUE")
    return bool(constants.is_offline_mode())


def _cache_dir() -> str | None:
    """The Hub cache as the environment names it now (`HF_HUB_CACHE`, else `HF_HOME`/hub); None: the library's."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return None


def _commit_of(path: Path) -> str | None:
    """The commit of a file in the cache: its snapshot folder's name (`.../snapshots/<commit>/FILE`)."""
    parts = path.parts
    if "snapshots" in parts:
        index = len(parts) - 1 - parts[::-1].index("snapshots")
        if index + 1 < len(parts) and _COMMIT.match(parts[index + 1]):
            return parts[index + 1]
    return None


def hub_download(reference: HubReference, filename: str, *, revision: str | None = None,
                 required: bool = True) -> Path | None:
    """One file of a Hub repository, from the cache or downloaded into it.

    Args:
        reference: the repository (and its revision, unless `revision` is given).
        filename: the path inside the repository.
        revision: overrides the reference's (the resolved commit, for the files after the first).
        required: when False, a file the repository lacks gives None instead of an error.

    Raises:
        CheckpointError: no such repository, revision or file, not in the cache under offline mode, or no network.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = _offline()
    at = revision or reference.revision or "main"
    where = f"{HUB_PREFIX}{reference.repo}@{at}"
    try:
        path = hf_hub_download(reference.repo, filename, revision=at, cache_dir=_cache_dir(),
                               local_files_only=offline, library_name="dsnet")
    except RepositoryNotFoundError:
        raise CheckpointError(f"{where}: no such Hub repository (or it is private: log in with `hf auth login`)") \
            from None
    except RevisionNotFoundError:
        raise CheckpointError(f"{where}: the repository has no revision {at!r}; name a branch, tag or commit") \
            from None
    except LocalEntryNotFoundError:
        if not required:  # (offline, a file the repository lacks looks like one the cache lacks)
            return None
        how = ("HF_HUB_OFFLINE is set" if offline else "the Hub could not be reached")
        raise CheckpointError(f"{where}/{filename} is not in the Hub cache ({_cache_dir() or 'the default cache'}) and "
                              f"{how}; download it once with network access (`hf download {reference.repo}"
                              f"{' --revision ' + at if at != 'main' else ''}`) or point HF_HUB_CACHE at a cache "
                              "that holds it") from None
    except EntryNotFoundError:
        if not required:
            return None
        raise CheckpointError(f"{where} has no file {filename!r}; name the file with hf://{reference.repo}"
                              f"{'@' + at if at != 'main' else ''}/FILE") from None
    except (OfflineModeIsEnabled, HfHubHTTPError, OSError) as error:
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CheckpointError(f"{where}/{filename} could not be downloaded ({detail[:160]}); check the network, or "
                              "set HF_HUB_OFFLINE=1 to use the cache") from None
    return Path(path)


def resolve_hub_checkpoint(text: str) -> tuple[Path, dict[str, Any]]:
    """Downloads what an `hf://` reference names, and says which commit it came from.

    Without a file, the repository's export is fetched (`config.json`, then the weights file and nothing else it
    names) and its snapshot folder returned; with a file, that file (and, for a `.safetensors` file, a `config.json`
    beside it when the repository has one).

    Returns:
        The local path to load (a file, or the export's folder), and the record for the report: reference, the
        same reference pinned to the commit used, repo, revision asked for, commit, files.

    Raises:
        ConfigError: a malformed reference.
        CheckpointError: a missing repository, revision or file (see `hub_download`), or an export that builds its
            network with code.
    """
    reference = parse_hub_reference(text)
    if reference.file is None or Path(reference.file).name == EXPORT_CONFIG:
        folder = str(Path(reference.file).parent) if reference.file else ""
        config_name = f"{folder}/{EXPORT_CONFIG}" if folder not in ("", ".") else EXPORT_CONFIG
        config_path = hub_download(reference, config_name)
        assert config_path is not None
        commit = _commit_of(config_path)
        try:
            spec = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise CheckpointError(f"{reference}: cannot read its {config_name} ({error})") from None
        if not isinstance(spec, dict) or not isinstance(spec.get("weights"), dict) or "file" not in spec["weights"]:
            raise CheckpointError(f"{reference}: {config_name} is not a dsnet export's; name the weights file with "
                                  f"hf://{reference.repo}/FILE (and pass --model and --dataset)")
        if spec.get("factory"):
            raise CheckpointError(f"{reference} builds its network with code ({spec['factory'].get('file')}), which "
                                  f"dsnet does not run from the Hub; download it (`hf download {reference.repo}`), "
                                  "read that file, and pass the folder to --checkpoint")
        prefix = "" if folder in ("", ".") else folder + "/"
        weights_name = prefix + str(spec["weights"]["file"])
        weights_path = hub_download(reference, weights_name, revision=commit)
        assert weights_path is not None
        files, local = [config_name, weights_name], config_path.parent
    else:
        file_path = hub_download(reference, reference.file)
        assert file_path is not None
        commit = _commit_of(file_path)
        files, local = [reference.file], file_path
        if reference.file.endswith(".safetensors"):
            beside = str(Path(reference.file).with_name(EXPORT_CONFIG))
            if hub_download(reference, beside, revision=commit, required=False) is not None:
                files.append(beside)
    pinned = HubReference(reference.repo, commit or reference.revision, reference.file)
    record = {"reference": str(reference), "pinned": str(pinned), "repo": reference.repo,
              "revision": reference.revision or "main", "commit": commit, "files": files}
    return local, record
