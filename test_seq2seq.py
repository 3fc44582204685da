"""The antigen- and affinity-conditioned antibody model (--model seq2seq), paired chains, the
decoding methods, and the training controls that came with them: fixed splits and a test
score, --max-samples, --early-stopping across a resume, --label-smoothing."""

import json
import signal

import pytest
import torch

import antibody
import decoding
import models
import synthetic_binders
from conftest import (GNN_ARGS, SEQ2SEQ_ARGS, TRANSFORMER_ARGS, TrainProcess, assert_same_run,
                      load, run_main, run_train)


def tiny_model(**changes):
    torch.manual_seed(0)
    config = models.get_config("seq2seq", "tiny", dropout=0.0, **changes)
    return models.build_model(config).eval()


def batch_of(records):
    data = antibody.ConditionedData([r[0] for r in records], [r[1] for r in records],
                                    [r[2] for r in records], 264, 640)
    return data.batch(torch.arange(len(records)))


RECORDS = synthetic_binders.synthetic_binder_records(6, seed=3)


def test_a_pair_round_trips_through_the_tokenizer_with_sep():
    pair = "EVQLVESGG|DIQMTQSP"
    tokens = antibody.encode(pair)
    assert tokens[0] == antibody.BOS_ID and tokens[-1] == antibody.EOS_ID
    assert tokens.count(antibody.SEP_ID) == 1 and tokens.index(antibody.SEP_ID) == 10
    assert antibody.decode(tokens[1:]) == pair
    assert antibody.VOCAB_SIZE == 25


def test_the_size_table_is_the_seeds():
    shapes = {name: (c.d_model, c.n_layers, c.n_heads, c.d_ff)
              for name, c in models.CONFIGS["seq2seq"].items()}
    assert shapes == {"tiny": (128, 2, 4, 512), "small": (256, 3, 8, 1024),
                      "medium": (512, 6, 8, 2048), "large": (768, 8, 12, 3072)}
    with torch.device("meta"):
        counts = {name: models.count_parameters(models.build_model(c))
                  for name, c in models.CONFIGS["seq2seq"].items()}
    assert counts == {"tiny": 1_082_112, "small": 5_907_968, "medium": 45_157_376,
                      "large": 134_238_720}


def test_the_antigen_and_the_pkd_change_the_logits_and_a_missing_one_is_masked():
    model = tiny_model()
    batch = batch_of([(RECORDS[0][0], "ACDEFGHIKLMN", 7.0)])
    base = model.loss(batch)[0]
    other_pkd = dict(batch, pkd=torch.tensor([9.0]))
    other_antigen = dict(batch, antigen=antibody.condition("MNLKIHGFEDCA", 7.0, 640)["antigen"])
    assert model.loss(other_pkd)[0] != base
    assert model.loss(other_antigen)[0] != base
    # Without the condition, what its tensors hold does not matter.
    blind = dict(batch, has_antigen=torch.tensor([False]), has_pkd=torch.tensor([False]))
    blind_other = dict(other_antigen, pkd=torch.tensor([9.0]), has_antigen=torch.tensor([False]),
                       has_pkd=torch.tensor([False]))
    assert torch.equal(model.loss(blind)[0], model.loss(blind_other)[0])
    assert model.loss(blind)[0] != base


def test_condition_dropout_off_reproduces_the_conditioned_path_and_on_the_none_path():
    batch = batch_of(RECORDS)
    conditioned = tiny_model().loss(batch)[0]
    none = tiny_model().loss(dict(batch, has_antigen=torch.zeros(6, dtype=torch.bool),
                                  has_pkd=torch.zeros(6, dtype=torch.bool)))[0]
    off = tiny_model(condition_dropout=0.0, label_smoothing=0.0).train()
    assert torch.equal(off.loss(batch)[0], conditioned)
    always = tiny_model(condition_dropout=1.0, label_smoothing=0.0).train()
    assert torch.equal(always.loss(batch)[0], none)


def test_sampling_with_the_cache_gives_the_full_forward_pass_logits():
    model = tiny_model()
    condition = antibody.condition("ACDEFGHIKLMNPQ", 8.0, 640)
    encoded = model.encode(condition["antigen"], condition["has_antigen"], condition["pkd"],
                           condition["has_pkd"])
    tokens = torch.tensor([antibody.encode("EVQL|DIQ")[:-1]])
    full = model(tokens, encoded)
    state = model.start_decoding(1, condition)
    stepped = torch.stack([model.next_logits(state, tokens[:, i:i + 1], i)
                           for i in range(tokens.shape[1])], dim=1)
    torch.testing.assert_close(stepped, full, rtol=0, atol=1e-5)


def test_greedy_and_beam_decoding_are_deterministic_and_a_beam_of_one_follows_greedy():
    model = tiny_model()
    condition = antibody.condition("ACDEFGHIKLMNPQ", 8.0, 640)
    greedy = decoding.Decoding("greedy")
    a = model.generate(1, None, condition, greedy, max_len=30)
    assert torch.equal(a, model.generate(1, None, condition, greedy, max_len=30))
    beam = decoding.Decoding("beam", beam_size=4)
    b = model.generate(3, None, condition, beam, max_len=30)
    assert b.shape[0] == 3 and torch.equal(b, model.generate(3, None, condition, beam,
                                                               max_len=30))
    # A beam of one follows the greedy path; it may end it earlier, where ending outscores
    # every longer sequence it went on to see.
    one = model.generate(1, None, condition, decoding.Decoding("beam", beam_size=1), max_len=30)
    ends = (one[0] == antibody.EOS_ID).nonzero()
    width = int(ends[0]) if len(ends) else one.shape[1]
    assert torch.equal(one[0, :width], a[0, :width])


def test_top_k_one_is_greedy():
    model = tiny_model()
    condition = antibody.condition(None, 8.0, 640)
    sampled = model.generate(2, torch.Generator().manual_seed(1), condition,
                             decoding.Decoding(top_k=1), max_len=25)
    greedy = model.generate(1, None, condition, decoding.Decoding("greedy"), max_len=25)
    assert torch.equal(sampled[0], greedy[0]) and torch.equal(sampled[1], greedy[0])


def write_csv(path, records):
    lines = ["antibody_sequence,antigen_sequence,pKd"]
    lines += [f"{a},{g or ''},{'' if p is None else p}" for a, g, p in records]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_fixed_splits_train_validate_and_score_the_test_set_once(tmp_path):
    records = synthetic_binders.synthetic_binder_records(60, seed=1)
    train = write_csv(tmp_path / "train.csv", records[:40])
    val = write_csv(tmp_path / "val.csv", records[40:50])
    jsonl = tmp_path / "test.jsonl"
    jsonl.write_text("".join(json.dumps({
        "antibody_heavy": a.split("|")[0], "antibody_light": a.split("|")[1],
        "antigen_sequence": g, "pKd": p}) + "\n" for a, g, p in records[50:]))
    result = run_train([*SEQ2SEQ_ARGS, "--epochs", 2, "--train-data", train, "--val-data", val,
                        "--test-data", jsonl], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "(40 train, 10 validation)" in result.stdout
    progress = json.loads((tmp_path / "checkpoints/seq2seq_tiny_progress.json").read_text())
    test = progress["test"]
    assert test["samples"] == 10 and test["epoch"] == progress["best_epoch"]
    assert test["measures"]["perplexity"] == pytest.approx(2.718281828 ** test["loss"])
    status = (tmp_path / "checkpoints/seq2seq_tiny_status.txt").read_text()
    assert f"Test: loss {test['loss']:.4f}" in status
    assert result.stdout.count("Test set (10 samples") == 1


def test_max_samples_keeps_the_first_records(tmp_path):
    result = run_train([*TRANSFORMER_ARGS, "--epochs", 1, "--max-samples", 50], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "(45 train, 5 validation)" in result.stdout


EARLY = [*GNN_ARGS, "--num-samples", 200, "--epochs", 12, "--early-stopping", 2, "--lr", 0.1]


def test_early_stopping_continues_its_count_across_a_kill(tmp_path):
    """Validation loss is best at epoch 3 and not better at 4 and 5: patience 2 stops at 5.
    A SIGKILL in epoch 5 (one epoch into the window) and a rerun stop at the same epoch, with
    the same checkpoint, as a run never killed; rerun once more, there is nothing to do."""
    whole = tmp_path / "whole"
    whole.mkdir()
    uninterrupted = run_train(EARLY, whole)
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    assert "Stopped early at epoch 5: no improvement for 2 epochs" in uninterrupted.stdout
    killed = run_train(EARLY, tmp_path, fault="step:54")   # 12 steps an epoch: epoch 5
    assert killed.returncode == -9
    state = load(tmp_path / "checkpoints/gnn_tiny_latest.pt")
    assert state["epoch"] == 4 and state["epochs_without_improvement"] == 1
    rerun = run_train(EARLY, tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert "Stopped early at epoch 5" in rerun.stdout
    final = load(tmp_path / "checkpoints/gnn_tiny_latest.pt")
    assert_same_run(final, load(whole / "checkpoints/gnn_tiny_latest.pt"))
    assert final["stopped_early"] == 5
    status = (tmp_path / "checkpoints/gnn_tiny_status.txt").read_text()
    assert "State: stopped early at epoch 5 (no improvement for 2 epochs" in status
    again = run_train(EARLY, tmp_path)
    assert again.returncode == 0
    assert ("stopped early at epoch 5 (no improvement for 2 epochs): nothing to do"
            in again.stdout)


def test_label_smoothing_is_of_the_training_loss_only():
    model = tiny_model(label_smoothing=0.0)
    smoothed = tiny_model(label_smoothing=0.3, condition_dropout=0.0)
    batch = batch_of(RECORDS)
    assert torch.equal(model.loss(batch)[0], smoothed.loss(batch)[0])   # both in eval mode
    assert smoothed.train().loss(batch)[0] != model.loss(batch)[0]


def test_sigusr1_saves_and_the_rerun_is_the_uninterrupted_run(tmp_path, references):
    args = [*SEQ2SEQ_ARGS, "--epochs", 4, "--checkpoint-every-steps", 3]
    run = TrainProcess(args, tmp_path)
    run.wait_for("Checkpoint saved")
    run.send(signal.SIGUSR1)
    assert run.finish() == 128 + signal.SIGUSR1, run.output
    resumed = run_train(args, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(load(tmp_path / "checkpoints/seq2seq_tiny_latest.pt"),
                    references.get("seq2seq", 4))


@pytest.fixture(scope="module")
def seq2seq_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seq2seq_run")
    result = run_train([*SEQ2SEQ_ARGS, "--epochs", 1], folder)
    assert result.returncode == 0, result.stderr
    return folder / "checkpoints"


def test_conditioned_sampling_writes_pairs_with_their_condition(seq2seq_run, tmp_path,
                                                               capsys):
    antigens = tmp_path / "antigens.fasta"
    held_out = synthetic_binders.held_out_antigens(2, seed=0)
    antigens.write_text(f">first\n{held_out[0][0]}\n>second\n{held_out[1][0]}\n")
    out = tmp_path / "pairs.fasta"
    args = ["--sample", 3, "--antigen", antigens, "--pkd", 8.5, "--checkpoint-dir", seq2seq_run,
            "--model", "seq2seq", "--output", out, "--top-k", 10]
    assert run_main(args) == 0
    report = capsys.readouterr().out
    assert "Sampled 6 pairs from" in report and "antigen first, second, pKd 8.5" in report
    assert "top-k 10" in report and "validity" in report and "heavy" in report
    headers = [line for line in out.read_text().splitlines() if line.startswith(">")]
    assert headers[0] == ">sample_1 antigen=first pKd=8.5" and len(headers) == 6
    assert headers[-1] == ">sample_6 antigen=second pKd=8.5"


@pytest.mark.parametrize("args, message", [
    (["--antigen", "ACDXZ1"], "--antigen ACDXZ1: '1XZ' are not amino acids"),
    (["--decode", "beam", "--beam-size", 2], "--decode beam gives at most --beam-size (2)"),
    (["--top-k", -1], "--top-k must be 0 (all tokens) or more"),
])
def test_bad_sampling_flags_are_one_line_each(seq2seq_run, args, message, capsys):
    assert run_main(["--sample", 3, "--model", "seq2seq", "--checkpoint-dir", seq2seq_run,
                     *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


@pytest.mark.parametrize("args, message", [
    (["--label-smoothing", 0.1, *GNN_ARGS], "--label-smoothing does not apply to a gnn model"),
    (["--max-antigen-length", 100], "--max-antigen-length does not apply to a transformer"),
    (["--val-data", "x.csv"], "--val-data goes with --train-data"),
    (["--data", "a.csv", "--train-data", "b.csv"], "--data and --train-data both name"),
    (["--label-smoothing", 1.0], "--label-smoothing must be at least 0 and below 1"),
    (["--dropout", 1.0], "--dropout must be at least 0 and below 1"),
])
def test_bad_training_flags_are_refused_before_anything_is_written(tmp_path, args, message,
                                                                   capsys):
    assert run_main([*args, "--epochs", 1]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "checkpoints").exists()


def test_dropout_is_part_of_the_run(tmp_path, capsys):
    """--dropout replaces the size table's in the config; a resume without the flag keeps the
    run's, a resume that asks for another is refused."""
    folder = tmp_path / "runs"
    base = [*SEQ2SEQ_ARGS, "--checkpoint-dir", folder, "--eval-samples", 4]
    assert run_main([*base, "--dropout", 0, "--epochs", 1]) == 0
    state = torch.load(folder / "seq2seq_tiny_latest.pt", weights_only=True)
    assert state["config"]["dropout"] == 0.0
    assert models.get_config("seq2seq", "tiny").dropout == 0.1
    assert run_main([*base, "--epochs", 2]) == 0
    state = torch.load(folder / "seq2seq_tiny_latest.pt", weights_only=True)
    assert state["epoch"] == 2 and state["config"]["dropout"] == 0.0
    capsys.readouterr()
    assert run_main([*base, "--epochs", 3, "--dropout", 0.2]) == 2
    err = capsys.readouterr().err
    assert "dropout (checkpoint 0.0, requested 0.2)" in err and err.count("\n") == 1, err


def test_antigens_longer_than_the_maximum_are_cropped_with_one_counted_warning(tmp_path):
    records = synthetic_binders.synthetic_binder_records(20, seed=2)
    records = [(a, (g or "ACDEFGHIKL") * 5, p) for a, g, p in records]
    data = write_csv(tmp_path / "long.csv", records)
    result = run_train([*SEQ2SEQ_ARGS, "--data", data, "--epochs", 1,
                        "--max-antigen-length", 300], tmp_path)
    assert result.returncode == 0, result.stderr
    longest = max(len(g) for _, g, _ in records)
    count = sum(len(g) > 300 for _, g, _ in records)
    assert 0 < count < 20   # some antigens are cropped, some not
    warnings = [line for line in result.stderr.splitlines() if "cropped" in line]
    assert warnings == [f"warning: {count} antigen(s) longer than 300 residues (the longest "
                        f"{longest}) are cropped to their first 300 (--max-antigen-length)"]
