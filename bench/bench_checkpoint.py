"""What checkpointing costs: stall per save, end-to-end overhead, resume start-up, throughput.

    python bench/bench_checkpoint.py            # about 4.5 minutes on 2 CPU cores

Measured in one run, on the medium transformer (44M parameters; model + AdamW state 531 MB):

- copy: one `copy_` of the whole state into buffers allocated before (the floor for a
  consistent snapshot);
- sync: `checkpoint.save_checkpoint` of the same state (torch.save, checksum, fsync, rename);
- stall: the time train.py's loop is blocked per save (progress.json `checkpoint_stall`, saves
  every 50 steps and at the epoch's end), and the training wall time against the same run with
  saving switched off (overhead), with each run's peak memory;
- resume vs fresh: seconds from process start to the first training step, resuming from the
  medium checkpoint against starting fresh;
- throughput: train.py's samples/s (tokens/s for the transformer, graphs/s for the GNN) in an
  epoch against a bare loop over the same model and batches with no checkpointing, progress
  bar or metrics.

Prints a table, then last:
    stall_vs_copy=X stall_vs_sync=Y overhead=Z% resume_vs_fresh=W throughput_vs_bare=V
"""

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MEDIUM_RUN = ["--config", "medium", "--num-samples", "222", "--batch-size", "2",
              "--eval-samples", "2", "--checkpoint-every-minutes", "0", "--warmup-steps", "10"]


# --------------------------------------------------------------------------------------------
# Child processes: each measurement that needs a fresh process runs this file with --child
# --------------------------------------------------------------------------------------------

def child_train(args, saving):
    """Run train.py's main in this process; print as JSON the training loop's wall time and
    the duration of each step with whether a background write was in flight during it."""
    import train
    if not saving:
        train.Trainer.start_save = lambda self, *a, **k: None
        train.Trainer.collect_save = lambda self, block: True
        train.background_save.StagingBuffers.prepared = True   # no staging memory either
    original = train.Trainer.train
    original_step = train.Trainer.train_step
    timing = {"steps": []}

    def step(self, batch):
        writing = self.saver.in_flight
        started = time.perf_counter()
        result = original_step(self, batch)
        timing["steps"].append((time.perf_counter() - started, writing or self.saver.in_flight))
        return result

    train.Trainer.train_step = step

    if saving:
        # The floor, measured in the same run at the same moments: just before each save (no
        # write running), one plain copy_ of the same state into a second set of kept,
        # pre-touched buffers.
        import torch
        original_start = train.Trainer.start_save
        kept = {}
        timing["copy_s"] = []

        def start_save(self, *args, **kwargs):
            self.collect_save(block=True)   # what start_save does first anyway
            tensors = list(_tensors(self.checkpoint_state()))
            if len(kept) != len(tensors):
                kept.update({i: torch.empty_like(t).zero_() for i, t in enumerate(tensors)})
            started = time.perf_counter()
            for i, t in enumerate(tensors):
                kept[i].copy_(t)
            timing["copy_s"].append(time.perf_counter() - started)
            original_start(self, *args, **kwargs)

        train.Trainer.start_save = start_save

    def timed(self):
        started = time.perf_counter()
        try:
            return original(self)
        finally:
            timing["train_s"] = time.perf_counter() - started

    train.Trainer.train = timed
    code = train.main(args)
    measuring = sum(t.numel() * t.element_size() for t in kept.values()) if saving else 0
    print(json.dumps({"code": code, "peak_rss_mb": (peak_rss() - measuring) / 1e6, **timing}))


def peak_rss():
    """This process's peak resident memory in bytes: VmHWM, which starts afresh at exec.
    (getrusage's ru_maxrss would include the parent's memory before exec.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child_first_step(args):
    """Start train.py's main and exit at its first training step; the parent times it."""
    import train
    original = train.Trainer.train_step

    def first(self, batch):
        original(self, batch)
        print("FIRST_STEP", flush=True)
        os._exit(0)

    train.Trainer.train_step = first
    train.main(args)


def child_throughput(model_args, attempts):
    """Samples/s of one epoch: train.py's loop against a bare loop, best of `attempts` each."""
    import torch
    import data
    import models
    import train

    def bare_epoch(settings, config, dataset):
        torch.manual_seed(settings["seed"])
        model = models.build_model(config)
        if config.model == "gnn":
            model.set_target_scale(dataset.data.targets[dataset.train])
        steps = math.ceil(len(dataset.train) / settings["batch_size"])
        optimizer, scheduler = train.build_optimizer(model, settings, steps)
        order = dataset.train[data.epoch_order(len(dataset.train), settings["seed"], 1)]
        model.train()
        started = time.perf_counter()
        for start in range(0, len(order), settings["batch_size"]):
            loss, _ = model.loss(dataset.data.batch(order[start:start + settings["batch_size"]]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings["grad_clip"])
            optimizer.step()
            scheduler.step()
        return time.perf_counter() - started

    def train_epoch(folder):
        # The loop of train.py from its first step to the end of its last, as a user runs it
        # (progress bar, saves due, stop checks), without validation and sampling after it.
        marks = []
        original = train.Trainer.train_step

        def step(self, batch):
            if not marks:
                marks.append(time.perf_counter())
            result = original(self, batch)
            marks[1:] = [time.perf_counter()]
            return result

        train.Trainer.train_step = step

        try:
            code = train.main([*model_args, "--epochs", "1", "--checkpoint-dir", str(folder)])
            assert code == 0
        finally:
            train.Trainer.train_step = original
        return marks[1] - marks[0]

    explicit = train.explicit_flags(train.build_parser().parse_args(model_args))
    settings = train.merge_settings(explicit, None)
    config = models.get_config(settings["model"], settings["config"])
    dataset = train.load_dataset(settings, config)
    bare, ours = [], []
    with tempfile.TemporaryDirectory() as folder:
        for attempt in range(attempts):
            bare.append(bare_epoch(settings, config, dataset))
            ours.append(train_epoch(Path(folder) / str(attempt)))
    n = len(dataset.train)
    if config.model == "transformer":
        units = int(dataset.data.lengths[dataset.train].sum())   # tokens, <bos>/<eos> included
    else:
        units = n
    print(json.dumps({"units": units, "bare_s": min(bare), "ours_s": min(ours)}))


# --------------------------------------------------------------------------------------------
# The parent: measurements and the table
# --------------------------------------------------------------------------------------------

def run_child(*args):
    """Run this file as a child; returns its last line of output, as JSON."""
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.run([sys.executable, __file__, "--child", *args],
                              stdout=subprocess.PIPE, stderr=errors, text=True)
        if proc.returncode != 0:
            errors.seek(0)
            raise SystemExit(f"child {args[:2]} failed ({proc.returncode}):\n{proc.stdout}"
                             f"{errors.read()[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def time_to_first_step(args, repeats=2):
    """Seconds from process start to the end of the first training step, best of `repeats`."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, __file__, "--child", "first-step",
                                 json.dumps(args)], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        for line in proc.stdout:
            if line.startswith("FIRST_STEP"):
                times.append(time.perf_counter() - started)
        proc.wait()
        if len(times) != _ + 1:
            raise SystemExit(f"train.py {' '.join(args)} never reached a training step")
    return min(times)


def medium_state():
    """The medium transformer's full checkpoint state after one AdamW step."""
    import torch
    import checkpoint as ckpt
    import data
    import models
    import train
    from dataclasses import asdict
    torch.manual_seed(0)
    config = models.get_config("transformer", "medium")
    model = models.build_model(config)
    optimizer, scheduler = train.build_optimizer(
        model, {"lr": 1e-4, "weight_decay": 0.01, "warmup_steps": 10, "lr_schedule": "constant",
                "epochs": 1}, 100)
    batch = data.SequenceData(data.synthetic_antibodies(2, 0), config.max_len).batch(
        torch.arange(2))
    model.loss(batch)[0].backward()
    optimizer.step()
    scheduler.step()
    return {"epoch": 0, "model_state_dict": model.state_dict(),
            "optimizer_state_dict": optimizer.state_dict(),
            "scheduler_state_dict": scheduler.state_dict(), "config": asdict(config),
            "rng_state": ckpt.capture_rng_state(), "format_version": ckpt.FORMAT_VERSION}


def measure_copy_and_sync(folder):
    import torch
    import background_save
    import checkpoint as ckpt
    state = medium_state()
    tensors = [t for t in _tensors(state)]
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    kept = [torch.empty_like(t) for t in tensors]
    copy_times = []
    for _ in range(7):
        started = time.perf_counter()
        for buffer, tensor in zip(kept, tensors):
            buffer.copy_(tensor)
        copy_times.append(time.perf_counter() - started)
    staging = background_save.StagingBuffers()
    staging.snapshot(state)
    snapshot_times = []
    for _ in range(7):
        started = time.perf_counter()
        staging.snapshot(state)
        snapshot_times.append(time.perf_counter() - started)
    sync_times = []
    for i in range(3):
        started = time.perf_counter()
        ckpt.save_checkpoint(state, Path(folder) / f"sync{i}.pt")
        sync_times.append(time.perf_counter() - started)
        size = (Path(folder) / f"sync{i}.pt").stat().st_size
        os.unlink(Path(folder) / f"sync{i}.pt")
    return {"state_bytes": nbytes, "file_bytes": size,
            "copy_s": statistics.median(copy_times),
            "snapshot_s": statistics.median(snapshot_times),
            "sync_s": statistics.median(sync_times)}


def _tensors(value):
    import torch
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        kind, *rest = options.child
        if kind == "train":
            return child_train(json.loads(rest[0]), saving=rest[1] == "saving")
        if kind == "first-step":
            return child_first_step(json.loads(rest[0]))
        return child_throughput(json.loads(rest[0]), int(rest[1]))

    started = time.monotonic()
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        base = measure_copy_and_sync(work)

        # Identical runs here differ by 1-5%, as much as the effect measured: the saving run
        # goes between two runs without saving, and is compared with the faster of them
        # (which can only overstate the overhead).
        runs = {"saving": [], "nosave": []}
        for attempt, kind in enumerate(("nosave", "saving", "nosave")):
            folder = work / f"{kind}{attempt}"
            args = [*MEDIUM_RUN, "--epochs", "1", "--checkpoint-dir", str(folder)]
            if kind == "saving":
                args += ["--checkpoint-every-steps", "50"]
            result = run_child("train", json.dumps(args), kind)
            result["folder"] = folder
            runs[kind].append(result)
        with_saves = runs["saving"][0]
        without = min(runs["nosave"], key=lambda r: r["train_s"])
        save_dir = with_saves["folder"]
        progress = json.loads((save_dir / "transformer_medium_progress.json").read_text())
        stall = progress["checkpoint_stall"]

        # Resume: the saving run's epoch-1 checkpoint, continued to epoch 2; fresh: a new run.
        resume_s = time_to_first_step([*MEDIUM_RUN, "--epochs", "2", "--checkpoint-dir",
                                       str(save_dir)])
        fresh_s = time_to_first_step([*MEDIUM_RUN, "--epochs", "2", "--checkpoint-dir",
                                      str(work / "fresh")])

        # Best of 2 tiny-transformer epochs (7 s each) and of 4 GNN epochs (1 s each: the
        # shorter the measurement, the more a moment of noise weighs).
        tput = {}
        for model, args, attempts in (("transformer", ["--num-samples", "700"], 2),
                                      ("gnn", ["--model", "gnn", "--num-samples", "4000"], 4)):
            tput[model] = run_child("throughput", json.dumps(args), str(attempts))

    rss_saving, rss_nosave = with_saves["peak_rss_mb"], without["peak_rss_mb"]

    def all_runs(kind):
        return " ".join(f"{r['train_s']:.1f}" for r in runs[kind])

    copy_in_run = statistics.mean(with_saves["copy_s"])
    stall_vs_copy = stall["mean_s"] / copy_in_run
    during = [t for t, writing in with_saves["steps"] if writing]
    quiet = statistics.median(t for t, writing in with_saves["steps"] if not writing)
    extra_per_save = sum(t - quiet for t in during) / max(1, stall["saves"] - 1)
    stall_vs_sync = base["sync_s"] / stall["mean_s"]
    overhead = 100 * (with_saves["train_s"] / without["train_s"] - 1)
    resume_vs_fresh = resume_s / fresh_s
    ratios = {m: t["bare_s"] / t["ours_s"] for m, t in tput.items()}
    snapshot_mb = base["state_bytes"] / 1e6

    import torch
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = [
        ("medium transformer state (model + AdamW)", f"{snapshot_mb:.0f} MB "
                                                     f"(file {base['file_bytes'] / 1e6:.0f} MB)"),
        ("copy_ into kept buffers (quiet process)", f"{1000 * base['copy_s']:.1f} ms"),
        ("copy_ into kept buffers (in the training run, just before each save)",
         f"{1000 * copy_in_run:.1f} ms"),
        ("StagingBuffers.snapshot (same, walking the state)", f"{1000 * base['snapshot_s']:.1f} ms"),
        ("synchronous save_checkpoint (torch.save + sha256 + fsync)", f"{1000 * base['sync_s']:.0f} ms"),
        (f"train.py stall per save ({stall['saves']} saves; mean / max)",
         f"{1000 * stall['mean_s']:.1f} / {1000 * stall['max_s']:.1f} ms"),
        ("stall / copy", f"{stall_vs_copy:.2f}x"),
        ("sync / stall", f"{stall_vs_sync:.0f}x"),
        ("training 100 steps + epoch: saving every 50 / no saving (faster of 2)",
         f"{with_saves['train_s']:.1f} s / {without['train_s']:.1f} s ({overhead:+.1f}%; all "
         f"runs {all_runs('saving')} / {all_runs('nosave')} s)"),
        ("training slowed by a background write (per mid-epoch save)",
         f"{extra_per_save:.2f} s over {len(during)} steps (quiet step {quiet:.2f} s)"),
        ("peak RSS of the training process: saving / no saving",
         f"{rss_saving:.0f} MB / {rss_nosave:.0f} MB (+{rss_saving - rss_nosave:.0f} MB; "
         f"snapshot {snapshot_mb:.0f} MB)"),
        ("process start to first step: resume / fresh", f"{resume_s:.2f} s / {fresh_s:.2f} s"),
        ("transformer tiny: train.py / bare tokens/s",
         f"{tput['transformer']['units'] / tput['transformer']['ours_s']:.0f} / "
         f"{tput['transformer']['units'] / tput['transformer']['bare_s']:.0f} "
         f"({ratios['transformer']:.3f})"),
        ("gnn tiny: train.py / bare graphs/s",
         f"{tput['gnn']['units'] / tput['gnn']['ours_s']:.0f} / "
         f"{tput['gnn']['units'] / tput['gnn']['bare_s']:.0f} ({ratios['gnn']:.3f})"),
    ]
    try:
        import lightning  # noqa: F401
        rows.append(("lightning", "installed, but the comparison is not implemented"))
    except ImportError:
        rows.append(("lightning ModelCheckpoint comparison", "skipped: lightning not installed"))
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure':{width}} | value |")
    print(f"|{'-' * (width + 2)}|-------|")
    for name, value in rows:
        print(f"| {name:{width}} | {value} |")
    print(f"benchmark time: {time.monotonic() - started:.0f} s")
    print(f"stall_vs_copy={stall_vs_copy:.2f} stall_vs_sync={stall_vs_sync:.1f} "
          f"overhead={overhead:.1f}% resume_vs_fresh={resume_vs_fresh:.2f} "
          f"throughput_vs_bare={min(ratios.values()):.3f}")


if __name__ == "__main__":
    main()
