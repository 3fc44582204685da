"""What sampled antibodies are worth, for both antibody families: validity per chain and per
pair, uniqueness, novelty, the kappa:lambda mix, and how far their amino-acid composition
and lengths are from the training data's (Jensen-Shannon divergence, 0 = the same).

Heavy-chain-only data is measured as before: validity is the heavy-chain rule.
"""

import metrics
from antibody import CHAIN_SEPARATOR

# The history's columns these measures fill, in the order of the summary line.
MEASURES = ("validity", "validity_heavy", "validity_light", "diversity", "novelty",
            "kappa_share", "kappa_share_training", "composition_js", "length_js")


class TrainingReference:
    """What sampled sequences are compared with: the training sequences, computed once."""

    def __init__(self, sequences):
        self.sequences = list(sequences)
        self.known = set(self.sequences)
        self.paired = any(CHAIN_SEPARATOR in s for s in self.sequences)
        lights = [light_of(s) for s in self.sequences if light_of(s)]
        self.kappa_share = metrics.kappa_share(lights) if lights else None


def light_of(pair):
    """The light chain of "HEAVY|LIGHT" ('' when there is none)."""
    return pair.split(CHAIN_SEPARATOR, 1)[1] if CHAIN_SEPARATOR in pair else ""


def heavy_of(pair):
    return pair.split(CHAIN_SEPARATOR, 1)[0]


def measure(sequences, reference):
    """The measures of `sequences` (0-1 shares and divergences; None where they do not
    apply, e.g. light-chain measures for heavy-chain data)."""
    result = dict.fromkeys(MEASURES)
    if reference.paired:
        shares = metrics.pair_validity(sequences)
        result.update(validity=shares["pair"], validity_heavy=shares["heavy"],
                      validity_light=shares["light"])
        lights = [light_of(s) for s in sequences if light_of(s)]
        result["kappa_share"] = metrics.kappa_share(lights) if lights else None
        result["kappa_share_training"] = reference.kappa_share
    else:
        result["validity"] = metrics.validity(sequences)
    result["diversity"] = metrics.diversity(sequences)
    result["novelty"] = (sum(s not in reference.known for s in sequences) / len(sequences)
                         if sequences else 0.0)
    result["composition_js"] = metrics.composition_divergence(sequences, reference.sequences)
    result["length_js"] = metrics.length_divergence(sequences, reference.sequences)
    return result


def percent(value):
    return "n/a" if value is None else f"{100 * value:.1f}%"


def summary_parts(measures):
    """Pieces of the epoch's summary line for the measures taken."""
    parts = []
    if measures.get("validity") is None:
        return parts
    if measures.get("validity_heavy") is not None:
        parts.append(f"validity {percent(measures['validity'])} "
                     f"(H {percent(measures['validity_heavy'])}, "
                     f"L {percent(measures['validity_light'])})")
    else:
        parts.append(f"validity {percent(measures['validity'])}")
    parts.append(f"diversity {percent(measures['diversity'])}")
    parts.append(f"novelty {percent(measures['novelty'])}")
    if measures.get("kappa_share") is not None:
        parts.append(f"kappa {percent(measures['kappa_share'])} (training "
                     f"{percent(measures.get('kappa_share_training'))})")
    if measures.get("composition_js") is not None:
        parts.append(f"JS aa {measures['composition_js']:.3f}, length {measures['length_js']:.3f}")
    return parts


def latest(history, key):
    return next((v for v in reversed(history.get(key, [])) if v is not None), None)


def status_lines(history):
    """The status file's lines for the latest sampled measures."""
    if latest(history, "validity") is None:
        return []   # before the first sampling
    lines = [f"Validity: {percent(latest(history, 'validity'))}"]
    if latest(history, "validity_heavy") is not None:
        lines[0] += (f" of pairs (heavy {percent(latest(history, 'validity_heavy'))}, light "
                     f"{percent(latest(history, 'validity_light'))})")
    lines.append(f"Diversity: {percent(latest(history, 'diversity'))}")
    if latest(history, "kappa_share") is not None:
        lines.append(f"Kappa share: {percent(latest(history, 'kappa_share'))} of sampled light "
                     f"chains (training data {percent(latest(history, 'kappa_share_training'))})")
    if latest(history, "composition_js") is not None:
        lines.append(f"Divergence from training data (JS): amino acids "
                     f"{latest(history, 'composition_js'):.3f}, lengths "
                     f"{latest(history, 'length_js'):.3f}")
    return lines


def report(sequences, reference, training_size=None):
    """The --sample report's quality part: validity (rule, and IMGT with anarcism),
    uniqueness, novelty and, for pairs, the kappa share against the training data's."""
    m = measure(sequences, reference) if reference else None
    if reference is None:
        paired = any(CHAIN_SEPARATOR in s for s in sequences)
    else:
        paired = reference.paired
    if paired:
        shares = metrics.pair_validity(sequences)
        text = (f"validity {percent(shares['pair'])} of pairs (heavy {percent(shares['heavy'])},"
                f" light {percent(shares['light'])}; built-in rule check)")
        imgt = metrics.imgt_pair_validity(sequences)
        text += (" (IMGT check not run: pip install anarcism to add it)" if imgt is None else
                 f", {percent(imgt['pair'])} of pairs by IMGT (heavy {percent(imgt['heavy'])},"
                 f" light {percent(imgt['light'])}: anarcism numbers each chain as one human "
                 f"domain of its type with its anchors)")
    else:
        text = f"validity {percent(metrics.validity(sequences))} (built-in rule check)"
        imgt = metrics.imgt_validity(sequences)
        text += (" (IMGT check not run: pip install anarcism to add it)" if imgt is None else
                 f", {percent(imgt)} (IMGT: anarcism numbers one human VH domain with "
                 f"Cys23, Trp41, Cys104, Trp118)")
    text += f", uniqueness {percent(metrics.diversity(sequences))}"
    if m is not None:
        text += (f", novelty {percent(m['novelty'])} (not among the "
                 f"{training_size or len(reference.sequences)} training sequences)")
        if paired and m["kappa_share"] is not None:
            text += (f", kappa {percent(m['kappa_share'])} (training data "
                     f"{percent(reference.kappa_share)})")
    return text
