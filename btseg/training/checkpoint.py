"""The training checkpoint (checkpoint.pt): the last finished epoch, so a killed run resumes.

It holds the model, optimiser and scheduler state dicts, the moving average of the weights
(train.ema_decay), the best epoch's weights, the history and the early-stopping count: tensors
and plain values only, written atomically and read back with PyTorch's safe loader
(`weights_only=True`) like every torch file this pipeline reads, so a checkpoint from someone else
cannot run code. No RNG state is kept: every epoch reseeds from (train.seed, epoch), which is what
makes a resumed run end with the same weights.

`fingerprint` names every setting that changes the result; a checkpoint written with another one
is not resumed (training starts over and says why).
"""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import torch

from btseg.config import TrainParams
from btseg.errors import one_line
from btseg.fileio import atomic_file
from btseg.models.model_file import CHECKPOINT_KEY

log = logging.getLogger(__name__)


def fingerprint(config: TrainParams, extra: dict) -> str:
    """What must match for a checkpoint to be resumed: every setting that changes the result."""
    # the loader's processes and prefetch, compilation and the thread count change the speed, not the result
    settings = config.model_dump(exclude={"models": True, "device": True, "num_threads": True,
                                          "speed": {"loader_workers", "prefetch_batches", "compile",
                                                                    "threads_follow_load"}})
    return json.dumps({**settings, **extra}, sort_keys=True, default=str)


def save_checkpoint(path: Path, key: str, epoch: int, model, optimizer, scheduler, history: list[dict],
                    best_dice: float, best_epoch: int, best_state: dict | None, stale: int,
                    average: dict | None = None) -> None:
    state = {CHECKPOINT_KEY: key, "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict() if scheduler is not None else None, "history": history,
             "best_dice": best_dice, "best_epoch": best_epoch, "best_state": best_state, "stale": stale,
             "average": average}
    with atomic_file(path) as partial:
        torch.save(state, partial)


def read_checkpoint(path: Path) -> dict:
    """The checkpoint's contents, read with the safe loader; raises what torch.load raises."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or CHECKPOINT_KEY not in state:
        raise ValueError("not a training checkpoint of this pipeline")
    return state


def matching_checkpoint(path: Path | None, key: str) -> dict | None:
    """The checkpoint at `path` if it was written with the same settings, else None (start fresh)."""
    if path is None or not path.is_file():
        return None
    try:
        state = read_checkpoint(path)
    except pickle.UnpicklingError:  # what the safe loader refuses: an earlier version's RNG states, or not ours
        log.warning("%s: not resumable (it holds more than tensors and plain values: written by an earlier "
                    "version, or not by this pipeline); training from scratch", path)
        return None
    except Exception as error:  # noqa: BLE001 - a damaged or foreign checkpoint only costs the resume
        log.warning("%s: not resumable (%s); training from scratch", path, one_line(error, 120))
        return None
    if state[CHECKPOINT_KEY] != key:
        log.info("%s: written with other settings; training from scratch", path)
        return None
    return state
