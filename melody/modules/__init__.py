"""Reusable blocks, apart from the stage models that assemble them (audiocraft's `modules/`)."""


def device_of(module) -> "torch.device":
    """Where a module's tensors live: its first parameter's device, else its first buffer's (a model whose weights stay
    outside it, e.g. a user's CLAP or HuBERT behind a fitted codebook, has buffers only), else the CPU."""
    import torch

    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")

