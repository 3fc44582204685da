"""Write built-in tight-binding DNA data of chosen lengths to a CSV that `--data` reads: for
instance a training set of short duplexes and an extrapolation set of longer ones.

    python bench/dna_data.py train_4-8.csv --lengths 4-8 --count 4000 --seed 0
    python bench/dna_data.py test_11-16.csv --lengths 11-16 --count 500 --seed 1

The duplexes are drawn as the built-in set draws them (dna.synthetic_duplexes: uniform length
in the range, uniform bases, each complementary base missing with probability --missing-rate)
and their spectra computed by tight_binding.log_spectra on the built-in grid (100 energies,
-3..3 eV, contacts on the primary strand's 5' and 3' bases at 0.1 eV). The file holds the
grid in its `energy_eV` row, so a model trained on it predicts on the same energies.
"""

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import dna  # noqa: E402
import tight_binding  # noqa: E402
from families.gnn import predictions_csv  # noqa: E402   the --data CSV format


def write_dna_csv(path, count, min_length, max_length, seed, missing_rate=0.1, energies=100):
    """Generate `count` duplexes of min_length..max_length bp and write them with their
    spectra; returns (duplexes, spectra (N, 2, E), grid)."""
    duplexes = dna.synthetic_duplexes(count, seed, min_length, max_length, missing_rate)
    grid = tight_binding.default_energy_grid(energies)
    spectra = tight_binding.log_spectra(duplexes, grid)
    Path(path).write_text(predictions_csv(duplexes, spectra, grid))
    return duplexes, spectra, grid


def lengths(text):
    low, _, high = text.partition("-")
    try:
        low, high = int(low), int(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not MIN-MAX (e.g. 11-16)") from None
    if not 1 <= low <= high:
        raise argparse.ArgumentTypeError(f"{text!r}: need 1 <= MIN <= MAX")
    return low, high


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help="the CSV to write")
    parser.add_argument("--lengths", type=lengths, default=(4, 10), metavar="MIN-MAX",
                        help="duplex lengths in base pairs (default 4-10, the built-in set's)")
    parser.add_argument("--count", type=int, default=2000, help="number of duplexes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--missing-rate", type=float, default=0.1,
                        help="chance that a complementary base is absent (default 0.1)")
    options = parser.parse_args()
    duplexes, _, grid = write_dna_csv(options.output, options.count, *options.lengths,
                                      options.seed, options.missing_rate)
    print(f"{options.output}: {len(duplexes)} duplexes of {options.lengths[0]}-"
          f"{options.lengths[1]} bp, {len(grid)} energies from {grid[0]:g} to {grid[-1]:g} eV")


if __name__ == "__main__":
    main()
