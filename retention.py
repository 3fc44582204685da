"""What a run keeps on disk: which numbered epoch files retention prunes, and how much space
the run will need.

latest and best are never pruned, and neither is any file that is not a numbered epoch file.
Pruning happens only after a newer checkpoint was committed, so a valid file always remains.
"""

import os
import shutil


def kept_epochs(epochs, keep_last, keep_every):
    """The epochs (of `epochs`, the numbered files present) that retention keeps: the
    `keep_last` newest, and every epoch divisible by `keep_every`. With neither set (None or
    0), all of them."""
    epochs = sorted(epochs)
    if not keep_last and not keep_every:
        return set(epochs)
    kept = set(epochs[-keep_last:]) if keep_last else set()
    if keep_every:
        kept |= {e for e in epochs if e % keep_every == 0}
    return kept


def prunable(run, keep_last, keep_every):
    """Paths of the numbered epoch files of `run` that retention would delete, oldest first."""
    files = run.epoch_files()
    keep = kept_epochs([e for e, _ in files], keep_last, keep_every)
    return [path for epoch, path in files if epoch not in keep]


def prune(run, keep_last, keep_every):
    """Delete what `prunable` lists; returns the paths deleted. Call only after a newer
    checkpoint was committed. A file that cannot be deleted stays (and is tried again next
    time): retention never stops training."""
    deleted = []
    for path in prunable(run, keep_last, keep_every):
        try:
            os.unlink(path)
            deleted.append(path)
        except FileNotFoundError:
            pass
        except OSError:
            continue
    return deleted


def epoch_files_kept(epochs, frequency, keep_last, keep_every):
    """How many numbered epoch files a run of `epochs` epochs with one file every `frequency`
    epochs holds at most at once under the retention settings."""
    numbered = [e for e in range(1, epochs + 1) if e % frequency == 0]
    if not keep_last and not keep_every:
        return len(numbered)
    every = sum(1 for e in numbered if keep_every and e % keep_every == 0)
    return min(len(numbered), (keep_last or 0) + every)


def checkpoint_bytes(model, optimizer_state_count=2, overhead_per_tensor=160,
                     fixed_overhead=64 << 10):
    """Estimated size of one checkpoint of `model` trained with AdamW: the model state, two
    optimizer moments per parameter (`optimizer_state_count`), and the zip and pickle overhead
    (a record per tensor, plus the run's history and settings)."""
    state = model.state_dict()
    model_bytes = sum(t.numel() * t.element_size() for t in state.values())
    params = list(model.parameters())
    moment_bytes = sum(p.numel() * p.element_size() for p in params) * optimizer_state_count
    tensors = len(state) + len(params) * (optimizer_state_count + 1)   # + AdamW's step
    return model_bytes + moment_bytes + tensors * overhead_per_tensor + fixed_overhead


def estimate(one_checkpoint, epoch_files):
    """Bytes the run needs at most at once: latest, best, the numbered epoch files kept, and
    the temporary file of the write in flight, each a separate file at worst (the names of one
    save are hard links to the same bytes, but later saves make new files)."""
    return one_checkpoint * (epoch_files + 3)


def free_bytes(folder):
    """Free space for an unprivileged writer on the file system that holds `folder` (or the
    nearest existing parent)."""
    probe = os.path.abspath(folder)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    return shutil.disk_usage(probe).free


def human(n):
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
