"""Samplers without a diffusers counterpart against float64 references of their papers' updates,
or against exact identities between methods."""

import math

import pytest
import torch

from diffusion.sampling.model_sampling import ModelSampling
from diffusion.sampling.registry import get_sampler
from diffusion.sampling.samplers.multistep import deis_weights, _vp_time
from diffusion.sampling.schedulers import get_sigmas_karras
from sampling_fakes import denoiser_from_eps_net

MS = ModelSampling()
SIGMAS = get_sigmas_karras(7, 0.03, 14.6)
# The reference checks below also run at one and two steps (to 0, and ending early as a
# KSamplerAdvanced pass does): few-step sampling is how turbo / LCM-style workflows run.
SCHEDULES = {
    "7_steps": SIGMAS,
    "2_steps": get_sigmas_karras(2, 0.03, 14.6),
    "1_step": get_sigmas_karras(1, 0.03, 14.6),
    "2_steps_ends_early": SIGMAS[2:5],
    "1_step_ends_early": SIGMAS[1:3],
}
few_steps = pytest.mark.parametrize("sigmas", list(SCHEDULES.values()), ids=list(SCHEDULES))


def _x(sigma0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(1, 4, 5, 5, generator=gen) * (1 + float(sigma0) ** 2) ** 0.5).to(dtype)


def _run(name, sigmas=SIGMAS, dtype=torch.float32, **options):
    model = denoiser_from_eps_net(MS)
    return get_sampler(name)(model, _x(sigmas[0], dtype), sigmas.to(dtype), extra_args={"seed": 9}, **options)


def _ref_model():
    """The same network, in float64."""
    return denoiser_from_eps_net(MS)


def _close(a, b, tol=1e-4):
    scale = float(b.abs().max())
    assert torch.allclose(a.double(), b.double(), rtol=tol, atol=tol * scale), float((a.double() - b).abs().max())


@few_steps
def test_ipndm_v_third_order_matches_closed_form(sigmas):
    """iPNDM-v's third-order step against the published closed-form coefficients (AMED code release,
    Zhou et al. 2024), computed in float64: c1 = 1 + r/2 + T, c2 = -r/2 - (1 + h1/h2) T, c3 = T h1/h2
    with r = h/h1 and T = (1 - h/(3(h+h1)) * h(h+h1)/(h1(h1+h2))) / 2."""
    sig = sigmas.double()
    model = _ref_model()
    x = _x(sig[0], torch.float64)
    ds = []
    for i in range(len(sig) - 1):
        d = (x - model(x, sig[i].reshape(1))) / sig[i]
        ds.append(d)
        if sig[i + 1] == 0:
            x = model(x, sig[i].reshape(1))
            break
        h = sig[i + 1] - sig[i]
        if i == 0:
            x = x + h * d
        elif i == 1:
            h1 = sig[i] - sig[i - 1]
            x = x + h * ((2 + h / h1) / 2 * d - (h / h1) / 2 * ds[-2])
        else:  # order 3 throughout (max_order 3 here)
            h1, h2 = sig[i] - sig[i - 1], sig[i - 1] - sig[i - 2]
            temp = (1 - h / (3 * (h + h1)) * (h * (h + h1)) / (h1 * (h1 + h2))) / 2
            c1 = (2 + h / h1) / 2 + temp
            c2 = -(h / h1) / 2 - (1 + h1 / h2) * temp
            c3 = temp * h1 / h2
            x = x + h * (c1 * d + c2 * ds[-2] + c3 * ds[-3])
    _close(_run("ipndm_v", sigmas, max_order=3), x)


def test_ipndm_equals_ipndm_v_on_uniform_steps():
    uniform = torch.cat([torch.linspace(10.0, 1.0, 7), torch.zeros(1)])
    _close(_run("ipndm", uniform, max_order=3), _run("ipndm_v", uniform, max_order=3), tol=1e-5)


def test_deis_weights_integrate_tau_polynomials_exactly():
    """DEIS 'tab' weights interpolate the slope polynomially in VP time tau: they must integrate
    1, tau and tau^2 over the sigma step exactly (checked with a fine midpoint rule in float64)."""
    sig = [float(s) for s in SIGMAS]
    i = 3
    w = deis_weights(sig, i, 3)
    taus = [_vp_time(sig[i - j]) for j in range(3)]
    n = 20000
    grid = [sig[i] + (sig[i + 1] - sig[i]) * (k + 0.5) / n for k in range(n)]
    ds = (sig[i + 1] - sig[i]) / n
    for p in range(3):
        exact = sum(_vp_time(s) ** p for s in grid) * ds
        assert sum(wj * tj ** p for wj, tj in zip(w, taus)) == pytest.approx(exact, rel=1e-6)


@few_steps
def test_dpmpp_sde_without_noise_is_dpmpp_2s(sigmas):
    """With eta = 0 the SDE variant's two stages reduce to DPM-Solver++(2S) (r = 1/2)."""
    _close(_run("dpmpp_sde", sigmas, eta=0.0), _run("dpmpp_2s_ancestral", sigmas, eta=0.0), tol=1e-5)


def test_dpm_fast_single_evaluation_is_euler():
    """DPM-Solver-1 equals DDIM, i.e. an Euler step in sigma."""
    sigmas = torch.tensor([8.0, 0.5])
    _close(_run("dpm_fast", sigmas), _run("euler", sigmas), tol=1e-5)


def _dpm_solver_reference(x, t_grid, orders):
    """DPM-Solver-2/-3 of Lu et al. (2022), Algorithms 1 and 2 (noise prediction, lambda = -log sigma),
    in float64."""
    model = _ref_model()

    def eps(x, lam):
        sigma = math.exp(-lam)
        return (x - model(x, torch.tensor([sigma], dtype=torch.float64))) / sigma

    for (lam, lam_next), order in zip(zip(t_grid[:-1], t_grid[1:]), orders):
        h = lam_next - lam
        sig_next = math.exp(-lam_next)
        e0 = eps(x, lam)
        if order == 1:
            x = x - sig_next * math.expm1(h) * e0
        elif order == 2:
            s1 = lam + h / 2
            u1 = x - math.exp(-s1) * math.expm1(h / 2) * e0
            x = x - sig_next * math.expm1(h) * eps(u1, s1)  # Alg. 1: the midpoint eps alone
        else:
            r1, r2 = 1 / 3, 2 / 3
            s1, s2 = lam + r1 * h, lam + r2 * h
            u1 = x - math.exp(-s1) * math.expm1(r1 * h) * e0
            d1 = eps(u1, s1) - e0
            u2 = x - math.exp(-s2) * math.expm1(r2 * h) * e0 - math.exp(-s2) * (r2 / r1) * (
                math.expm1(r2 * h) / (r2 * h) - 1) * d1
            d2 = eps(u2, s2) - e0
            x = x - sig_next * math.expm1(h) * e0 - sig_next / r2 * (math.expm1(h) / h - 1) * d2
    return x


def test_dpm_fast_matches_dpm_solver_reference():
    """6 evaluations: two DPM-Solver-3 steps; 7: two third-order steps and one first-order step."""
    for n_eval, orders in ((6, [3, 2, 1]), (7, [3, 3, 1])):
        sigmas = torch.cat([get_sigmas_karras(n_eval, 0.05, 10.0)[:-1], torch.zeros(1)])
        lam_start, lam_end = -math.log(10.0), -math.log(float(sigmas[-2]))
        m = n_eval // 3 + 1
        grid = [lam_start + (lam_end - lam_start) * k / m for k in range(m + 1)]
        ref = _dpm_solver_reference(_x(10.0, torch.float64), grid, orders)
        # second-order steps in Alg. 1 and ours differ only in form: eps_mid vs eps + (eps_mid - eps)
        _close(_run("dpm_fast", sigmas), ref, tol=2e-4)


def _guided(x, sigma, cfg):
    """Reference CFG with two different 'prompts': cond = D(x), uncond = D(0.5 x)."""
    model = _ref_model()
    c = model(x, sigma)
    u = model(0.5 * x, sigma)
    return u + (c - u) * cfg, u


class _TwoPromptModel:
    """Presents the same two predictions through the guider hook protocol the samplers use."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.inner = denoiser_from_eps_net(MS)

    def __call__(self, x, sigma, model_options=None, **_):
        c = self.inner(x, sigma)
        u = self.inner(0.5 * x, sigma)
        out = u + (c - u) * self.cfg
        for post in (model_options or {}).get("sampler_post_cfg_function", []):
            out = post({"denoised": out, "uncond_denoised": u, "cond_denoised": c})
        return out


@few_steps
def test_euler_cfg_pp_matches_paper_update(sigmas):
    """CFG++ (Chung et al. 2024): x_next = D_cfg(x) + sigma_next * eps_uncond(x)."""
    cfg = 4.0
    sig = sigmas.double()
    x = _x(sig[0], torch.float64)
    for i in range(len(sig) - 1):
        d_cfg, d_u = _guided(x, sig[i].reshape(1), cfg)
        x = d_cfg + sig[i + 1] * (x - d_u) / sig[i]
    ours = get_sampler("euler_cfg_pp")(_TwoPromptModel(cfg), _x(sigmas[0]), sigmas, extra_args={})
    _close(ours, x)


@few_steps
def test_dpmpp_2m_cfg_pp_matches_reference(sigmas):
    """DPM++(2M) CFG++: the exponential-integrator step with the unconditional x0 in the linear
    term and the guided x0 added back (Chung et al. 2024, appendix), first order at the ends."""
    cfg = 3.0
    sig = sigmas.double()
    x = _x(sig[0], torch.float64)
    old_u = None
    for i in range(len(sig) - 1):
        d_cfg, d_u = _guided(x, sig[i].reshape(1), cfg)
        lam, lam_next = -math.log(float(sig[i])), (-math.log(float(sig[i + 1])) if sig[i + 1] > 0 else math.inf)
        h = lam_next - lam
        # x_next = sigma_next/sigma * (x - u) + d_cfg  (+ second-order correction on the uncond history)
        x_next = math.exp(-h) * (x - d_u) + d_cfg
        if old_u is not None and sig[i + 1] > 0:
            r = (lam - (-math.log(float(sig[i - 1])))) / h
            x_next = x_next - math.expm1(-h) / (2 * r) * (d_cfg - old_u)
        x, old_u = x_next, d_u
    ours = get_sampler("dpmpp_2m_cfg_pp")(_TwoPromptModel(cfg), _x(sigmas[0]), sigmas, extra_args={})
    _close(ours, x)


def test_ipndm_v_published_fourth_order_differs_from_adams_bashforth():
    """Documented quirk kept for compatibility: the published order-4 correction is not AB4 even on
    uniform steps (AB4 would give 55/24 for the newest slope), while order 2 and 3 reduce to AB2/AB3."""
    from diffusion.sampling.samplers.multistep import ipndm_v_coefficients

    assert ipndm_v_coefficients(-1.0, -1.0, None, None, 2) == pytest.approx([3 / 2, -1 / 2])
    assert ipndm_v_coefficients(-1.0, -1.0, -1.0, None, 3) == pytest.approx([23 / 12, -16 / 12, 5 / 12])
    assert ipndm_v_coefficients(-1.0, -1.0, -1.0, -1.0, 4)[0] != pytest.approx(55 / 24)


def _exp_integral(x, sigma_s, sigma_t, lams, preds):
    """Exponential integrator step in x0 prediction, float64 by Gauss-Legendre quadrature:
    x_t = (sigma_t / sigma_s) x + sigma_t * integral over [lambda_s, lambda_t] of e^lambda P(lambda),
    P the Lagrange polynomial through (lams, preds), lambda = -log sigma."""
    import numpy as np

    lo, hi = -math.log(sigma_s), -math.log(sigma_t)
    nodes, weights = np.polynomial.legendre.leggauss(20)
    integral = torch.zeros_like(x)
    for node, w in zip(nodes, weights):
        lam = 0.5 * (hi - lo) * node + 0.5 * (hi + lo)
        basis = [math.prod((lam - lams[k]) / (lams[j] - lams[k]) for k in range(len(lams)) if k != j)
                 for j in range(len(lams))]
        integral = integral + 0.5 * (hi - lo) * w * math.exp(lam) * sum(b * p for b, p in zip(basis, preds))
    return sigma_t / sigma_s * x + sigma_t * integral


@few_steps
def test_res_multistep_is_exponential_integrator_with_linear_extrapolation(sigmas):
    """RES 2nd-order multistep (Zhang et al. 2023) = the exponential integrator whose x0 is the line
    through the last two predictions in lambda; first step constant, last step returns x0."""
    sig = [float(s) for s in sigmas.double()]
    model = _ref_model()
    x = _x(sig[0], torch.float64)
    lams, preds = [], []
    for i in range(len(sig) - 1):
        d = model(x, torch.tensor([sig[i]], dtype=torch.float64))
        if sig[i + 1] == 0:
            x = d
            break
        lams, preds = (lams + [-math.log(sig[i])])[-2:], (preds + [d])[-2:]
        x = _exp_integral(x, sig[i], sig[i + 1], lams, preds)
    _close(_run("res_multistep", sigmas), x)


@few_steps
def test_exp_heun_2_x0_is_exponential_trapezoid(sigmas):
    """Exponential Heun in x0 prediction: predictor with constant x0, then the exponential integrator
    of the line between the x0 predictions at both ends of the step."""
    sig = [float(s) for s in sigmas.double()]
    model = _ref_model()
    x = _x(sig[0], torch.float64)
    for i in range(len(sig) - 1):
        d = model(x, torch.tensor([sig[i]], dtype=torch.float64))
        if sig[i + 1] == 0:
            x = d
            break
        lam_s, lam_t = -math.log(sig[i]), -math.log(sig[i + 1])
        x_2 = _exp_integral(x, sig[i], sig[i + 1], [lam_s], [d])
        d_2 = model(x_2, torch.tensor([sig[i + 1]], dtype=torch.float64))
        x = _exp_integral(x, sig[i], sig[i + 1], [lam_s, lam_t], [d, d_2])
    _close(_run("exp_heun_2_x0", sigmas), x)


@few_steps
def test_seeds_2_without_noise_is_dpmpp_2s(sigmas):
    _close(_run("seeds_2", sigmas, eta=0.0), _run("dpmpp_2s_ancestral", sigmas, eta=0.0), tol=1e-5)


@few_steps
def test_gradient_estimation_with_gamma_one_is_euler(sigmas):
    _close(_run("gradient_estimation", sigmas, ge_gamma=1.0), _run("euler", sigmas), tol=1e-5)


@pytest.mark.parametrize("pece", [False, True])
@few_steps
def test_sa_solver_ode_limit_is_adams_predictor_corrector(pece, sigmas):
    """SA-Solver with tau = 0: Adams-Bashforth predictor (x0 interpolated in lambda through the last 3
    predictions) and Adams-Moulton corrector (last 4, including the new one) of the exponential
    integrator; orders drop near the end of a schedule that ends at 0; PECE re-evaluates the corrected
    state."""
    sig = [float(s) for s in sigmas.double()]
    lams = [-math.log(s) if s > 0 else math.inf for s in sig]
    model = _ref_model()
    evaluate = lambda x, i: model(x, torch.tensor([sig[i]], dtype=torch.float64))  # noqa: E731
    x = x_pred = _x(sig[0], torch.float64)
    preds = []
    n = len(sig) - 1
    for i in range(n):
        d = evaluate(x_pred, i)
        preds = (preds + [d])[-4:]
        c = 0 if (i == 0 or (sig[i + 1] == 0 and not pece)) else min(4, len(preds))
        if sig[-1] == 0:  # orders drop near the end only when the schedule ends at 0
            c = min(c, n - i)
        if c:
            x = _exp_integral(x, sig[i - 1], sig[i], lams[i - c + 1:i + 1], preds[-c:])
            if pece:
                d = preds[-1] = evaluate(x, i)
        else:
            x = x_pred
        if sig[i + 1] == 0:
            x_pred = d
        else:
            p = min(3, len(preds), n - 1 - i) if sig[-1] == 0 else min(3, len(preds))
            x_pred = _exp_integral(x, sig[i], sig[i + 1], lams[i - p + 1:i + 1], preds[-p:])
    name = "sa_solver_pece" if pece else "sa_solver"
    _close(_run(name, sigmas, tau_func=lambda sigma: 0.0), x_pred)
