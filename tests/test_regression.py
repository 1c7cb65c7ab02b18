"""Stored-output regression slices: a seeded tiny model of each family, trained for two epochs
through the loop, must keep giving these numbers. They were recorded before the method contract
was rebuilt (step helper, samplers, EMA, registries) and still hold after it, so that refactor
changed no behaviour; a later change that moves them must say why in its commit.

Tolerances allow for float32 summation order on other CPUs, not for a changed algorithm."""

import json

import pytest
import torch

from genlab.api import train as start_training
from genlab.resolve import load_config
from genlab.train.checkpoint import build_method_from_checkpoint

CPU = torch.device("cpu")

EXPECTED = {
    "tiny-vae": {
        "last_train": {"step": 10, "loss": 0.8739567995071411, "recon": 0.7115797400474548, "kl": 0.16237707436084747},
        # validation is half of the held-out images since the report split was carved out of it (issue 30);
        # the training numbers above did not move
        "val": [{"val_loss": 0.6787729859352112, "val_recon": 0.6635273098945618, "val_kl": 0.015245604328811169},
                {"val_loss": 0.665597677230835, "val_recon": 0.6430341005325317, "val_kl": 0.022563600912690163}],
        "generate_mean": -0.04439001902937889, "generate_std": 0.1470770239830017,
        "generate_slice": [0.3039070665836334, -0.14707420766353607, -0.15907317399978638, -0.44402170181274414],
    },
    "tiny-dcgan": {
        "last_train": {"step": 12, "loss_d": 1.1929579973220825, "loss_g": 0.6601938009262085,
                       "d_real": 0.6313291788101196, "d_fake": 0.5186554193496704},
        "val": [{}, {}],
        "generate_mean": -0.00024613304412923753, "generate_std": 0.0011699364986270666,
        "generate_slice": [0.003177524544298649, -0.0008382931700907648, 0.0006997928721830249, -0.002458951435983181],
    },
}


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_a_seeded_tiny_model_gives_the_stored_numbers(tmp_path, preset):
    expected = EXPECTED[preset]
    run = start_training(load_config(preset, ["train.epochs=2"]), tmp_path, CPU, quiet=True)
    records = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    last = [r for r in records if r["kind"] == "train"][-1]
    assert last["step"] == expected["last_train"]["step"]
    for key, value in expected["last_train"].items():
        assert last[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    val = [{k: v for k, v in r.items() if k.startswith("val_")} for r in records if r["kind"] == "epoch"]
    assert len(val) == len(expected["val"])
    for got, want in zip(val, expected["val"]):
        assert got == pytest.approx(want, rel=1e-5)
    method, _, _ = build_method_from_checkpoint(run / "checkpoints" / "last.pt", CPU)
    method.eval()
    z = torch.randn(4, *method.latent_shape(), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        images = method.generate(z)
    assert images.mean().item() == pytest.approx(expected["generate_mean"], rel=1e-4, abs=1e-7)
    assert images.std().item() == pytest.approx(expected["generate_std"], rel=1e-4)
    torch.testing.assert_close(images.flatten()[100:104], torch.tensor(expected["generate_slice"]), rtol=1e-4, atol=1e-6)
