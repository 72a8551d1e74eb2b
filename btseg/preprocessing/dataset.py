"""Raw archive layout -> per-split slice arrays: the `preprocess` stage's library.

Cases (patients) are read in parallel worker processes (preprocess.workers), each reduced to its kept, normalised,
fitted slices, and streamed to disk; memory holds a few cases at a time whatever the dataset's
size. The split is decided once every case is known (stratified by tumor presence), then the
rows are copied, case by case, into the split folders.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import zlib
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from btseg.config import Params, PreprocessParams, available_channels, targets
from btseg.data import layouts
from btseg.data.base import CaseRef
from btseg.data.registry import DATASETS, OWN_FOLDER_DATASETS, VOLUME_DATASETS
from btseg.errors import PipelineError
from btseg.preprocessing.image import Settings, build_target, fit_to_size, prepare_image, select_slices, split_cases
from btseg.preprocessing.quality import suspect_reasons
from btseg.preprocessing.slices import SPLITS, SliceWriter

log = logging.getLogger(__name__)

def source_version(params: Params, dataset: str) -> str:
    if params.data.source == "sample":
        return f"sample(seed={params.data.sample.seed})"
    if dataset in OWN_FOLDER_DATASETS:
        return f"{dataset}({getattr(params.data, dataset).path})"
    options = getattr(params.data, dataset)
    return f"archive({options.archive})" if options.archive else options.kaggle_handle


@dataclass(frozen=True)
class Job:
    dataset: str
    case: CaseRef
    options: object
    preprocess: PreprocessParams
    targets: dict[str, list[str]]


@dataclass
class Prepared:
    """One case reduced to what goes into the split arrays (or the reason it was skipped)."""

    case: CaseRef
    images: np.ndarray | None = None  # float16 (S, C, size, size)
    masks: np.ndarray | None = None  # uint8 (S, K, size, size)
    slice_index: np.ndarray | None = None
    selected: np.ndarray | None = None  # bool (S,): kept by slice selection (applied to the train split only)
    source_files: tuple[str, ...] = ()
    slices_read: int = 0
    skipped: str | None = None
    suspect: tuple[str, ...] = ()  # btseg.preprocessing.quality reasons


def prepare_case(job: Job) -> Prepared:
    """Read one case and turn it into model input (runs in a worker process)."""
    p = job.preprocess
    try:
        case = DATASETS[job.dataset].read_case(job.case, job.options)
    except PipelineError as error:
        if p.on_bad_file == "skip":
            return Prepared(job.case, skipped=str(error))
        raise
    settings = Settings(p.size, p.normalization, tuple(p.percentiles), p.brain_threshold, p.crop_to_brain,
                        p.crop_margin, p.fit, p.neighbours)
    images, brain, placement = prepare_image(case.image, settings)  # the same code path as prediction
    suspect = tuple(suspect_reasons(case.image, brain, list(case.channel_names)))
    if suspect and p.suspect_cases == "skip":
        return Prepared(job.case, skipped=f"{job.case.case_id}: suspect ({'; '.join(suspect)})", suspect=suspect)
    target = build_target(case.regions, case.region_names, job.targets)
    rng = np.random.default_rng([p.seed, zlib.crc32(job.case.case_id.encode())])
    keep = select_slices(target.reshape(len(target), -1).any(axis=1), brain.reshape(len(brain), -1).sum(axis=1),
                         p.tumor_free_fraction, p.skip_no_brain, rng)
    selected = np.zeros(len(target), bool)
    selected[keep] = True
    target = target[:, :, placement.rows, placement.cols]
    s, k, h, w = target.shape
    masks = fit_to_size(target.reshape(s * k, h, w), p.size, p.fit, is_mask=True).reshape(s, k, p.size, p.size)
    return Prepared(job.case, images.astype(np.float16), masks, case.slice_index, selected,
                    tuple(case.source_files), slices_read=len(case.image), suspect=suspect)


def preprocess_dataset(dataset: str, raw: Path, out: Path, params: Params) -> dict[str, int]:
    """Write `out/<split>/` for every split; returns the number of slices per split."""
    p = params.preprocess
    options = getattr(params.data, dataset)
    outputs = targets(params, dataset)
    entry = DATASETS[dataset]
    cases = entry.list_cases(raw, options)
    channels = entry.input_channels(options)
    source_channels = available_channels(params)[dataset]  # channel order of the files, for prediction
    workers = p.workers or os.cpu_count() or 1
    jobs = [Job(dataset, case, options, p, outputs) for case in cases]

    # volumes: which file holds each sequence, kept with the model so bts-predict reads the same layout
    layout = ({"layout": layouts.build_layout(raw, options).spec(options.axis, channels)}
              if dataset in VOLUME_DATASETS else {})
    stored = len(channels) * (2 * p.neighbours + 1)  # 2.5D: each sequence with its neighbours
    staging = SliceWriter(out / "_all", stored, len(outputs), p.size)
    kept: list[Prepared] = []  # arrays dropped once written: only the bookkeeping stays in memory
    rows: dict[int, tuple[int, int]] = {}
    skipped: list[dict[str, str]] = []
    suspects: list[dict] = []
    slices_read = 0
    with _executor(workers) as executor:
        results = executor.map(prepare_case, jobs) if executor else map(prepare_case, jobs)
        for prepared in tqdm(results, total=len(jobs), desc=f"preprocess {dataset}", unit="case"):
            if prepared.suspect:
                log.warning("%s: suspect input: %s", prepared.case.case_id, "; ".join(prepared.suspect))
                suspects.append({"case_id": prepared.case.case_id, "reasons": list(prepared.suspect)})
            if prepared.skipped:
                if not prepared.suspect:
                    log.warning("skipped (preprocess.on_bad_file=skip): %s", prepared.skipped)
                    skipped.append({"case_id": prepared.case.case_id, "reason": prepared.skipped})
                continue
            slices_read += prepared.slices_read
            if not len(prepared.images):
                continue  # a case without slices is in no split
            start = len(staging.rows)
            staging.add(prepared.images, prepared.masks, prepared.case.case_id, prepared.slice_index,
                        prepared.source_files)
            rows[len(kept)] = (start, len(staging.rows))
            prepared.images = prepared.masks = None
            kept.append(prepared)
    staging.close({})
    if not staging.rows:
        raise PipelineError(f"{raw}: no slices left after reading {len(cases)} cases ({len(skipped)} skipped as bad); "
                            "check the input files")

    has_tumor = {}
    for i, prepared in enumerate(kept):
        start, end = rows[i]
        has_tumor[prepared.case.case_id] = (has_tumor.get(prepared.case.case_id, False)
                                            or any(r[4] > 0 for r in staging.rows[start:end]))
    assignment, split_by = _assign_splits(kept, has_tumor, params, raw)

    all_images = np.load(out / "_all" / "images.npy", mmap_mode="r")
    all_masks = np.load(out / "_all" / "masks.npy", mmap_mode="r")
    counts, train_kept = {}, 0
    for split in SPLITS:
        writer = SliceWriter(out / split, stored, len(outputs), p.size)
        for i, prepared in enumerate(kept):
            if assignment[i] != split:
                continue
            start, end = rows[i]
            # slice selection shapes what the model learns from; val and test keep every slice of
            # their patients, so a per-case score is computed on the whole volume
            chosen = np.flatnonzero(prepared.selected) if split == "train" else np.arange(end - start)
            if split == "train":
                train_kept += len(chosen)
            if len(chosen):
                writer.add(all_images[start:end][chosen], all_masks[start:end][chosen], prepared.case.case_id,
                           prepared.slice_index[chosen], tuple(prepared.source_files[j] for j in chosen))
        meta = writer.close({
            "dataset": dataset, "split": split, "split_by": split_by,
            "source": params.data.source, "source_version": source_version(params, dataset),
            "channels": channels, "size": p.size,
            "normalization": {"method": p.normalization, "over": "brain voxels of the whole case, per channel",
                              **({"percentiles": p.percentiles} if p.normalization == "percentile" else {})},
            "geometry": {"crop_to_brain": p.crop_to_brain, "crop_margin": p.crop_margin, "fit": p.fit,
                         "neighbours": p.neighbours,
                         "brain_threshold": p.brain_threshold},
            "source_channels": source_channels,
            **layout,
            "targets": outputs,
            "selection": {"tumor_free_fraction": p.tumor_free_fraction, "skip_no_brain": p.skip_no_brain,
                          "applies_to": "the train split only; val and test keep every slice",
                          "slices_read": slices_read, "train_slices_kept": train_kept},
            "leakage_check": {"unit": "case_id (patient; for Roboflow exports the source image behind *.rf.<hash>)",
                              "cases_in_two_splits": [], "passed": True},
            "bad_files": {"policy": p.on_bad_file, "skipped": len(skipped), "files": skipped},
            "suspect_cases": {"policy": p.suspect_cases, "count": len(suspects), "cases": suspects},
            "arrays": {"images": "float16 (N, C, H, W)", "masks": "uint8 (N, K, H, W), K = len(targets), 1 = inside"},
        })
        counts[split] = meta["counts"]["slices"]
        if split == "train" and not train_kept:
            raise PipelineError(f"{raw}: no training slices left after slice selection; check "
                                "preprocess.tumor_free_fraction, preprocess.skip_no_brain and the input files")
    del all_images, all_masks
    shutil.rmtree(out / "_all")
    return counts


def _assign_splits(kept: list[Prepared], has_tumor: dict[str, bool], params: Params,
                   raw: Path) -> tuple[list[str], str]:
    """Split name per kept case; the dataset's own split is kept only if no case sits in two splits."""
    p = params.preprocess
    own = [prepared.case.split for prepared in kept]
    if p.use_own_split and all(own):
        splits_of: dict[str, set[str]] = {}
        for prepared in kept:
            splits_of.setdefault(prepared.case.case_id, set()).add(prepared.case.split)
        leaked = sorted(case for case, splits in splits_of.items() if len(splits) > 1)
        if leaked:
            raise PipelineError(
                f"{raw}: leakage: {len(leaked)} case(s) appear in two splits of the dataset's own split "
                f"(e.g. {leaked[:5]}); set preprocess.use_own_split=false to re-split by case")
        return own, "the dataset's own split (leakage-checked by case)"
    ids = [prepared.case.case_id for prepared in kept]
    strata = has_tumor if p.stratify else None
    try:
        by_case = split_cases(ids, p.split.model_dump(), p.seed, strata)
    except ValueError as error:
        raise PipelineError(f"{raw}: {error}; add cases or change preprocess.split") from None
    stratified = ", stratified by tumor presence" if p.stratify else ""
    return [by_case[i] for i in ids], f"patient (case), seeded{stratified}"


@contextmanager
def _executor(workers: int) -> Iterator[ProcessPoolExecutor | None]:
    """Worker processes for more than one worker, else None (work runs inline).

    forkserver starts workers from a clean process, so no thread or lock state of this one
    (tqdm, logging, OpenCV's pools) is inherited half-held; on an error the queued cases are
    cancelled and the workers stopped.
    """
    if workers <= 1:
        yield None
        return
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))
    try:
        yield executor
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
