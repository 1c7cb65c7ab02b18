import pytest

from genlab.config import apply_overrides, config_to_yaml, load_config, load_preset, preset_names, resolve_config
from genlab.errors import GenlabError
from genlab.methods.gan import GANConfig
from genlab.methods.vae import VAEConfig


def test_every_shipped_preset_resolves():
    names = preset_names()
    assert {"quickstart", "tiny-vae", "tiny-dcgan", "vae-ck-seed001", "vae-celeba64-seed002",
            "dcgan-celeba64", "dcgan-ck-seed001"} <= set(names)
    for name in names:
        cfg = load_config(name)
        assert cfg.name == name
        assert isinstance(cfg.model, VAEConfig if cfg.method == "vae" else GANConfig)
        assert load_preset(name)["description"]


def test_seed_presets_carry_the_reported_settings():
    ck = load_config("vae-ck-seed001")
    assert (ck.train.batch_size, ck.model.lr, ck.model.kl_weight, ck.model.weight_decay, ck.model.dropout) == (
        2500, 5e-4, 0.01, 1e-5, 0.2)
    assert (ck.data.size, ck.data.channels) == (64, 1)
    celeba = load_config("vae-celeba64-seed002")
    assert (celeba.model.latent_dim, celeba.model.lr, celeba.model.kl_weight, celeba.model.activation,
            celeba.train.batch_size) == (128, 5e-3, 0.00025, "leaky_relu", 128)
    gan = load_config("dcgan-ck-seed001")
    assert (gan.model.d_dropout, gan.model.betas[0], gan.model.latent_dim) == (0.1, 0.5, 100)


def test_overrides_are_typed():
    cfg = load_config("tiny-vae", ["train.epochs=7", "model.lr=5e-4", "model.widths=[4, 8]", "data.limit=null"])
    assert cfg.train.epochs == 7 and isinstance(cfg.train.epochs, int)
    assert cfg.model.lr == 5e-4 and isinstance(cfg.model.lr, float)
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
     ("model.lr=fast", "model.lr"), ("train.batch_size=true", "train.batch_size"),
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
