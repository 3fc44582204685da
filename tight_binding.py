"""DNA charge transport: one-orbital-per-base tight binding with wide-band contacts, in torch.

A duplex is a primary strand (5'->3', bases 0..L-1) and its complementary strand written 5'->3',
whose base j pairs with primary base L-1-j; a complementary base may be missing ('-'). Each base
present is one site with one orbital:

    H_ii = onsite energy of the base              (Roche, PRL 91, 108101, 2003)
    H_ij = H_ji = intra-strand coupling of the    (Voityuk et al., JCP 114, 5614, 2001)
                  5'->3' neighbour pair (i, j) on either strand
    H_ij = H_ji = hydrogen-bond coupling of a base pair (A-T 0.034 eV, G-C 0.050 eV)

The electrodes are wide-band: site i couples to the left (right) electrode with a constant
broadening gamma_L,i (gamma_R,i), i.e. a self-energy Sigma_L = -i diag(gamma_L)/2 (likewise R)
that does not depend on energy. The retarded Green's function and the observables are

    G(E)   = [(E + i eta) I - H - Sigma_L - Sigma_R]^-1
    T(E)   = Tr[Gamma_L G Gamma_R G^dagger] = sum_ij gamma_L,i |G_ij|^2 gamma_R,j
    DOS(E) = -Im Tr G / pi,        LDOS_i(E) = -Im G_ii / pi

with Gamma = diag(gamma). The built-in data set contacts the primary strand's 5' site (index 0)
on the left and its 3' site (index L-1) on the right, both with GAMMA, so T = GAMMA^2
|G_{0,L-1}|^2.

`wide_band_negf` is the batched, differentiable core: a model's NEGF layer and the data generator
(`transport_spectra`, `log_spectra`) run the same code.
"""

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

# On-site energies in eV (Roche, PRL 91, 108101, 2003).
ONSITE = {"G": 0.00, "A": -0.49, "C": -1.12, "T": -1.39}
# Intra-strand couplings in eV for a 5'->3' neighbour pair (Voityuk et al., JCP 114, 5614, 2001).
INTRA_STRAND = {
    "AA": .030, "AT": .105, "AG": .049, "AC": .061, "TA": .086, "TT": .158, "TG": .085,
    "TC": .076, "GA": .089, "GT": .137, "GG": .084, "GC": .110, "CA": .029, "CT": .100,
    "CG": .042, "CC": .041,
}
HYDROGEN_BOND = {"AT": .034, "TA": .034, "GC": .050, "CG": .050}
COMPLEMENT = {"A": "T", "T": "A", "G": "C", "C": "G"}
GAMMA = 0.1    # wide-band contact coupling, eV
ETA = 1e-12    # infinitesimal broadening, eV
MISSING = "-"  # a complementary base that is absent

# Complex work space per chunk of G, in elements (16 bytes each in complex128: ~64 MB); chunking
# the batch by it keeps memory flat for any number of duplexes.
_WORK_ELEMENTS = 4_000_000


def default_energy_grid(points=100):
    return np.linspace(-3.0, 3.0, points)


def full_complement(primary):
    """The complementary strand written 5'->3': base j pairs with primary base L-1-j."""
    return "".join(COMPLEMENT[b] for b in reversed(primary))


def duplex_sites(primary, complement):
    """Sites of a duplex: primary bases 0..L-1 then the complementary bases that are present.

    Returns:
        (bases, couplings) with `bases` the base letter of each site and `couplings` a list of
        (site_i, site_j, eV, kind) for kind in "backbone" (i is 5' of j) and "hbond".
    """
    L = len(primary)
    bases = list(primary)
    comp_site = {}
    for j, b in enumerate(complement):
        if b != MISSING:
            comp_site[j] = len(bases)
            bases.append(b)
    couplings = [(i, i + 1, INTRA_STRAND[primary[i] + primary[i + 1]], "backbone")
                 for i in range(L - 1)]
    for j in range(L - 1):
        if j in comp_site and j + 1 in comp_site:
            pair = complement[j] + complement[j + 1]
            couplings.append((comp_site[j], comp_site[j + 1], INTRA_STRAND[pair], "backbone"))
    for j, site in comp_site.items():
        i = L - 1 - j
        couplings.append((i, site, HYDROGEN_BOND[primary[i] + complement[j]], "hbond"))
    return bases, couplings


def _hamiltonian_rows(primary, complement):
    # Plain nested lists: filling a torch tensor element by element costs microseconds per
    # element, which dominates when thousands of duplexes are built.
    bases, couplings = duplex_sites(primary, complement)
    rows = [[0.0] * len(bases) for _ in bases]
    for i, b in enumerate(bases):
        rows[i][i] = ONSITE[b]
    for i, j, t, _ in couplings:
        rows[i][j] = rows[j][i] = t
    return rows


@dataclass(frozen=True)
class Contact:
    """One electrode-to-base coupling: `base` is the 0-based 5'->3' index on `strand`."""
    electrode: str      # "left" | "right"
    strand: str         # "primary" | "complement"
    base: int
    gamma: float        # eV, > 0

    def __post_init__(self):
        if self.electrode not in ("left", "right") or self.strand not in ("primary",
                                                                           "complement"):
            raise ValueError(f"Contact({self.electrode!r}, {self.strand!r}, ...): electrode is "
                             f"'left' or 'right', strand 'primary' or 'complement'")


def default_contacts(primary, gamma=GAMMA):
    """The built-in placement: left electrode on the primary strand's 5' base, right on its 3'
    base, both with `gamma` eV."""
    return (Contact("left", "primary", 0, gamma),
            Contact("right", "primary", len(primary) - 1, gamma))


def contact_sites(primary, complement, contacts):
    """[(electrode, site index in duplex_sites order, gamma)] of each contact. A contact on
    a missing complementary base raises ValueError (the readers refuse it earlier, by name)."""
    comp_site, site = {}, len(primary)
    for j, b in enumerate(complement):
        if b != MISSING:
            comp_site[j] = site
            site += 1
    out = []
    for c in contacts:
        if c.strand == "primary":
            if not 0 <= c.base < len(primary):
                raise ValueError(f"{c}: base out of range for {primary!r}")
            out.append((c.electrode, c.base, c.gamma))
        else:
            if c.base not in comp_site:
                raise ValueError(f"{c}: no base there in complement {complement!r}")
            out.append((c.electrode, comp_site[c.base], c.gamma))
    return out


def contact_gammas(primary, complement, contacts, n):
    """(gamma_left, gamma_right): lists of n couplings (eV) per site, 0 where a site does not
    touch that electrode; a site touched twice by one electrode adds its couplings."""
    gammas = {"left": [0.0] * n, "right": [0.0] * n}
    for electrode, site, gamma in contact_sites(primary, complement, contacts):
        gammas[electrode][site] += gamma
    return gammas["left"], gammas["right"]


def hamiltonian(primary, complement):
    """The duplex's tight-binding Hamiltonian in eV, a float64 tensor (n, n), sites in the order
    of `duplex_sites`."""
    return torch.tensor(_hamiltonian_rows(primary, complement), dtype=torch.float64)


def wide_band_negf(H, gamma_left, gamma_right, energies, eta=ETA):
    """Transmission, DOS and LDOS of a batch of Hamiltonians with wide-band contacts.

    Args:
        H: (B, n, n) real or complex tensor, a batch of Hamiltonians of the same size.
        gamma_left, gamma_right: (B, n) real tensors, each site's coupling to the left / right
            electrode (0 where a site does not touch it); Sigma = -i gamma / 2 on the diagonal.
        energies: (E,) real tensor.
        eta: the broadening added to the energy, E + i eta.

    Returns:
        (T, DOS, LDOS): T = Tr[Gamma_L G Gamma_R G^dagger] (B, E), DOS = -Im Tr G / pi (B, E),
        LDOS = -Im G_ii / pi (B, E, n), real tensors in H's precision (complex128 arithmetic for
        float64 / complex128 H, complex64 for float32 / complex64). Differentiable with respect
        to H, the gammas and the energies; the batch is worked through in chunks of ~64 MB of
        G, though with gradients on, autograd keeps every chunk's G for the backward pass.
    """
    if H.dim() != 3 or H.shape[-1] != H.shape[-2]:
        raise ValueError(f"H must be (B, n, n), got {tuple(H.shape)}")
    B, n = H.shape[0], H.shape[-1]
    for name, g in (("gamma_left", gamma_left), ("gamma_right", gamma_right)):
        if tuple(g.shape) != (B, n):
            raise ValueError(f"{name} must be (B, n) = {(B, n)}, got {tuple(g.shape)}")
    if energies.dim() != 1:
        raise ValueError(f"energies must be (E,), got {tuple(energies.shape)}")
    cdtype = H.dtype if H.is_complex() else (
        torch.complex128 if H.dtype == torch.float64 else torch.complex64)
    rdtype = torch.float64 if cdtype == torch.complex128 else torch.float32
    gamma_left = gamma_left.to(H.device, rdtype)
    gamma_right = gamma_right.to(H.device, rdtype)
    energies = energies.to(H.device, rdtype)
    num_e = energies.shape[0]

    # H_eff = H + Sigma_L + Sigma_R; summing the two gammas before halving keeps the diagonal
    # of E - H_eff bit for bit what the numpy generator computed (E - e) + i(eta + gamma/2).
    H_eff = H.to(cdtype) - torch.diag_embed(0.5j * (gamma_left + gamma_right).to(cdtype))
    z = torch.complex(energies, torch.full_like(energies, eta))
    zI = torch.diag_embed(z[:, None].expand(num_e, n))                   # (E, n, n)
    # T = sum_ij gamma_L,i |G_ij|^2 gamma_R,j needs only the rows of sites touching the left
    # electrode and the columns of those touching the right one: with contacts on a site or two
    # that is a few elements of G instead of n^2 (|G|^2 would cost a third of the inversion).
    # With one contact site per side the weight is a single gamma_L gamma_R and the zeros add
    # nothing, so T is gamma^2 |G_0r|^2, rounded as the numpy generator rounded it. A gamma that
    # is being learnt keeps all its sites: dT/dgamma_i is not zero where gamma_i is.
    rows, cols = (torch.arange(n, device=H.device) if g.requires_grad
                  else torch.nonzero((g != 0).any(0)).flatten()
                  for g in (gamma_left, gamma_right))
    weight = gamma_left[:, rows, None] * gamma_right[:, None, cols]      # (B, rows, cols)

    chunk = max(1, _WORK_ELEMENTS // max(1, num_e * n * n))
    T, DOS, LDOS = [], [], []
    for start in range(0, B, chunk):
        stop = min(B, start + chunk)
        G = torch.linalg.inv(zI - H_eff[start:stop, None])               # (b, E, n, n)
        contact_block = G[..., rows, :][..., cols]
        T.append((contact_block.abs() ** 2 * weight[start:stop, None]).sum(dim=(-2, -1)))
        diagonal = G.diagonal(dim1=-2, dim2=-1)                          # (b, E, n)
        DOS.append(-diagonal.sum(-1).imag / np.pi)
        LDOS.append(-diagonal.imag / np.pi)
    if not T:   # an empty batch
        empty = torch.zeros(0, num_e, dtype=rdtype, device=H.device)
        return empty, empty.clone(), torch.zeros(0, num_e, n, dtype=rdtype, device=H.device)
    return torch.cat(T), torch.cat(DOS), torch.cat(LDOS)


def transport_spectra(duplexes, energies, gamma=GAMMA, eta=ETA, contacts=None):
    """T(E) and DOS(E) of each (primary, complement) duplex on the energy grid.

    `contacts` gives each duplex its tuple of Contact; None (for all, or for one duplex) is
    the default placement: the primary strand's 5' site (left) and 3' site (right), each with
    coupling `gamma`.

    Duplexes with the same number of sites go through `wide_band_negf` together, vectorised
    over sequences and energies, in chunks so that memory stays flat for any data set size.

    Returns:
        (T, DOS), each a float64 numpy array (len(duplexes), len(energies)).
    """
    with _one_thread():
        return _transport_spectra(duplexes, energies, gamma, eta,
                                  contacts or [None] * len(duplexes))


@contextlib.contextmanager
def _one_thread():
    """Run torch on one thread inside, then restore the thread count. The batched inverse of
    many small matrices gains little from a second thread and collapses when the cores are
    busy (OpenMP's threads wait for each other at every small parallel region): measured here
    on 2,000 duplexes, 1.1 s with 2 threads and 1.6 s with 1 on an idle 2-core machine, but
    23 s against 2.7 s beside two busy processes. Each matrix is inverted alone, so the
    result is the same bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _transport_spectra(duplexes, energies, gamma, eta, contacts):
    energies = torch.as_tensor(np.asarray(energies, dtype=np.float64))
    T = np.empty((len(duplexes), len(energies)))
    DOS = np.empty_like(T)
    by_size = {}
    for k, (primary, complement) in enumerate(duplexes):
        by_size.setdefault(len(primary) + sum(b != MISSING for b in complement), []).append(k)
    for n, members in by_size.items():
        # Build Hamiltonians a chunk at a time too, so the inputs stay as flat as the work space.
        chunk = max(1, _WORK_ELEMENTS // (len(energies) * n * n))
        for start in range(0, len(members), chunk):
            ks = members[start:start + chunk]
            H = torch.tensor([_hamiltonian_rows(*duplexes[k]) for k in ks], dtype=torch.float64)
            gammas = [contact_gammas(*duplexes[k], contacts[k] or default_contacts(
                duplexes[k][0], gamma), n) for k in ks]
            gamma_left = torch.tensor([g[0] for g in gammas], dtype=torch.float64)
            gamma_right = torch.tensor([g[1] for g in gammas], dtype=torch.float64)
            with torch.no_grad():
                t, dos, _ = wide_band_negf(H, gamma_left, gamma_right, energies, eta)
            T[ks] = t.numpy()
            DOS[ks] = dos.numpy()
    return T, DOS


def log_spectra(duplexes, energies, contacts=None):
    """Training targets: log10 T(E) and log10 DOS(E), float64 (N, 2, len(energies))."""
    T, DOS = transport_spectra(duplexes, energies, contacts=contacts)
    return np.stack([np.log10(T), np.log10(DOS)], axis=1)


def padded_negf(H, site_mask, gamma_left, gamma_right, energies, eta=ETA):
    """`wide_band_negf` for a batch of graphs of different sizes, padded to the largest.

    Args:
        H: (B, N, N) Hamiltonians, graph b's real sites where site_mask[b] is True; what H holds
            at padded rows and columns is ignored.
        site_mask: (B, N) bool, True for a real site.
        gamma_left, gamma_right, energies, eta: as in `wide_band_negf` (padded entries ignored).

    Returns:
        (T, DOS, LDOS) as in `wide_band_negf`, each graph's that of its real sites alone
        (the same numbers: each graph is inverted at its own size); LDOS is 0 at padded
        sites and DOS sums the real sites only.

    The graphs are grouped by their number of real sites and each group goes through
    `wide_band_negf` at that size, rather than inverting every graph at the padded size: the
    inversion costs n^3 per graph and energy, so a batch of 4-10 bp duplexes (8-20 sites)
    padded to 20 would spend about three times the work on padding.
    """
    if tuple(site_mask.shape) != tuple(H.shape[:2]):
        raise ValueError(f"site_mask must be (B, N) = {tuple(H.shape[:2])}, "
                         f"got {tuple(site_mask.shape)}")
    mask = site_mask.to(device=H.device, dtype=torch.bool)
    energies = torch.as_tensor(energies)
    B, N = mask.shape
    sizes = mask.sum(1)
    parts, order = [], []
    # One thread, as in transport_spectra: in a training step beside other busy processes, the
    # batched inverse took 0.1 s on one thread and 0.3 s to 77 s on two (64 duplexes, 2 cores).
    with _one_thread():
        for n in sorted(set(sizes.tolist())):
            graphs = torch.nonzero(sizes == n).flatten()
            # Each graph's real sites, in order: (b, n) indices into its N sites.
            sites = torch.nonzero(mask[graphs])[:, 1].view(len(graphs), n)
            block = H[graphs[:, None, None], sites[:, :, None], sites[:, None, :]]
            T, DOS, LDOS = wide_band_negf(block, gamma_left[graphs[:, None], sites],
                                          gamma_right[graphs[:, None], sites], energies, eta)
            # Back to the padded layout: 0 at padded sites (scatter keeps LDOS's gradient).
            LDOS = torch.zeros(*LDOS.shape[:2], N, dtype=LDOS.dtype, device=LDOS.device).scatter(
                2, sites[:, None, :].expand(-1, LDOS.shape[1], -1), LDOS)
            parts.append((T, DOS, LDOS))
            order.append(graphs)
    if not parts:
        return wide_band_negf(H, gamma_left, gamma_right, energies, eta)   # an empty batch
    back = torch.argsort(torch.cat(order))   # from grouped order to the batch's
    return tuple(torch.cat(values)[back] for values in zip(*parts))
