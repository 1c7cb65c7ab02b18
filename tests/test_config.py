import pytest

from genlab.config import apply_overrides, config_to_yaml, load_preset, preset_names
from genlab.detect.family import DetectorConfig
from genlab.errors import GenlabError
from genlab.methods.autoencoder import AutoencoderConfig
from genlab.methods.diffusion import DiffusionConfig, LatentDiffusionConfig
from genlab.methods.edm import EDMConfig
from genlab.methods.flow import RealNVPConfig
from genlab.methods.flow_matching import FlowMatchingConfig
from genlab.methods.gan import GANConfig
from genlab.methods.kl_autoencoder import KLAutoencoderConfig
from genlab.methods.latent_flow import LatentEDMConfig, LatentFlowMatchingConfig
from genlab.methods.latent_gan import LatentGANConfig
from genlab.methods.vae import VAEConfig
from genlab.methods.vaegan import VAEGANConfig
from genlab.resolve import load_config, resolve_config


def test_every_shipped_preset_resolves():
    names = preset_names()
    assert {"quickstart", "tiny-vae", "tiny-dcgan", "vae-ck-seed001", "vae-celeba64-seed002",
            "dcgan-celeba64", "dcgan-ck-seed001"} <= set(names)
    for name in names:
        cfg = load_config(name)
        assert cfg.name == name
        expected = {"vae": VAEConfig, "gan": GANConfig, "realnvp": RealNVPConfig, "ddpm": DiffusionConfig,
                    "latent-ddpm": LatentDiffusionConfig, "detector": DetectorConfig,
                    "autoencoder": AutoencoderConfig, "vaegan": VAEGANConfig, "latent-gan": LatentGANConfig,
                    "edm": EDMConfig, "flow-matching": FlowMatchingConfig, "kl-autoencoder": KLAutoencoderConfig,
                    "latent-edm": LatentEDMConfig, "latent-flow-matching": LatentFlowMatchingConfig}[cfg.method]
        assert type(cfg.model) is expected
        assert load_preset(name)["description"]


def test_seed_presets_carry_the_reported_settings():
    ck = load_config("vae-ck-seed001")
    assert (ck.train.batch_size, ck.model.optim.lr, ck.model.kl_weight, ck.model.optim.weight_decay, ck.model.dropout) == (
        2500, 5e-4, 0.01, 1e-5, 0.2)
    assert (ck.data.size, ck.data.channels) == (64, 1)
    celeba = load_config("vae-celeba64-seed002")
    assert (celeba.model.latent_dim, celeba.model.optim.lr, celeba.model.optim.lr_gamma, celeba.model.kl_weight,
            celeba.model.activation, celeba.train.batch_size) == (128, 5e-3, 0.95, 0.00025, "leaky_relu", 128)
    gan = load_config("dcgan-ck-seed001")
    assert (gan.method, gan.model.arch, gan.model.loss) == ("gan", "dcgan", "nonsaturating")
    assert (gan.model.d_dropout, gan.model.g_optim.betas[0], gan.model.d_optim.betas[0], gan.model.latent_dim) == (
        0.1, 0.5, 0.5, 100)


def test_overrides_are_typed():
    cfg = load_config("tiny-vae", ["train.epochs=7", "model.optim.lr=5e-4", "model.widths=[4, 8]", "data.limit=null"])
    assert cfg.train.epochs == 7 and isinstance(cfg.train.epochs, int)
    assert cfg.model.optim.lr == 5e-4 and isinstance(cfg.model.optim.lr, float)
    assert cfg.model.widths == [4, 8]
    assert cfg.data.limit is None


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model.latnt_dim=3", "'model.latent_dim'"),
        ("trian.epochs=3", "'train.epochs'"),
        ("train.batchsize=3", "'train.batch_size'"),
    ],
)
def test_unknown_key_names_the_key_and_nearest_valid(override, expected):
    with pytest.raises(GenlabError) as e:
        load_config("tiny-vae", [override])
    msg = str(e.value)
    assert f"unknown config key '{override.split('=')[0]}'" in msg
    assert expected.strip("'") in msg


@pytest.mark.parametrize(
    "override, key",
    [("train.batch_size=abc", "train.batch_size"), ("train.epochs=2.5", "train.epochs"),
     ("model.optim.lr=fast", "model.optim.lr"), ("train.batch_size=true", "train.batch_size"),
     ("model.widths=8", "model.widths")],
)
def test_wrong_type_names_the_key(override, key):
    with pytest.raises(GenlabError, match=f"'{key}' expects"):
        load_config("tiny-vae", [override])


def test_invalid_choices_and_ranges():
    with pytest.raises(GenlabError, match="'model.recon_loss' must be one of mse, bce"):
        load_config("tiny-vae", ["model.recon_loss=l1"])
    with pytest.raises(GenlabError, match="'train.batch_size' must be > 0"):
        load_config("tiny-vae", ["train.batch_size=0"])
    with pytest.raises(GenlabError, match="'data.size' must be a power of two"):
        load_config("tiny-vae", ["data.size=48"])
    with pytest.raises(GenlabError, match="unknown method 'vea'; did you mean vae"):
        load_config("tiny-vae", ["method=vea"])


def test_gan_keys_are_unknown_to_a_vae():
    with pytest.raises(GenlabError, match="unknown config key 'model.d_dropout'"):
        load_config("tiny-vae", ["model.d_dropout=0.1"])


def test_unknown_preset_suggests_a_name():
    with pytest.raises(GenlabError, match="unknown preset 'quikstart'; did you mean quickstart"):
        load_config("quikstart")


def test_resolved_config_round_trips_through_yaml():
    import yaml

    cfg = load_config("quickstart", ["train.epochs=3"])
    again = resolve_config(yaml.safe_load(config_to_yaml(cfg)))
    assert again == cfg


def test_override_into_a_value_is_an_error():
    with pytest.raises(GenlabError, match="is a value, not a section"):
        apply_overrides({"train": {"epochs": 1}}, ["train.epochs.x=1"])
    with pytest.raises(GenlabError, match="must look like key=value"):
        apply_overrides({}, ["train.epochs"])


def test_renamed_keys_of_genlab_0_1_still_resolve(caplog):
    """Presets, overrides and checkpoint configs written before the shared optimizer section."""
    old_gan = {"method": "dcgan", "model": {"lr_g": 1e-4, "lr_d": 4e-4, "betas": [0.0, 0.9]}}
    cfg = resolve_config(old_gan)
    assert cfg.method == "gan" and cfg.model.arch == "dcgan"  # dcgan is the GAN family's alias
    assert (cfg.model.g_optim.lr, cfg.model.d_optim.lr) == (1e-4, 4e-4)
    assert cfg.model.g_optim.betas == cfg.model.d_optim.betas == [0.0, 0.9]
    assert "'model.lr_g' is now 'model.g_optim.lr'" in caplog.text
    vae = load_config("tiny-vae", ["model.lr=5e-4", "model.optimizer=adamw", "model.grad_clip=2.0"])
    assert (vae.model.optim.lr, vae.model.optim.name, vae.model.optim.grad_clip) == (5e-4, "adamw", 2.0)
    with pytest.raises(GenlabError, match="'model.optim.name' must be one of adam, adamw, rmsprop"):
        load_config("tiny-vae", ["model.optim.name=sgd"])


def test_the_config_module_imports_no_registry():
    """config.py is the schema: the registries import it, never the other way round."""
    import subprocess
    import sys

    code = ("import sys, genlab.config; print(sorted(m for m in sys.modules if m.startswith('genlab')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = eval(out)
    assert not [m for m in loaded if m.startswith(("genlab.methods", "genlab.data", "genlab.train", "genlab.samplers",
                                                    "genlab.models", "genlab.metrics.table", "genlab.registry"))], loaded
    base = subprocess.run([sys.executable, "-c", "import sys, genlab.methods.base; "
                           "print([m for m in sys.modules if m.startswith('genlab.train')])"],
                          capture_output=True, text=True, check=True).stdout
    assert base.strip() == "[]"  # methods/base.py depends on nothing in train/


def test_the_sampler_section_is_typed_by_its_sampler():
    cfg = load_config("tiny-dcgan", ["sampler.temperature=0.7"])
    assert (cfg.sampler.name, cfg.sampler.temperature) == ("latent", 0.7)
    assert load_config("tiny-vae").sampler.name == "latent"  # the family's default sampler
    with pytest.raises(GenlabError, match="unknown config key 'sampler.steps'"):
        load_config("tiny-dcgan", ["sampler.steps=10"])
    with pytest.raises(GenlabError, match="unknown sampler 'rk4'"):
        load_config("tiny-dcgan", ["sampler.name=rk4"])
    with pytest.raises(GenlabError, match="sampler.name=ddim: method 'gan' samples with latent"):
        load_config("tiny-dcgan", ["sampler.name=ddim"])
    with pytest.raises(GenlabError, match="'sampler.temperature' must be > 0"):
        load_config("tiny-dcgan", ["sampler.temperature=0"])


@pytest.mark.parametrize("preset, overrides, message", [
    ("tiny-dcgan", ["train.patience=3"], "train.patience=3: method 'gan' has no validation loss to watch"),
    ("tiny-dcgan", ["eval.metrics=[recon]"], "eval.metrics: recon needs a learned encoder, and method 'gan' has none"),
    ("tiny-dcgan", ["eval.metrics=[fid, bpd]"], "eval.metrics: bpd needs a likelihood, and method 'gan' has none"),
    ("tiny-vae", ["train.ema_decay=1.0"], "'train.ema_decay' must be in [0, 1)"),
    ("tiny-vae", ["train.accumulate=64"], "more micro-batches than it has images"),
    ("tiny-vae", ["train.monitor=fid"], "train.monitor=fid needs eval.every > 0"),
])
def test_what_a_family_cannot_do_is_refused_when_the_config_resolves(preset, overrides, message):
    with pytest.raises(GenlabError) as e:
        load_config(preset, overrides)
    assert message in str(e.value)


def test_patience_on_a_gan_works_when_it_watches_an_evaluated_metric():
    cfg = load_config("tiny-dcgan", ["train.patience=3", "train.monitor=swd", "eval.every=1", "eval.metrics=[swd]"])
    assert cfg.train.patience == 3 and cfg.train.monitor == "swd"


def test_a_partial_override_of_a_section_keeps_the_family_defaults_of_the_rest():
    """`model.d_optim.lr=4e-4` changes the learning rate only: the GAN's own defaults for the rest of
    that section (Adam, beta1 = 0.5) stay, not the generic OptimConfig's."""
    cfg = load_config("tiny-dcgan", ["model.d_optim.lr=4e-4"])
    assert cfg.model.d_optim.lr == 4e-4
    assert cfg.model.d_optim.betas == cfg.model.g_optim.betas == [0.5, 0.999]
    assert cfg.model.g_optim.lr == 2e-4
