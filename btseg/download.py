"""Where a dataset's raw files come from (data.source): the synthetic sample, the user's own
folder, an archive the user already has (data.<dataset>.archive: the unpacked folder or the .zip
as downloaded from the Kaggle website), or the Kaggle archive through kagglehub; the `download`
stage's library.

It reads params (data.source, data.<dataset>, data.sample), so it sits above btseg.config, the
data readers below it."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import zipfile
from pathlib import Path

from tqdm import tqdm

from btseg.config import Params
from btseg.data import kaggle
from btseg.data.registry import DATASETS, OWN_FOLDER_DATASETS
from btseg.errors import PipelineError, one_line
from btseg.fileio import atomic_dir

log = logging.getLogger(__name__)


def fetch_dataset(dataset: str, destination: Path, params: Params) -> None:
    """Fill `destination` with `dataset` in its archive's own layout.

    Everything is built in a sibling temp folder and renamed at the end: a failed or interrupted
    download leaves no `destination` that a later run would trust.
    """
    data = params.data
    if dataset not in data.datasets:
        raise PipelineError(f"--dataset {dataset}: not in params.yaml data.datasets {data.datasets}")
    if data.source == "sample":
        with atomic_dir(destination) as partial:
            write_sample(dataset, partial, params)
        log.info("%s: synthetic sample written to %s", dataset, destination)
        return
    if dataset in OWN_FOLDER_DATASETS:
        # The user's own files are copied, not linked: DVC makes the files it caches read-only,
        # and through a hard link that would change the permissions of the user's originals.
        own = Path(getattr(data, dataset).path)
        if not own.is_dir():
            raise PipelineError(f"params.yaml: data.{dataset}.path: folder {own} not found")
        with atomic_dir(destination) as partial:
            copy_folder(own, partial, f"data.{dataset}.path")
        log.info("%s: %s copied into %s", dataset, own, destination)
        return
    archive = getattr(data, dataset).archive
    if archive:
        with atomic_dir(destination) as partial:
            unpack_archive(Path(archive), partial, f"data.{dataset}.archive")
        log.info("%s: archive %s unpacked into %s", dataset, archive, destination)
        return
    handle = getattr(data, dataset).kaggle_handle
    cached = kaggle.download(handle)
    with atomic_dir(destination) as partial:
        kaggle.place(cached, partial)
    log.info("%s: Kaggle %s placed in %s", dataset, handle, destination)


def write_sample(dataset: str, root: Path, params: Params) -> None:
    """Write the synthetic form of `dataset` into the empty folder `root`, sized by params data.sample
    (the dataset entry's own writer, btseg.data.entry)."""
    data = params.data
    DATASETS[dataset].write_sample(root, getattr(data, dataset), getattr(data.sample, dataset), data.sample.seed)


def unpack_archive(archive: Path, destination: Path, param: str) -> None:
    """Fill the empty folder `destination` with the archive's files: a folder is copied (not linked:
    DVC makes the files it caches read-only, which through a link would reach the originals), a .zip
    is checked whole (CRC of every member) and extracted. The readers then find their layout inside."""
    if archive.is_dir():
        copy_folder(archive, destination, param)
        return
    if not archive.is_file():
        raise PipelineError(f"params.yaml: {param}: {archive} not found; give the unpacked folder or the .zip "
                            "as downloaded, or set it to '' to download from Kaggle")
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = [m for m in bundle.infolist() if not m.is_dir()]
            for member in members:
                target = (destination / member.filename).resolve()
                if not target.is_relative_to(destination.resolve()):
                    raise PipelineError(f"{archive}: member {member.filename!r} would land outside the dataset folder")
            for member in tqdm(members, desc=f"unpack {archive.name}", unit="file", disable=None):
                bundle.extract(member, destination)  # zipfile checks each member's CRC as it reads
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise PipelineError(f"{archive}: not a readable .zip ({one_line(error, 160)}); download it again "
                            f"or give the unpacked folder in {param}") from None


def copy_folder(source: Path, destination: Path, param: str) -> None:
    """Replace the empty folder `destination` with a copy of `source`, links followed (the copy holds
    files, not links). A link that never ends (a cycle of links, or a link to a folder holding it,
    which copytree would follow 40 levels deep) is refused before anything is copied; any other
    failure to copy is one line naming the first path at fault."""
    try:
        loop = _symlink_loop(source)
    except OSError as error:
        raise PipelineError(f"params.yaml: {param}: cannot read {source} ({one_line(error, 160)})") from None
    if loop is not None:
        raise PipelineError(f"{loop}: a symbolic link that leads back to itself or to a folder holding it; "
                            f"remove it from the folder in params.yaml {param}")
    shutil.rmtree(destination)
    try:
        shutil.copytree(source, destination)
    except shutil.Error as error:  # copytree goes on past a failed file and reports them all at the end
        (path, _, why), *others = error.args[0]
        more = f" and {len(others)} more" if others else ""
        raise PipelineError(f"params.yaml: {param}: cannot copy {path} ({one_line(why, 160)}){more}") from None
    except OSError as error:
        raise PipelineError(f"params.yaml: {param}: cannot copy {source} ({one_line(error, 160)})") from None


def _symlink_loop(folder: Path, holders: frozenset[str] = frozenset()) -> Path | None:
    """The first link under `folder` that leads to itself or to a folder holding it, or None.
    Links to folders are followed, as copytree follows them; `holders` are the real paths above."""
    holders = holders | {os.path.realpath(folder)}
    for path in sorted(folder.iterdir()):
        if path.is_symlink():
            try:
                path.stat()
            except OSError as error:
                if error.errno == errno.ELOOP:
                    return path
                continue  # a dangling link: the copy names it
            if os.path.realpath(path) in holders:
                return path
        if path.is_dir():
            found = _symlink_loop(path, holders)
            if found is not None:
                return found
    return None
