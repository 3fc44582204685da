"""What checkpointing costs: stall per save, end-to-end overhead, resume start-up, throughput.

    python bench/bench_checkpoint.py            # 4.8 minutes on 2 CPU cores with lightning (its run: 65 s)
    python bench/bench_checkpoint.py --smoke    # every code path on the tiny model, 30 s
    python bench/bench_checkpoint.py --device cuda [--smoke]   # the same on one NVIDIA GPU

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
  bar or metrics (each step's best over a few epochs, plus the loop's time outside its steps);
- if `lightning` is installed (optional): the same training under Lightning with its
  ModelCheckpoint saving at the same steps (bench/lightning_baseline.py).

With --device cuda every train.py run gets --device cuda, and the state, the bare loop and
its batches live on the GPU as in train.py. A save's snapshot is then a device-to-host copy:
the copy floor copies into pinned host buffers (non_blocking) and waits for the GPU before
reading the clock, and every timed step ends with torch.cuda.synchronize() (train.py's
loss.item() waits for the forward only). The table adds each run's peak GPU memory
(max_memory_allocated), the machine line names the GPU, and the Lightning comparison is
skipped (bench/lightning_baseline.py trains on the CPU). No figures on a GPU have been
measured yet by this project: the numbers in README.md and docs/ are the CPU's.

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

# The measured training: 200 training samples in steps of 2 make a 100-step epoch, saved at
# step 50 and at its end; the epoch's end validates on 11 samples and samples 1 sequence (the
# least the flags allow), so that four such trainings fit in the 5 minutes. --smoke runs the
# same code paths on the tiny model in seconds.
FULL = {"run": ["--config", "medium", "--num-samples", "211", "--val-fraction", "0.05",
                "--batch-size", "2", "--eval-samples", "1", "--checkpoint-every-minutes", "0",
                "--warmup-steps", "10"],
        "save_every": 50, "config": "medium", "first_step_repeats": 2,
        "throughput": (("transformer", ["--num-samples", "300"], 2),
                       ("gnn", ["--model", "gnn", "--num-samples", "4000"], 6))}
SMOKE = {"run": ["--config", "tiny", "--num-samples", "44", "--batch-size", "2",
                 "--eval-samples", "2", "--checkpoint-every-minutes", "0", "--warmup-steps", "2"],
         "save_every": 10, "config": "tiny", "first_step_repeats": 1,
         "throughput": (("transformer", ["--num-samples", "40"], 1),
                        ("gnn", ["--model", "gnn", "--num-samples", "100"], 1))}


# --------------------------------------------------------------------------------------------
# Child processes: each measurement that needs a fresh process runs this file with --child
# --------------------------------------------------------------------------------------------

def child_train(args, saving):
    """Run train.py's main in this process; print as JSON the run's wall time (start-up
    included) and its loop's, and the duration of each step with whether a background write
    was in flight during it; on a GPU also the run's peak GPU memory."""
    import torch
    import families
    import train
    on_cuda = _device_of(args) == "cuda"
    if not saving:
        train.Trainer.start_save = lambda self, *a, **k: None
        train.Trainer.collect_save = lambda self, block: True
        # No staging memory either, neither paged in at start-up nor at the first step.
        train.startup.reserve_staging_memory = lambda *a, **k: None
        train.background_save.StagingBuffers.prepared = True
    original = train.Trainer.train
    original_step = train.Trainer.train_step
    timing = {"steps": [], "measuring_s": 0.0}

    def step(self, *args):
        writing = self.saver.in_flight
        started = time.perf_counter()
        result = original_step(self, *args)
        # On a GPU train_step returns with its backward and optimizer step still queued (its
        # loss.item() waits for the forward only): waited for here, each step's time is its
        # own, and neither the next step nor a save's stall counts it. The runs with and
        # without saving wait alike.
        _synchronize(on_cuda)
        timing["steps"].append((time.perf_counter() - started, writing or self.saver.in_flight))
        return result

    train.Trainer.train_step = step

    if saving:
        # The floor, measured in the same run at the same moments: just before each save (no
        # write running), one plain copy_ of the same state into a second set of kept,
        # pre-touched buffers (from a GPU, pinned host memory as the snapshot's: see
        # _host_buffer).
        original_start = train.Trainer.start_save
        kept = {}
        timing["copy_s"] = []

        def start_save(self, *args, **kwargs):
            self.collect_save(block=True)   # what start_save does first anyway
            measuring = time.perf_counter()
            tensors = list(_tensors(self.checkpoint_state()))
            if len(kept) != len(tensors):
                kept.update({i: _host_buffer(t).zero_() for i, t in enumerate(tensors)})
            _synchronize(on_cuda)   # nothing queued before it counts in the copy
            started = time.perf_counter()
            _copy_into(kept.values(), tensors, on_cuda)
            timing["copy_s"].append(time.perf_counter() - started)
            # This measurement is not part of saving: its time comes off the training time.
            timing["measuring_s"] += time.perf_counter() - measuring
            original_start(self, *args, **kwargs)

        train.Trainer.start_save = start_save

    def timed(self):
        started = time.perf_counter()
        timing["startup_s"] = started - main_started
        try:
            return original(self)
        finally:
            timing["loop_s"] = time.perf_counter() - started - timing["measuring_s"]

    train.Trainer.train = timed
    timing["final_wait_s"], timing["eval_s"], timing["prepare_s"] = [], [], []
    for name, key in (("final_save_outcome", "final_wait_s"), ("validation_loss", "eval_s"),
                      ("write_plots", "eval_s")):
        setattr(train.Trainer, name, _timed(getattr(train.Trainer, name), timing[key]))
    for family_class in {type(family) for family in families.FAMILIES.values()}:
        family_class.epoch_measures = _timed(family_class.epoch_measures, timing["eval_s"])
    staging = train.background_save.StagingBuffers
    staging.prepare = _timed(staging.prepare, timing["prepare_s"])
    main_started = time.perf_counter()
    code = train.main(args)
    # The whole run, start-up included: saving pages in its buffers' memory during start-up.
    timing["train_s"] = time.perf_counter() - main_started - timing["measuring_s"]
    measuring = _host_nbytes(kept.values(), on_cuda) if saving else 0
    if on_cuda:
        # The floor's buffers are host memory: none of this is theirs.
        timing["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 1e6
    print(json.dumps({"code": code, "peak_rss_mb": (peak_rss() - measuring) / 1e6, **timing}))


def _timed(method, durations):
    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            durations.append(time.perf_counter() - started)
    return timed


def _device_of(args):
    """The --device of a train.py argument list (the parent always gives one)."""
    return args[args.index("--device") + 1]


def _synchronize(on_cuda):
    """Wait for the work queued on the GPU, so that the clock read next includes it. On the
    CPU there is nothing to wait for: an operation's work is done when it returns."""
    if on_cuda:
        import torch
        torch.cuda.synchronize()


def _host_buffer(tensor):
    """An empty host buffer for a copy of `tensor`. For a CUDA tensor it is pinned, as
    StagingBuffers' are: a device-to-host copy into pageable memory goes through a staging
    buffer of the driver and cannot run asynchronously, so it would not be what a save does."""
    import torch
    if tensor.is_cuda:
        return torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=True)
    return torch.empty_like(tensor)


def _copy_into(buffers, tensors, on_cuda):
    """The floor of a snapshot: one copy_ of each tensor into its kept buffer. From a GPU the
    copies are queued (non_blocking, into pinned memory) and then waited for: a snapshot is
    only taken once its bytes are on the host."""
    for buffer, tensor in zip(buffers, tensors):
        buffer.copy_(tensor, non_blocking=on_cuda)
    _synchronize(on_cuda)


def _host_nbytes(buffers, on_cuda):
    """Host memory that `buffers` hold. Pinned ones (on a GPU, the copies of its tensors; not
    of AdamW's `step` counts, which stay on the CPU) come from PyTorch's caching host
    allocator, which rounds each block up to a power of two and pins (so holds) all of it."""
    total = 0
    for buffer in buffers:
        n = buffer.numel() * buffer.element_size()
        total += 1 << (n - 1).bit_length() if on_cuda and n and buffer.is_pinned() else n
    return total


def child_lightning(args, every_n_steps):
    import lightning_baseline
    with tempfile.TemporaryDirectory() as folder:
        print(json.dumps(lightning_baseline.train_with_lightning(args, folder, every_n_steps)))


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
    on_cuda = _device_of(args) == "cuda"

    def first(self, *args):
        original(self, *args)
        _synchronize(on_cuda)   # the end of the step: its backward and optimizer step done
        print("FIRST_STEP", flush=True)
        os._exit(0)

    train.Trainer.train_step = first
    train.main(args)


def child_throughput(model_args, attempts):
    """Samples/s of one epoch: train.py's loop against a bare loop, `attempts` epochs each.

    Epochs of the tiny models take about a second, and identical ones differ here by up to 10%
    from moments of noise. So each loop's epoch time is built from its best duration of each
    step (the same batch in every attempt) plus its best time outside the steps (the progress
    bar, the stop and save checks of train.py: the loop's own cost). Measured this way, both
    loops' costs are kept and a moment of noise in one attempt is not.

    On a GPU both loops wait for the GPU at the end of each timed step (torch.cuda.synchronize
    before the clock is read), so that each step's time is its whole work in both. train.py's
    step alone would not be comparable: its loss.item() waits for the forward only, so its
    backward and optimizer step would be counted in the next step, and the last step's in
    no step at all. The wait keeps train.py's bookkeeping between steps from overlapping the
    GPU's work, which counts against train.py if anything."""
    import torch
    import data
    import determinism
    import families
    import models
    import settings as run_settings
    import startup
    import train

    explicit = run_settings.explicit_flags(train.build_parser().parse_args(model_args))
    device = torch.device(explicit["device"])
    on_cuda = device.type == "cuda"
    if on_cuda:
        # train.py's kernel settings for both loops from the first attempt on: train.main
        # sets them for the whole process, so the first bare epoch would otherwise run
        # without them, and on a GPU deterministic kernels differ in speed. (cuBLAS reads its
        # workspace setting before any CUDA work: set here, first.) On the CPU the bench
        # measures as it always has.
        determinism.configure(True)

    def bare_epoch(settings, config, dataset):
        # Built, moved and fed as train.py does (startup.build_training_objects, train_step).
        torch.manual_seed(settings["seed"])
        model = models.build_model(config).to(device)
        families.get(config.model).prepare_fresh_model(model, dataset)
        steps = math.ceil(len(dataset.train) / settings["batch_size"])
        optimizer, scheduler = startup.build_optimizer(model, settings, steps)
        order = dataset.train[data.epoch_order(len(dataset.train), settings["seed"], 1)]
        model.train()
        durations = []
        started = time.perf_counter()
        for start in range(0, len(order), settings["batch_size"]):
            step_started = time.perf_counter()
            batch = dataset.data.batch(order[start:start + settings["batch_size"]])
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            loss, _ = model.loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings["grad_clip"])
            optimizer.step()
            scheduler.step()
            _synchronize(on_cuda)
            durations.append(time.perf_counter() - step_started)
        return time.perf_counter() - started, durations

    def train_epoch(folder):
        # The loop of train.py from its first step to the end of its last, as a user runs it
        # (progress bar, saves due, stop checks), without validation and sampling after it.
        marks, durations = [], []
        original = train.Trainer.train_step

        def step(self, *args):
            started = time.perf_counter()
            if not marks:
                marks.append(started)
            result = original(self, *args)
            _synchronize(on_cuda)
            marks[1:] = [time.perf_counter()]
            durations.append(marks[1] - started)
            return result

        train.Trainer.train_step = step

        try:
            code = train.main([*model_args, "--epochs", "1", "--checkpoint-dir", str(folder)])
            assert code == 0
        finally:
            train.Trainer.train_step = original
        return marks[1] - marks[0], durations

    def epoch_time(epochs):
        """Best time of each step over the attempts, plus the best time outside the steps."""
        steps = [min(times) for times in zip(*(durations for _, durations in epochs))]
        return sum(steps) + min(wall - sum(durations) for wall, durations in epochs)

    settings = run_settings.merge_settings(explicit, None)
    config = models.get_config(settings["model"], settings["config"])
    family = families.get(config.model)
    dataset = family.load_dataset(settings, config)
    # train.main would build the same data again for each attempt, outside the timed steps
    # (2.4 s for the GNN's 4000 graphs): it gets the one built here, as the bare loop does.
    family.load_dataset = lambda settings, config: dataset
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
    print(json.dumps({"units": units, "bare_s": epoch_time(bare), "ours_s": epoch_time(ours)}))


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


def trained_state(size, device="cpu"):
    """The transformer's full checkpoint state (config `size`) after one AdamW step, its
    tensors on `device` as in a run there (startup.build_training_objects, train_step)."""
    import torch
    import checkpoint as ckpt
    import antibody
    import models
    import startup
    from dataclasses import asdict
    torch.manual_seed(0)
    config = models.get_config("transformer", size)
    model = models.build_model(config).to(device)
    optimizer, scheduler = startup.build_optimizer(
        model, {"lr": 1e-4, "weight_decay": 0.01, "warmup_steps": 10, "lr_schedule": "constant",
                "epochs": 1}, 100)
    batch = antibody.SequenceData(antibody.synthetic_antibodies(2, 0), config.max_len).batch(
        torch.arange(2))
    model.loss({k: v.to(device) for k, v in batch.items()})[0].backward()
    optimizer.step()
    scheduler.step()
    return {"epoch": 0, "model_state_dict": model.state_dict(),
            "optimizer_state_dict": optimizer.state_dict(),
            "scheduler_state_dict": scheduler.state_dict(), "config": asdict(config),
            "rng_state": ckpt.capture_rng_state(device), "format_version": ckpt.FORMAT_VERSION}


def measure_copy_and_sync(folder, size, device="cpu"):
    import background_save
    import checkpoint as ckpt
    on_cuda = device == "cuda"
    state = trained_state(size, device)
    tensors = [t for t in _tensors(state)]
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    kept = [_host_buffer(t) for t in tensors]
    copy_times = []
    _synchronize(on_cuda)   # the training step's queued work is not the copy's
    for _ in range(7):
        started = time.perf_counter()
        _copy_into(kept, tensors, on_cuda)
        copy_times.append(time.perf_counter() - started)
    staging = background_save.StagingBuffers()
    staging.snapshot(state)
    snapshot_times = []
    for _ in range(7):
        started = time.perf_counter()
        staging.snapshot(state)
        # snapshot returns once its side streams' device-to-host copies are done (fill
        # synchronizes them); a whole-device wait, as the floor's, makes sure of it.
        _synchronize(on_cuda)
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


def cuda_visible():
    """Whether torch sees a CUDA device; quietly (torch warns when a driver is there but
    unusable, and the refusal is one line)."""
    import warnings
    import torch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.cuda.is_available()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="run every measurement on the tiny model, briefly (a test of the "
                             "benchmark, not a measurement)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where train.py and every measurement run (default cpu; cuda: "
                             "one NVIDIA GPU, the first visible)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        kind, *rest = options.child
        if kind == "train":
            return child_train(json.loads(rest[0]), saving=rest[1] == "saving")
        if kind == "first-step":
            return child_first_step(json.loads(rest[0]))
        if kind == "lightning":
            return child_lightning(json.loads(rest[0]), int(rest[1]))
        return child_throughput(json.loads(rest[0]), int(rest[1]))
    if options.device == "cuda" and not cuda_visible():
        print("bench_checkpoint: --device cuda: no CUDA device is visible here", file=sys.stderr)
        raise SystemExit(2)
    plan = SMOKE if options.smoke else FULL
    # Every train.py run gets the device: its default, auto, would take a GPU where there is
    # one, whatever the bench's own measurements run on.
    run = [*plan["run"], "--device", options.device]
    try:
        import lightning  # noqa: F401
        have_lightning = True
    except ImportError:
        have_lightning = False

    started = time.monotonic()
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        base = measure_copy_and_sync(work, plan["config"], options.device)
        phases = {"copy and sync": time.monotonic() - started}

        # Identical runs here differ by up to 5% (more than the effect measured): the saving
        # run goes between two runs without saving and is compared with their mean, which
        # cancels a drift of the machine's speed during the three runs.
        runs = {"saving": [], "nosave": []}
        for attempt, kind in enumerate(("nosave", "saving", "nosave")):
            folder = work / f"{kind}{attempt}"
            args = [*run, "--epochs", "1", "--checkpoint-dir", str(folder)]
            if kind == "saving":
                args += ["--checkpoint-every-steps", str(plan["save_every"])]
            result = run_child("train", json.dumps(args), kind)
            result["folder"] = folder
            runs[kind].append(result)
        with_saves = runs["saving"][0]
        save_dir = with_saves["folder"]
        name = f"transformer_{plan['config']}"
        progress = json.loads((save_dir / f"{name}_progress.json").read_text())
        stall = progress["checkpoint_stall"]
        phases["training runs"] = time.monotonic() - started - sum(phases.values())

        # Resume: the saving run's epoch-1 checkpoint, continued to epoch 2; fresh: a new run.
        repeats = plan["first_step_repeats"]
        resume_s = time_to_first_step([*run, "--epochs", "2", "--checkpoint-dir",
                                       str(save_dir)], repeats)
        fresh_s = time_to_first_step([*run, "--epochs", "2", "--checkpoint-dir",
                                      str(work / "fresh")], repeats)
        phases["resume"] = time.monotonic() - started - sum(phases.values())

        # A few epochs each: the shorter the measurement, the more a moment of noise weighs.
        tput = {model: run_child("throughput", json.dumps([*args, "--device", options.device]),
                                 str(attempts))
                for model, args, attempts in plan["throughput"]}
        phases["throughput"] = time.monotonic() - started - sum(phases.values())

        lightning_run = None
        # bench/lightning_baseline.py trains on the CPU (accelerator="cpu"): against a GPU
        # run it would compare devices, not saving. The table says it was skipped.
        if have_lightning and options.device == "cpu":
            lightning_run = run_child("lightning", json.dumps(plan["run"]),
                                      str(plan["save_every"]))
            phases["lightning"] = time.monotonic() - started - sum(phases.values())

    import torch
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if options.device == "cuda" else ""
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads{gpu}")
    rows, figures = report(base, runs, stall, resume_s, fresh_s, tput, lightning_run,
                           have_lightning, plan["save_every"], options.device)
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure':{width}} | value |")
    print(f"|{'-' * (width + 2)}|-------|")
    for label, value in rows:
        print(f"| {label:{width}} | {value} |")
    print(f"benchmark time: {time.monotonic() - started:.0f} s ("
          + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in phases.items()) + ")")
    print(" ".join(f"{k}={v}" for k, v in figures.items()))


def report(base, runs, stall, resume_s, fresh_s, tput, lightning_run, have_lightning,
           save_every, device="cpu"):
    """The table's rows and the last line's figures."""
    with_saves = runs["saving"][0]
    train_s = with_saves["train_s"]
    without_s = statistics.mean(r["train_s"] for r in runs["nosave"])
    raw_overhead = 100 * (train_s / without_s - 1)

    # Identical runs here differ by up to 5% in speed, each run evenly over all its steps:
    # more than the effect measured. So each run's wall time is also counted in its own mean
    # step (steps beside a background write left out), which cancels a run's speed. The mean,
    # not the median: the steps' sum is what makes the wall time, and a run's median step is
    # not in a fixed ratio to its mean (measured: a saving run with a 3% faster median step and
    # the same mean came out 2 points worse when counted in median steps).
    def quiet_step(run):
        return statistics.mean(t for t, writing in run["steps"] if not writing)

    def in_steps(run):
        return run["train_s"] / quiet_step(run)

    def outside_steps(run):
        """The run's time outside its steps, validation and the final wait: start-up, and for
        the saving run the wait for its staging buffers, the stalls and the saves'
        bookkeeping."""
        return (run["train_s"] - sum(t for t, _ in run["steps"]) - sum(run["eval_s"])
                - sum(run["final_wait_s"]))

    overhead = 100 * (in_steps(with_saves) / statistics.mean(map(in_steps, runs["nosave"])) - 1)
    copy_in_run = statistics.mean(with_saves["copy_s"])
    stall_vs_copy = stall["mean_s"] / copy_in_run
    stall_vs_sync = base["sync_s"] / stall["mean_s"]
    # What saving cost inside the saving run itself, free of the run-to-run noise: the steps
    # that ran beside a background write against the run's mean step, the extra time outside
    # the steps against the runs without saving, and the wait for the last write.
    during = [t for t, writing in with_saves["steps"] if writing]
    quiet = quiet_step(with_saves)
    slowed = sum(t - quiet for t in during)
    final_wait = sum(with_saves["final_wait_s"])
    outside = outside_steps(with_saves) - statistics.mean(map(outside_steps, runs["nosave"]))
    prepare = sum(with_saves["prepare_s"])
    stalled = stall["mean_s"] * stall["saves"]
    accounted = slowed + outside + final_wait
    rss_saving = with_saves["peak_rss_mb"]
    rss_nosave = max(r["peak_rss_mb"] for r in runs["nosave"])
    on_cuda = device == "cuda"
    resume_vs_fresh = resume_s / fresh_s
    ratios = {m: t["bare_s"] / t["ours_s"] for m, t in tput.items()}
    snapshot_mb = base["state_bytes"] / 1e6
    all_nosave = " / ".join(f"{r['train_s']:.1f}" for r in runs["nosave"])
    kept = "kept pinned host buffers" if on_cuda else "kept buffers"
    rows = [
        ("transformer state (model + AdamW)", f"{snapshot_mb:.0f} MB "
                                              f"(file {base['file_bytes'] / 1e6:.0f} MB)"),
        (f"copy_ into {kept} (quiet process)", f"{1000 * base['copy_s']:.1f} ms"),
        (f"copy_ into {kept} (in the training run, just before each save)",
         f"{1000 * copy_in_run:.1f} ms"),
        ("StagingBuffers.snapshot (same, walking the state)",
         f"{1000 * base['snapshot_s']:.1f} ms"),
        ("synchronous save_checkpoint (torch.save + CRC-32 + fsync)",
         f"{1000 * base['sync_s']:.0f} ms"),
        (f"train.py stall per save ({stall['saves']} saves; mean / max)",
         f"{1000 * stall['mean_s']:.1f} / {1000 * stall['max_s']:.1f} ms"),
        ("stall / copy", f"{stall_vs_copy:.2f}x"),
        ("sync / stall", f"{stall_vs_sync:.0f}x"),
        ("start-up, from train.main to the first step: saving / no saving",
         f"{with_saves['startup_s']:.2f} s / "
         f"{statistics.mean(r['startup_s'] for r in runs['nosave']):.2f} s"),
        (f"start-up + {len(with_saves['steps'])} steps + epoch end: saving every {save_every} / "
         "no saving (mean of the runs before and after)",
         f"{train_s:.1f} s / {without_s:.1f} s ({raw_overhead:+.1f}%; no saving: {all_nosave} s)"),
        ("the same, each run counted in its own mean step (cancels the runs' speeds)",
         f"{in_steps(with_saves):.1f} / "
         f"{' and '.join(f'{in_steps(r):.1f}' for r in runs['nosave'])} steps ({overhead:+.1f}%)"),
        ("in the saving run: steps beside a write slowed by / outside the steps (wait for the "
         "buffers' memory + stalls + rest) / last write waited for",
         f"{slowed:.2f} s ({len(during)} steps; mean step {quiet:.2f} s) / "
         f"{outside:.2f} s ({prepare:.2f} + {stalled:.2f} + rest) / {final_wait:.2f} s "
         f"= {accounted:.2f} s ({100 * accounted / (train_s - accounted):.1f}% of the run)"),
        ("peak RSS of the training process: saving / no saving",
         f"{rss_saving:.0f} MB / {rss_nosave:.0f} MB (+{rss_saving - rss_nosave:.0f} MB; "
         f"snapshot {snapshot_mb:.0f} MB)"),
        *gpu_memory_rows(runs, on_cuda),
        ("process start to first step: resume / fresh", f"{resume_s:.2f} s / {fresh_s:.2f} s"),
        ("transformer tiny: train.py / bare tokens/s",
         f"{tput['transformer']['units'] / tput['transformer']['ours_s']:.0f} / "
         f"{tput['transformer']['units'] / tput['transformer']['bare_s']:.0f} "
         f"({ratios['transformer']:.3f})"),
        ("gnn tiny: train.py / bare graphs/s",
         f"{tput['gnn']['units'] / tput['gnn']['ours_s']:.0f} / "
         f"{tput['gnn']['units'] / tput['gnn']['bare_s']:.0f} ({ratios['gnn']:.3f})"),
    ]
    if lightning_run is None:
        if not have_lightning:
            why = "skipped: lightning is not installed"
        elif on_cuda:
            why = "skipped on --device cuda: bench/lightning_baseline.py trains on the CPU"
        else:
            why = "-"
        rows.append(("Lightning ModelCheckpoint, same steps", why))
    else:
        saves = lightning_run["saves_s"]
        ours = with_saves["loop_s"] - sum(with_saves["eval_s"])
        rows += [
            (f"Lightning ModelCheckpoint, same steps: stall per save ({len(saves)} saves; "
             "mean / max) / ours",
             f"{1000 * statistics.mean(saves):.0f} / {1000 * max(saves):.0f} ms / "
             f"{1000 * stall['mean_s']:.1f} ms ({statistics.mean(saves) / stall['mean_s']:.0f}x)"),
            ("Lightning / train.py: wall time of the steps and saves (validation and sampling "
             "left out)",
             f"{lightning_run['fit_s']:.1f} s / {ours:.1f} s "
             f"({lightning_run['steps']} / {len(with_saves['steps'])} steps)"),
        ]
    figures = {"stall_vs_copy": f"{stall_vs_copy:.2f}", "stall_vs_sync": f"{stall_vs_sync:.1f}",
               "overhead": f"{overhead:.1f}%", "resume_vs_fresh": f"{resume_vs_fresh:.2f}",
               "throughput_vs_bare": f"{min(ratios.values()):.3f}"}
    return rows, figures


def gpu_memory_rows(runs, on_cuda):
    """On a GPU, the training runs' peak GPU memory; nothing on the CPU."""
    if not on_cuda:
        return []
    saving = runs["saving"][0]["peak_gpu_mb"]
    nosave = max(r["peak_gpu_mb"] for r in runs["nosave"])
    return [("peak GPU memory of the training process (max_memory_allocated): saving / "
             "no saving", f"{saving:.0f} MB / {nosave:.0f} MB ({saving - nosave:+.0f} MB)")]


if __name__ == "__main__":
    main()
