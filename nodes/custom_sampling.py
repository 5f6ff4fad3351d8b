"""Custom sampling: KSampler taken apart into NOISE, GUIDER, SAMPLER and SIGMAS (ComfyUI's
comfy_extras/nodes_custom_sampler, which /object_info reports as its python_module).

The values are diffusion/sampling's runtime objects: SAMPLER a registry.Sampler (a sampler function and
its options), SIGMAS a 1-D float tensor, NOISE a noise.RandomNoise / DisableNoise, GUIDER a
guiders.Guider. SamplerCustom(Advanced) run guiders.Guider.sample, the code KSampler runs, so the same
parts give the same latent. Progress, interrupts and previews work as for KSampler.
"""
from __future__ import annotations

import torch

from diffusion.sampling import registry, schedulers
from diffusion.sampling.guiders import BasicGuider as BasicGuiderObject
from diffusion.sampling.guiders import CFGGuider as CFGGuiderObject
from diffusion.sampling.guiders import DualCFGGuider as DualCFGGuiderObject
from diffusion.sampling.guiders import add_noise, fix_empty_latent_channels
from diffusion.sampling.noise import DisableNoise as DisableNoiseObject
from diffusion.sampling.noise import RandomNoise as RandomNoiseObject
from diffusion.sampling.samplers.sa_solver import tau_interval
from graph.progress import check_interrupt
from nodes.sd_sampling import SEED_MAX, progress_callback
from nodes.spec import Boolean, Combo, Float, Int, Link, Out, String, mappings, node

_CATEGORY = "sampling/custom_sampling"
_SIGMA_MAX, _SIGMA_MIN = 14.614642, 0.0291675  # the SD1/SDXL table's ends, ComfyUI's defaults


def _float(name, default, lo, hi, step=0.01, **hints):
    """A float widget without rounding (ComfyUI's round=False), as the scheduler/sampler knobs are."""
    return Float(name, default, min=lo, max=hi, step=step, round=False, **hints)


def _steps(default=20):
    return Int("steps", default, min=1, max=10000)


def _sigma_range():
    return [_float("sigma_max", _SIGMA_MAX, 0.0, 5000.0), _float("sigma_min", _SIGMA_MIN, 0.0, 5000.0)]


def _positive(node_name: str, **values):
    """Schedules built on logarithms need strictly positive inputs; say which one is not."""
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{node_name}: input '{name}' must be greater than 0, got {value}")


def _seed(name="noise_seed"):
    return Int(name, 0, min=0, max=SEED_MAX, control_after_generate=True)


def _cfg(name="cfg"):
    return Float(name, 8.0, min=0.0, max=100.0, step=0.1, round=0.01)


_SIGMAS_OUT = [Out("SIGMAS")]
_SAMPLER_OUT = [Out("SAMPLER")]
_SPLIT_OUT = [Out("SIGMAS", "high_sigmas"), Out("SIGMAS", "low_sigmas")]
_LATENT_PAIR = [Out("LATENT", "output", tooltip="The sampled latent."),
                Out("LATENT", "denoised_output", tooltip="The model's x0 prediction at the last step.")]


# --- running -----------------------------------------------------------------------------------------

def sample_custom(guider, noise, sampler, sigmas, latent: dict, seed) -> tuple[dict, dict]:
    """(output, denoised_output) LATENT dicts: sample with the given parts and keep the last x0."""
    check_interrupt()
    model = guider.model_patcher  # ComfyUI's attribute, so guiders from plugins work too
    latent = latent.copy()  # keeps noise_mask / batch_index for the next stage
    latent["samples"] = fix_empty_latent_channels(model, latent["samples"])
    progress = progress_callback(model)
    last = {}

    def callback(step, total, x0):
        last["x0"] = x0
        progress(step, total, x0)

    samples = guider.sample(noise.generate_noise(latent), latent["samples"], sampler, sigmas,
                            denoise_mask=latent.get("noise_mask"), callback=callback, disable_pbar=True, seed=seed)
    out = {**latent, "samples": samples}
    if "x0" not in last:  # no step ran (fewer than two sigmas)
        return out, out
    x0 = model.latent_format.process_out(last["x0"].to("cpu", torch.float32))
    return out, {**latent, "samples": x0}


@node(category=_CATEGORY, outputs=_LATENT_PAIR,
      description="Samples with KSampler's guidance (cfg) and a SAMPLER and SIGMAS of your choice.",
      inputs=[Link("model", "MODEL"), Boolean("add_noise", True), _seed(), _cfg(),
              Link("positive", "CONDITIONING"), Link("negative", "CONDITIONING"), Link("sampler", "SAMPLER"),
              Link("sigmas", "SIGMAS"), Link("latent_image", "LATENT")])
class SamplerCustom:
    def execute(self, model, add_noise, noise_seed, cfg, positive, negative, sampler, sigmas, latent_image):
        noise = RandomNoiseObject(noise_seed) if add_noise else DisableNoiseObject()
        guider = CFGGuiderObject(model, positive, negative, cfg)
        return sample_custom(guider, noise, sampler, sigmas, latent_image, seed=noise_seed)


@node(category=_CATEGORY, outputs=_LATENT_PAIR,
      description="Samples with separate NOISE, GUIDER, SAMPLER and SIGMAS.",
      inputs=[Link("noise", "NOISE"), Link("guider", "GUIDER"), Link("sampler", "SAMPLER"),
              Link("sigmas", "SIGMAS"), Link("latent_image", "LATENT")])
class SamplerCustomAdvanced:
    def execute(self, noise, guider, sampler, sigmas, latent_image):
        return sample_custom(guider, noise, sampler, sigmas, latent_image, seed=noise.seed)


# --- schedulers (SIGMAS) -----------------------------------------------------------------------------

@node(category=_CATEGORY + "/schedulers", outputs=_SIGMAS_OUT,
      inputs=[Link("model", "MODEL"), Combo("scheduler", lambda: list(schedulers.SCHEDULER_NAMES)), _steps(),
              Float("denoise", 1.0, min=0.0, max=1.0, step=0.01)])
class BasicScheduler:
    def execute(self, model, scheduler, steps, denoise):
        # KSampler's rule: a partial denoise is the tail of a longer schedule
        total = steps
        if denoise < 1.0:
            if denoise <= 0.0:
                return (torch.zeros(0),)
            total = int(steps / denoise)
        sigmas = schedulers.calculate_sigmas(model.model_sampling, scheduler, total)
        return (sigmas[-(steps + 1):],)


@node(category=_CATEGORY + "/schedulers", outputs=_SIGMAS_OUT,
      inputs=[_steps(), *_sigma_range(), _float("rho", 7.0, 0.0, 100.0)])
class KarrasScheduler:
    def execute(self, steps, sigma_max, sigma_min, rho):
        _positive("KarrasScheduler", rho=rho)
        return (schedulers.get_sigmas_karras(steps, sigma_min, sigma_max, rho),)


@node(category=_CATEGORY + "/schedulers", outputs=_SIGMAS_OUT, inputs=[_steps(), *_sigma_range()])
class ExponentialScheduler:
    def execute(self, steps, sigma_max, sigma_min):
        _positive("ExponentialScheduler", sigma_max=sigma_max, sigma_min=sigma_min)
        return (schedulers.get_sigmas_exponential(steps, sigma_min, sigma_max),)


@node(category=_CATEGORY + "/schedulers", outputs=_SIGMAS_OUT,
      inputs=[_steps(), *_sigma_range(), _float("rho", 1.0, 0.0, 100.0)])
class PolyexponentialScheduler:
    def execute(self, steps, sigma_max, sigma_min, rho):
        _positive("PolyexponentialScheduler", sigma_max=sigma_max, sigma_min=sigma_min)
        return (schedulers.get_sigmas_polyexponential(steps, sigma_min, sigma_max, rho),)


@node(category=_CATEGORY + "/schedulers", outputs=_SIGMAS_OUT,
      inputs=[_steps(), *_sigma_range(), _float("mu", 0.0, -10.0, 10.0, step=0.1),
              _float("beta", 0.5, 0.0, 10.0, step=0.1)])
class LaplaceScheduler:
    def execute(self, steps, sigma_max, sigma_min, mu, beta):
        return (schedulers.get_sigmas_laplace(steps, sigma_min, sigma_max, mu, beta),)


@node(category=_CATEGORY + "/schedulers", outputs=_SIGMAS_OUT,
      inputs=[_steps(), _float("beta_d", 19.9, 0.0, 5000.0), _float("beta_min", 0.1, 0.0, 5000.0),
              _float("eps_s", 0.001, 0.0, 1.0, step=0.0001)])
class VPScheduler:
    def execute(self, steps, beta_d, beta_min, eps_s):
        return (schedulers.get_sigmas_vp(steps, beta_d, beta_min, eps_s),)


@node(category=_CATEGORY + "/schedulers", outputs=_SIGMAS_OUT,
      inputs=[Link("model", "MODEL"), _steps(), _float("alpha", 0.6, 0.0, 50.0), _float("beta", 0.6, 0.0, 50.0)])
class BetaSamplingScheduler:
    def execute(self, model, steps, alpha, beta):
        _positive("BetaSamplingScheduler", alpha=alpha, beta=beta)
        return (schedulers.beta_sigmas(model.model_sampling, steps, alpha=alpha, beta=beta),)


@node(category=_CATEGORY + "/schedulers", outputs=_SIGMAS_OUT,
      inputs=[Link("model", "MODEL"), Int("steps", 1, min=1, max=10),
              Float("denoise", 1.0, min=0, max=1.0, step=0.01)])
class SDTurboScheduler:
    def execute(self, model, steps, denoise):
        return (schedulers.sd_turbo_sigmas(model.model_sampling, steps, denoise),)


# --- editing SIGMAS ----------------------------------------------------------------------------------

@node(category=_CATEGORY + "/sigmas", outputs=_SPLIT_OUT,
      inputs=[Link("sigmas", "SIGMAS"), Int("step", 0, min=0, max=10000)])
class SplitSigmas:
    def execute(self, sigmas, step):
        return schedulers.split_sigmas(sigmas, step)


@node(category=_CATEGORY + "/sigmas", outputs=_SPLIT_OUT,
      inputs=[Link("sigmas", "SIGMAS"), Float("denoise", 1.0, min=0.0, max=1.0, step=0.01)])
class SplitSigmasDenoise:
    def execute(self, sigmas, denoise):
        return schedulers.split_sigmas_denoise(sigmas, denoise)


@node(category=_CATEGORY + "/sigmas", outputs=_SIGMAS_OUT, inputs=[Link("sigmas", "SIGMAS")])
class FlipSigmas:
    def execute(self, sigmas):
        return (schedulers.flip_sigmas(sigmas),)


@node(category=_CATEGORY + "/sigmas", outputs=_SIGMAS_OUT,
      inputs=[Link("sigmas", "SIGMAS"), _float("sigma", 136.0, 0.0, 20000.0, step=0.001)])
class SetFirstSigma:
    def execute(self, sigmas, sigma):
        if len(sigmas) == 0:
            raise ValueError("SetFirstSigma: input 'sigmas' is empty; there is no first sigma to set")
        return (schedulers.set_first_sigma(sigmas, sigma),)


@node(category=_CATEGORY + "/sigmas", outputs=[Out("FLOAT", "sigma_value")],
      inputs=[Link("model", "MODEL"), Float("sampling_percent", 0.0, min=0.0, max=1.0, step=0.0001),
              Boolean("return_actual_sigma", False,
                      tooltip="Return the actual sigma value instead of the value used for interval checks.\n"
                              "This only affects results at 0.0 and 1.0.")])
class SamplingPercentToSigma:
    def execute(self, model, sampling_percent, return_actual_sigma):
        ms = model.model_sampling
        # percent_to_sigma puts 0 and 1 just outside the table so ranges include their ends
        if return_actual_sigma and sampling_percent == 0.0:
            return (float(ms.sigma_max),)
        if return_actual_sigma and sampling_percent == 1.0:
            return (float(ms.sigma_min),)
        return (float(ms.percent_to_sigma(sampling_percent)),)


@node(category="_for_testing/custom_sampling", outputs=_SIGMAS_OUT, experimental=True,
      inputs=[String("sigmas", "1, 0.5", multiline=False)])
class ManualSigmas:
    def execute(self, sigmas):
        return (schedulers.parse_sigmas(sigmas),)


# --- samplers (SAMPLER) ------------------------------------------------------------------------------

@node(category=_CATEGORY + "/samplers", outputs=_SAMPLER_OUT,
      inputs=[Combo("sampler_name", lambda: list(registry.SAMPLER_NAMES))])
class KSamplerSelect:
    def execute(self, sampler_name):
        return (registry.sampler_object(sampler_name),)


def _eta_noise(eta_max=100.0, s_noise_max=100.0):
    return [_float("eta", 1.0, 0.0, eta_max), _float("s_noise", 1.0, 0.0, s_noise_max)]


def _noise_device():
    return Combo("noise_device", ["gpu", "cpu"])


def _on_device(name: str, noise_device: str) -> str:
    """The _gpu variant builds its Brownian tree on the model's device, the plain one on the CPU."""
    return name if noise_device == "cpu" else name + "_gpu"


@node(category=_CATEGORY + "/samplers", outputs=_SAMPLER_OUT, inputs=_eta_noise())
class SamplerEulerAncestral:
    def execute(self, eta, s_noise):
        return (registry.sampler_object("euler_ancestral", {"eta": eta, "s_noise": s_noise}),)


@node(category=_CATEGORY + "/samplers", outputs=_SAMPLER_OUT, display_name="SamplerEulerAncestralCFG++",
      inputs=_eta_noise(eta_max=1.0, s_noise_max=10.0))
class SamplerEulerAncestralCFGPP:
    def execute(self, eta, s_noise):
        return (registry.sampler_object("euler_ancestral_cfg_pp", {"eta": eta, "s_noise": s_noise}),)


@node(category=_CATEGORY + "/samplers", outputs=_SAMPLER_OUT, inputs=[Int("order", 4, min=1, max=100)])
class SamplerLMS:
    def execute(self, order):
        return (registry.sampler_object("lms", {"order": order}),)


@node(category=_CATEGORY + "/samplers", outputs=_SAMPLER_OUT, inputs=[*_eta_noise(), _noise_device()])
class SamplerDPMPP_3M_SDE:
    def execute(self, eta, s_noise, noise_device):
        return (registry.sampler_object(_on_device("dpmpp_3m_sde", noise_device), {"eta": eta, "s_noise": s_noise}),)


@node(category=_CATEGORY + "/samplers", outputs=_SAMPLER_OUT,
      inputs=[Combo("solver_type", ["midpoint", "heun"]), *_eta_noise(), _noise_device()])
class SamplerDPMPP_2M_SDE:
    def execute(self, solver_type, eta, s_noise, noise_device):
        options = {"eta": eta, "s_noise": s_noise, "solver_type": solver_type}
        return (registry.sampler_object(_on_device("dpmpp_2m_sde", noise_device), options),)


@node(category=_CATEGORY + "/samplers", outputs=_SAMPLER_OUT,
      inputs=[*_eta_noise(), _float("r", 0.5, 0.0, 100.0), _noise_device()])
class SamplerDPMPP_SDE:
    def execute(self, eta, s_noise, r, noise_device):
        options = {"eta": eta, "s_noise": s_noise, "r": r}
        return (registry.sampler_object(_on_device("dpmpp_sde", noise_device), options),)


@node(category=_CATEGORY + "/samplers", outputs=_SAMPLER_OUT, inputs=_eta_noise())
class SamplerDPMPP_2S_Ancestral:
    def execute(self, eta, s_noise):
        return (registry.sampler_object("dpmpp_2s_ancestral", {"eta": eta, "s_noise": s_noise}),)


_ADAPTIVE = [("rtol", 0.05), ("atol", 0.0078), ("h_init", 0.05), ("pcoeff", 0.0), ("icoeff", 1.0),
             ("dcoeff", 0.0), ("accept_safety", 0.81), ("eta", 0.0), ("s_noise", 1.0)]


@node(category=_CATEGORY + "/samplers", outputs=_SAMPLER_OUT,
      inputs=[Int("order", 3, min=2, max=3), *[_float(name, value, 0.0, 100.0) for name, value in _ADAPTIVE]])
class SamplerDPMAdaptative:
    def execute(self, **options):
        return (registry.sampler_object("dpm_adaptive", options),)


@node(category=_CATEGORY + "/samplers", outputs=_SAMPLER_OUT,
      inputs=[Combo("solver_type", ["ER-SDE", "Reverse-time SDE", "ODE"]), Int("max_stage", 3, min=1, max=3),
              _float("eta", 1.0, 0.0, 100.0, tooltip="Stochastic strength of reverse-time SDE.\nWhen eta=0, it "
                     "reduces to deterministic ODE. This setting doesn't apply to ER-SDE solver type."),
              _float("s_noise", 1.0, 0.0, 100.0)])
class SamplerER_SDE:
    def execute(self, solver_type, max_stage, eta, s_noise):
        if solver_type == "ODE" or (solver_type == "Reverse-time SDE" and eta == 0):
            eta, s_noise = 0, 0
        # ER-SDE keeps the sampler's own noise scaler; reverse-time SDE scales by x^(eta + 1)
        scaler = None if solver_type == "ER-SDE" else (lambda x, power=eta + 1: x ** power)
        options = {"s_noise": s_noise, "noise_scaler": scaler, "max_stage": max_stage}
        return (registry.sampler_object("er_sde", options),)


@node(category=_CATEGORY + "/samplers", outputs=_SAMPLER_OUT,
      inputs=[Link("model", "MODEL"), _float("eta", 1.0, 0.0, 10.0),
              Float("sde_start_percent", 0.2, min=0.0, max=1.0, step=0.001),
              Float("sde_end_percent", 0.8, min=0.0, max=1.0, step=0.001), _float("s_noise", 1.0, 0.0, 100.0),
              Int("predictor_order", 3, min=1, max=6), Int("corrector_order", 4, min=0, max=6),
              Boolean("use_pece"), Boolean("simple_order_2")])
class SamplerSASolver:
    def execute(self, model, eta, sde_start_percent, sde_end_percent, s_noise, predictor_order, corrector_order,
                use_pece, simple_order_2):
        ms = model.model_sampling
        tau = tau_interval(ms.percent_to_sigma(sde_start_percent), ms.percent_to_sigma(sde_end_percent), eta=eta)
        options = {"tau_func": tau, "s_noise": s_noise, "predictor_order": predictor_order,
                   "corrector_order": corrector_order, "use_pece": use_pece, "simple_order_2": simple_order_2}
        return (registry.sampler_object("sa_solver", options),)


@node(category=_CATEGORY + "/samplers", outputs=_SAMPLER_OUT,
      inputs=[Combo("solver_type", ["phi_1", "phi_2"]),
              _float("eta", 1.0, 0.0, 100.0, tooltip="Stochastic strength"),
              _float("s_noise", 1.0, 0.0, 100.0, tooltip="SDE noise multiplier"),
              _float("r", 0.5, 0.01, 1.0, tooltip="Relative step size for the intermediate stage (c2 node)")])
class SamplerSEEDS2:
    def execute(self, solver_type, eta, s_noise, r):
        options = {"eta": eta, "s_noise": s_noise, "r": r, "solver_type": solver_type}
        return (registry.sampler_object("seeds_2", options),)


# --- guiders (GUIDER) and noise (NOISE) --------------------------------------------------------------

@node(category=_CATEGORY + "/guiders", outputs=[Out("GUIDER")],
      inputs=[Link("model", "MODEL"), Link("conditioning", "CONDITIONING")])
class BasicGuider:
    def execute(self, model, conditioning):
        return (BasicGuiderObject(model, conditioning),)


@node(category=_CATEGORY + "/guiders", outputs=[Out("GUIDER")],
      inputs=[Link("model", "MODEL"), Link("positive", "CONDITIONING"), Link("negative", "CONDITIONING"), _cfg()])
class CFGGuider:
    def execute(self, model, positive, negative, cfg):
        return (CFGGuiderObject(model, positive, negative, cfg),)


@node(category=_CATEGORY + "/guiders", outputs=[Out("GUIDER")],
      inputs=[Link("model", "MODEL"), Link("cond1", "CONDITIONING"), Link("cond2", "CONDITIONING"),
              Link("negative", "CONDITIONING"), _cfg("cfg_conds"), _cfg("cfg_cond2_negative"),
              Combo("style", ["regular", "nested"])])
class DualCFGGuider:
    def execute(self, model, cond1, cond2, negative, cfg_conds, cfg_cond2_negative, style):
        guider = DualCFGGuiderObject(model, cond1, cond2, negative, cfg_conds, cfg_cond2_negative,
                                     nested=style == "nested")
        return (guider,)


@node(category=_CATEGORY + "/noise", outputs=[Out("NOISE")], inputs=[_seed()])
class RandomNoise:
    def execute(self, noise_seed):
        return (RandomNoiseObject(noise_seed),)


@node(category=_CATEGORY + "/noise", outputs=[Out("NOISE")])
class DisableNoise:
    def execute(self):
        return (DisableNoiseObject(),)


@node(category="_for_testing/custom_sampling/noise", outputs=[Out("LATENT")], experimental=True,
      inputs=[Link("model", "MODEL"), Link("noise", "NOISE"), Link("sigmas", "SIGMAS"), Link("latent_image", "LATENT")])
class AddNoise:
    def execute(self, model, noise, sigmas, latent_image):
        if len(sigmas) == 0:
            return (latent_image,)
        return ({**latent_image, "samples": add_noise(model, noise.generate_noise(latent_image),
                                                      latent_image["samples"], sigmas)},)


_CLASSES = (SamplerCustom, BasicScheduler, KarrasScheduler, ExponentialScheduler, PolyexponentialScheduler,
            LaplaceScheduler, VPScheduler, BetaSamplingScheduler, SDTurboScheduler, KSamplerSelect,
            SamplerEulerAncestral, SamplerEulerAncestralCFGPP, SamplerLMS, SamplerDPMPP_3M_SDE, SamplerDPMPP_2M_SDE,
            SamplerDPMPP_SDE, SamplerDPMPP_2S_Ancestral, SamplerDPMAdaptative, SamplerER_SDE, SamplerSASolver,
            SamplerSEEDS2, SplitSigmas, SplitSigmasDenoise, FlipSigmas, SetFirstSigma, SamplingPercentToSigma,
            CFGGuider, DualCFGGuider, BasicGuider, RandomNoise, DisableNoise, AddNoise, SamplerCustomAdvanced,
            ManualSigmas)
NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = mappings(*_CLASSES)
for _cls in _CLASSES:
    _cls.RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_custom_sampler"
del _cls
