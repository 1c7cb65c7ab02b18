"""`genlab summary PRESET|RUN_DIR`: each network's layers, output shapes, parameter counts and
multiply-adds for one image (what seed 002 printed with torchsummary), from torchinfo, with the
example inputs the family declares (``Method.example_inputs``: an image, a latent, a timestep)."""

from __future__ import annotations

import torch
from torchinfo import summary


def summarize(method, depth: int = 3) -> tuple[str, dict]:
    """The text of every network's torchinfo summary, and per network its parameters and
    multiply-adds per image."""
    texts, numbers = [], {}
    inputs = method.example_inputs()
    with method.evaluating(), torch.no_grad():
        for name, net in method.networks().items():
            stats = summary(net, input_data=list(inputs[name]), depth=depth, verbose=0, device=method.device,
                            col_names=("output_size", "num_params", "mult_adds"), row_settings=("var_names",))
            shapes = ", ".join("x".join(map(str, t.shape)) + ("" if t.is_floating_point() else f" {t.dtype}")
                               for t in inputs[name])
            texts.append(f"{name}  (input {shapes})\n{stats}")
            numbers[name] = {"parameters": int(stats.total_params), "trainable": int(stats.trainable_params),
                             "mult_adds_per_image": int(stats.total_mult_adds), "input": shapes}
    return "\n\n".join(texts), numbers
