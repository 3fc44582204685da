"""The same training under PyTorch Lightning, with its ModelCheckpoint saving at the same
steps, for bench_checkpoint.py. Optional: only imported when `lightning` is installed.

Same model, optimizer, schedule, gradient clipping and batches (the epoch's seeded order) as
train.py. Lightning's ModelCheckpoint saves synchronously: `trainer.save_checkpoint` runs
torch.save into memory, then writes the file (without fsync). The training loop waits for the
whole save; each save's duration is measured around `Trainer.save_checkpoint`.
"""

import time
import warnings


def train_with_lightning(model_args, folder, every_n_steps):
    """Train one epoch; returns {"fit_s", "saves_s": [...], "steps"}."""
    import logging

    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    import data
    import families
    import models
    import settings as run_settings
    import startup
    import train

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")   # its advice on DataLoader workers, loggers, ...

    explicit = run_settings.explicit_flags(train.build_parser().parse_args(model_args))
    settings = run_settings.merge_settings(explicit, None)
    config = models.get_config(settings["model"], settings["config"])
    dataset = families.get(config.model).load_dataset(settings, config)
    torch.manual_seed(settings["seed"])
    model = models.build_model(config)
    size = settings["batch_size"]
    order = dataset.train[data.epoch_order(len(dataset.train), settings["seed"], 1)]
    batches = [order[i:i + size] for i in range(0, len(order), size)]

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model

        def training_step(self, batch, batch_index):
            return self.model.loss(batch)[0]

        def configure_optimizers(self):
            optimizer, scheduler = startup.build_optimizer(self.model, settings, len(batches))
            return {"optimizer": optimizer,
                    "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    loader = torch.utils.data.DataLoader(batches, batch_size=None,
                                         collate_fn=dataset.data.batch)
    saves = []
    original_save = pl.Trainer.save_checkpoint

    def timed_save(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return original_save(self, *args, **kwargs)
        finally:
            saves.append(time.perf_counter() - started)

    pl.Trainer.save_checkpoint = timed_save
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
        gradient_clip_val=settings["grad_clip"] or None, default_root_dir=str(folder),
        callbacks=[ModelCheckpoint(dirpath=str(folder), every_n_train_steps=every_n_steps,
                                   save_top_k=-1)])
    started = time.perf_counter()
    trainer.fit(Module(), train_dataloaders=loader)
    return {"fit_s": time.perf_counter() - started, "saves_s": saves,
            "steps": trainer.global_step}
