"""Tight-binding transport: closed forms, an independent 50-digit calculation, a dense numpy
reference, and the gradients of the differentiable NEGF core."""

import numpy as np
import pytest
import torch

import tight_binding

GAMMA = tight_binding.GAMMA
E = np.linspace(-3, 3, 61)


# ------------------------------------------------------------------------------------------
# Tight-binding transport: closed forms and an independent calculation
# ------------------------------------------------------------------------------------------

def test_hamiltonian_follows_the_spec_tables():
    # Primary G-A (5'->3'), complement T-C: T pairs with A, C pairs with G.
    H = tight_binding.hamiltonian("GA", "TC")
    assert isinstance(H, torch.Tensor) and H.dtype == torch.float64
    H = H.numpy()
    # Sites: G, A (primary), T, C (complement).
    assert np.allclose(np.diag(H), [0.00, -0.49, -1.39, -1.12])
    assert H[0, 1] == H[1, 0] == 0.089        # GA, primary 5'->3'
    assert H[2, 3] == H[3, 2] == 0.076        # TC, complement 5'->3'
    assert H[1, 2] == 0.034                    # A-T hydrogen bond (primary 1, complement 0)
    assert H[0, 3] == 0.050                    # G-C hydrogen bond (primary 0, complement 1)
    assert H[0, 2] == H[1, 3] == 0.0


def test_one_site_is_a_lorentzian():
    """A single G base touching both electrodes: G = 1/(E - e + i Gamma)."""
    T, DOS = tight_binding.transport_spectra([("G", "-")], E)
    expected_T = GAMMA ** 2 / (E ** 2 + GAMMA ** 2)
    expected_DOS = GAMMA / np.pi / (E ** 2 + GAMMA ** 2)
    assert np.allclose(T[0], expected_T, rtol=1e-9)
    assert np.allclose(DOS[0], expected_DOS, rtol=1e-9)


@pytest.mark.parametrize("primary", ["GA", "CT", "TG"])
def test_two_site_chain_closed_form(primary):
    """Two bases, no complement: G = [[a, -t], [-t, b]]^-1 with a = E - e1 + i Gamma/2."""
    e1, e2 = tight_binding.ONSITE[primary[0]], tight_binding.ONSITE[primary[1]]
    t = tight_binding.INTRA_STRAND[primary]
    a, b = E - e1 + 0.5j * GAMMA, E - e2 + 0.5j * GAMMA
    det = a * b - t ** 2
    expected_T = GAMMA ** 2 * t ** 2 / np.abs(det) ** 2
    expected_DOS = -((a + b) / det).imag / np.pi
    T, DOS = tight_binding.transport_spectra([(primary, "--")], E)
    assert np.allclose(T[0], expected_T, rtol=1e-9)
    assert np.allclose(DOS[0], expected_DOS, rtol=1e-9)


def test_three_site_chain_closed_form():
    """G_{13} of a 3-site chain: t12 t23 / det, det by cofactor expansion."""
    primary = "GAC"
    e = [tight_binding.ONSITE[b] for b in primary]
    t12, t23 = tight_binding.INTRA_STRAND["GA"], tight_binding.INTRA_STRAND["AC"]
    a = E - e[0] + 0.5j * GAMMA
    b = E - e[1]
    c = E - e[2] + 0.5j * GAMMA
    det = a * b * c - a * t23 ** 2 - c * t12 ** 2
    expected_T = GAMMA ** 2 * (t12 * t23) ** 2 / np.abs(det) ** 2
    trace = (b * c - t23 ** 2 + a * c + a * b - t12 ** 2) / det
    T, DOS = tight_binding.transport_spectra([(primary, "---")], E)
    assert np.allclose(T[0], expected_T, rtol=1e-9)
    assert np.allclose(DOS[0], -trace.imag / np.pi, rtol=1e-9)


# Six built-in duplexes (data set seed 3): hydrogen bonds, missing bases, 4 to 10 base pairs.
# Written out so that these tests do not depend on the data generator.
MIXED_DUPLEXES = [("AGGACAAGA", "-CT-G-CCT"), ("CGAC", "GT-G"), ("AGATT", "AATCT"),
                  ("AGCGAAC", "GT-CGCT"), ("AACCATCC", "-G-TGGTT"), ("TCAGCCAAGA", "TCT-GGCTGA")]


def test_full_duplexes_match_a_50_digit_calculation():
    """An independent route for whole duplexes (hydrogen bonds, missing bases): invert
    E - H - Sigma with 50-digit arithmetic (mpmath, installed with torch) and compare in
    decades, the unit the model learns, down to the deepest valleys (T ~ 1e-30)."""
    mpmath = pytest.importorskip("mpmath", reason="mpmath comes with torch's sympy dependency")
    mpmath.mp.dps = 50
    duplexes = MIXED_DUPLEXES
    energies = E[::4]
    T, DOS = tight_binding.transport_spectra(duplexes, energies)
    for k, (primary, complement) in enumerate(duplexes):
        H = tight_binding.hamiltonian(primary, complement).numpy()
        n, right = len(H), len(primary) - 1
        for m, energy in enumerate(energies):
            A = mpmath.matrix(n, n)
            for i in range(n):
                for j in range(n):
                    A[i, j] = -H[i, j] + (mpmath.mpc(energy, tight_binding.ETA) if i == j else 0)
            A[0, 0] += mpmath.mpc(0, GAMMA / 2)
            A[right, right] += mpmath.mpc(0, GAMMA / 2)
            G = A ** -1
            exact_T = GAMMA ** 2 * abs(G[0, right]) ** 2
            exact_DOS = -sum(G[i, i] for i in range(n)).imag / mpmath.pi
            assert abs(np.log10(T[k, m]) - float(mpmath.log10(exact_T))) < 1e-6
            assert abs(np.log10(DOS[k, m]) - float(mpmath.log10(exact_DOS))) < 1e-6


# ------------------------------------------------------------------------------------------
# The batched, differentiable core against dense formulas
# ------------------------------------------------------------------------------------------

def dense_negf(H, gamma_left, gamma_right, energies, eta):
    """One Hamiltonian, one energy at a time, the textbook formulas with numpy's inverse."""
    H = np.asarray(H, dtype=np.complex128)
    n = len(H)
    Sigma = -0.5j * np.diag(gamma_left + gamma_right)
    T, DOS, LDOS = [], [], []
    for energy in energies:
        G = np.linalg.inv((energy + 1j * eta) * np.eye(n) - H - Sigma)
        T.append(np.trace(np.diag(gamma_left) @ G @ np.diag(gamma_right) @ G.conj().T).real)
        DOS.append(-np.trace(G).imag / np.pi)
        LDOS.append(-np.diag(G).imag / np.pi)
    return np.array(T), np.array(DOS), np.array(LDOS)


def random_hermitian(generator, batch, n, complex_=True):
    A = torch.randn(batch, n, n, dtype=torch.complex128 if complex_ else torch.float64,
                    generator=generator)
    return 0.5 * (A + A.transpose(-2, -1).conj())


def test_gradients_match_finite_differences():
    """gradcheck in complex128: d/dH (through a free complex matrix made Hermitian), d/dgamma
    on every site (including ones that start at zero), d/dE."""
    generator = torch.Generator().manual_seed(0)
    A = torch.randn(2, 3, 3, dtype=torch.complex128, generator=generator, requires_grad=True)
    gamma_left = torch.tensor([[0.3, 0.0, 0.1], [0.2, 0.05, 0.0]], dtype=torch.float64,
                              requires_grad=True)
    gamma_right = torch.tensor([[0.0, 0.2, 0.4], [0.0, 0.0, 0.3]], dtype=torch.float64,
                               requires_grad=True)
    energies = torch.tensor([-0.7, 0.1, 0.9], dtype=torch.float64, requires_grad=True)

    def negf(A, gamma_left, gamma_right, energies):
        H = 0.5 * (A + A.transpose(-2, -1).conj())
        return tight_binding.wide_band_negf(H, gamma_left, gamma_right, energies, eta=1e-3)

    assert torch.autograd.gradcheck(negf, (A, gamma_left, gamma_right, energies))


def test_gradients_of_a_real_hamiltonian_match_finite_differences():
    generator = torch.Generator().manual_seed(1)
    H = random_hermitian(generator, 2, 2, complex_=False).requires_grad_()
    gamma_left = torch.tensor([[0.2, 0.0], [0.1, 0.0]], dtype=torch.float64, requires_grad=True)
    gamma_right = torch.tensor([[0.0, 0.3], [0.0, 0.2]], dtype=torch.float64, requires_grad=True)
    energies = torch.tensor([-0.5, 0.0, 0.4], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda H, gl, gr: tight_binding.wide_band_negf(H, gl, gr, energies, eta=1e-3),
        (H, gamma_left, gamma_right))


@pytest.mark.parametrize("work_elements", [tight_binding._WORK_ELEMENTS, 2 * 7 * 4 * 4])
def test_a_batch_equals_its_members_one_by_one(monkeypatch, work_elements):
    """Batching (and chunking the batch, forced with a small work space) changes nothing."""
    monkeypatch.setattr(tight_binding, "_WORK_ELEMENTS", work_elements)
    generator = torch.Generator().manual_seed(2)
    H = random_hermitian(generator, 5, 4)
    gamma_left = torch.rand(5, 4, dtype=torch.float64, generator=generator)
    gamma_right = torch.rand(5, 4, dtype=torch.float64, generator=generator)
    energies = torch.linspace(-2, 2, 7, dtype=torch.float64)
    batch = tight_binding.wide_band_negf(H, gamma_left, gamma_right, energies)
    for b in range(5):
        single = tight_binding.wide_band_negf(H[b:b + 1], gamma_left[b:b + 1],
                                              gamma_right[b:b + 1], energies)
        for whole, one in zip(batch, single):
            torch.testing.assert_close(whole[b:b + 1], one, rtol=1e-12, atol=0)


def test_contacts_on_several_sites_and_the_complementary_strand_match_a_dense_inverse():
    # Primary GATC, complement GA-C: sites 0-3 primary, 4-6 complementary.
    H = tight_binding.hamiltonian("GATC", "GA-C")
    n = H.shape[0]
    gamma_left = np.zeros(n)
    gamma_right = np.zeros(n)
    gamma_left[[0, 1, 6]] = [0.1, 0.03, 0.07]     # two primary sites and the complement's 3' end
    gamma_right[[4, 5]] = [0.2, 0.05]              # the complementary strand's 5' sites
    energies = np.linspace(-2, 1, 13)
    T, DOS, LDOS = tight_binding.wide_band_negf(
        H[None], torch.from_numpy(gamma_left)[None], torch.from_numpy(gamma_right)[None],
        torch.from_numpy(energies), eta=1e-9)
    expected_T, expected_DOS, expected_LDOS = dense_negf(H.numpy(), gamma_left, gamma_right,
                                                        energies, 1e-9)
    assert T.dtype == DOS.dtype == LDOS.dtype == torch.float64
    assert LDOS.shape == (1, 13, n)
    np.testing.assert_allclose(T[0].numpy(), expected_T, rtol=1e-10)
    np.testing.assert_allclose(DOS[0].numpy(), expected_DOS, rtol=1e-10)
    np.testing.assert_allclose(LDOS[0].numpy(), expected_LDOS, rtol=1e-10)
    np.testing.assert_allclose(LDOS.sum(-1), DOS, rtol=1e-12)


def test_transmission_is_symmetric_under_swapping_the_electrodes():
    """For a real symmetric H, G is symmetric, so Tr[Gamma_L G Gamma_R G^dagger] is the same
    with the electrodes swapped, however unlike their couplings are."""
    generator = torch.Generator().manual_seed(3)
    H = random_hermitian(generator, 3, 5, complex_=False)
    gamma_left = torch.rand(3, 5, dtype=torch.float64, generator=generator)
    gamma_right = 0.3 * torch.rand(3, 5, dtype=torch.float64, generator=generator)
    gamma_right[:, 0] = 0.0
    energies = torch.linspace(-3, 3, 25, dtype=torch.float64)
    T, DOS, _ = tight_binding.wide_band_negf(H, gamma_left, gamma_right, energies)
    T_swapped, DOS_swapped, _ = tight_binding.wide_band_negf(H, gamma_right, gamma_left, energies)
    torch.testing.assert_close(T_swapped, T, rtol=1e-10, atol=0)
    torch.testing.assert_close(DOS_swapped, DOS, rtol=1e-12, atol=0)


def test_single_precision_follows_double_precision():
    generator = torch.Generator().manual_seed(4)
    H = random_hermitian(generator, 2, 4, complex_=False)
    gamma = torch.zeros(2, 4, dtype=torch.float64)
    gamma_left, gamma_right = gamma.clone(), gamma.clone()
    gamma_left[:, 0] = gamma_right[:, 3] = 0.5
    energies = torch.linspace(-2, 2, 9, dtype=torch.float64)
    double = tight_binding.wide_band_negf(H, gamma_left, gamma_right, energies, eta=1e-3)
    single = tight_binding.wide_band_negf(H.float(), gamma_left.float(), gamma_right.float(),
                                          energies.float(), eta=1e-3)
    for s, d in zip(single, double):
        assert s.dtype == torch.float32
        torch.testing.assert_close(s.double(), d, rtol=1e-3, atol=1e-6)


def numpy_transport_spectra(duplexes, energies, gamma=GAMMA, eta=tight_binding.ETA):
    """The generator's job written plainly: one duplex and one energy at a time, the contacts
    on the primary strand's first and last base, the tables typed in again."""
    onsite = {"G": 0.00, "A": -0.49, "C": -1.12, "T": -1.39}
    T = np.empty((len(duplexes), len(energies)))
    DOS = np.empty_like(T)
    for k, (primary, complement) in enumerate(duplexes):
        bases, couplings = tight_binding.duplex_sites(primary, complement)
        H = np.diag([onsite[b] for b in bases]).astype(np.complex128)
        for i, j, t, _ in couplings:
            H[i, j] = H[j, i] = t
        right = len(primary) - 1
        H[0, 0] -= 0.5j * gamma
        H[right, right] -= 0.5j * gamma
        for m, energy in enumerate(energies):
            G = np.linalg.inv((energy + 1j * eta) * np.eye(len(bases)) - H)
            T[k, m] = gamma ** 2 * abs(G[0, right]) ** 2
            DOS[k, m] = -np.trace(G).imag / np.pi
    return T, DOS


def test_transport_spectra_match_a_plain_numpy_calculation_to_1e_12_decades():
    # Duplexes whose transmission has no deep interference valley on this grid: where two
    # paths nearly cancel in G_0r (e.g. GAC/G-C at E = 0, T ~ 1e-22) any float64 LU resolves
    # T only to ~1e-8 relative against a 80-digit inverse, so 1e-12 would compare one LAPACK's
    # rounding with another's rather than this code with the formula.
    duplexes = [("G", "-"), ("GA", "T-"), ("TAC", "-TA"), ("ATGC", "GCAT"), ("GATC", "GA-C"),
                ("AATTG", "CAA-T"), ("CCATG", "CATGG")]
    T, DOS = tight_binding.transport_spectra(duplexes, E)
    expected_T, expected_DOS = numpy_transport_spectra(duplexes, E)
    assert T.dtype == DOS.dtype == np.float64 and T.shape == DOS.shape == (len(duplexes), len(E))
    assert np.abs(np.log10(T) - np.log10(expected_T)).max() < 1e-12
    assert np.abs(np.log10(DOS) - np.log10(expected_DOS)).max() < 1e-12
    targets = tight_binding.log_spectra(duplexes, E)
    assert targets.shape == (len(duplexes), 2, len(E))
    np.testing.assert_array_equal(targets, np.stack([np.log10(T), np.log10(DOS)], axis=1))


def numpy_spectra_with_contacts(primary, complement, left, right, energies,
                                eta=tight_binding.ETA):
    """T and DOS written plainly for contacts given as {site: gamma} per electrode."""
    bases, couplings = tight_binding.duplex_sites(primary, complement)
    H = np.diag([tight_binding.ONSITE[b] for b in bases]).astype(np.complex128)
    for i, j, t, _ in couplings:
        H[i, j] = H[j, i] = t
    gl, gr = np.zeros(len(bases)), np.zeros(len(bases))
    for site, g in left.items():
        gl[site] = g
    for site, g in right.items():
        gr[site] = g
    H -= 0.5j * np.diag(gl + gr)
    T, DOS = [], []
    for energy in energies:
        G = np.linalg.inv((energy + 1j * eta) * np.eye(len(bases)) - H)
        T.append(np.real(np.trace(np.diag(gl) @ G @ np.diag(gr) @ G.conj().T)))
        DOS.append(-np.trace(G).imag / np.pi)
    return np.array(T), np.array(DOS)


def test_contacts_on_the_complementary_strand_and_on_several_sites():
    Contact = tight_binding.Contact
    # GATC / GA-C: sites 0-3 primary, then complement bases 0, 1, 3 at sites 4, 5, 6.
    primary, complement = "GATC", "GA-C"
    cases = [
        # right electrode on the complementary strand's 5' base ('cross')
        ((Contact("left", "primary", 0, 0.1), Contact("right", "complement", 0, 0.1)),
         {0: 0.1}, {4: 0.1}),
        # two sites per electrode, each with its own coupling, on both strands
        ((Contact("left", "primary", 0, 0.2), Contact("left", "complement", 3, 0.05),
          Contact("right", "primary", 3, 0.1), Contact("right", "complement", 1, 0.3)),
         {0: 0.2, 6: 0.05}, {3: 0.1, 5: 0.3}),
    ]
    energies = np.linspace(-2, 1, 31)
    spectra = tight_binding.log_spectra([(primary, complement)] * 3, energies,
                                        [cases[0][0], cases[1][0], None])
    for k, (_, left, right) in enumerate(cases):
        T, DOS = numpy_spectra_with_contacts(primary, complement, left, right, energies)
        assert np.abs(spectra[k, 0] - np.log10(T)).max() < 1e-10
        assert np.abs(spectra[k, 1] - np.log10(DOS)).max() < 1e-10
    # None is the default placement, and the three differ.
    T, DOS = numpy_spectra_with_contacts(primary, complement, {0: 0.1}, {3: 0.1}, energies)
    assert np.abs(spectra[2, 0] - np.log10(T)).max() < 1e-10
    assert np.abs(spectra[0] - spectra[1]).max() > 0.1
    assert np.abs(spectra[0] - spectra[2]).max() > 0.1
    with pytest.raises(ValueError, match="no base there"):
        tight_binding.contact_sites(primary, complement, (Contact("left", "complement", 2, 0.1),))
