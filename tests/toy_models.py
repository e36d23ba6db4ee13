"""Tiny stand-ins for a 2-class U-Net whose predictions are known: the config attributes predict_tiled reads,
and a forward that thresholds the image."""
import torch


class Threshold(torch.nn.Module):
    """A '2-class model' whose foreground is where the image is above 0.5: logits +-(x - 0.5) * gain. A large
    gain makes it so sure that float32 softmax underflows (log(probability) would be -inf)."""

    depth, padding, in_channels, num_classes, base_channels = 1, "same", 1, 2, 1

    def __init__(self, gain: float = 50.0):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(float(gain)))

    def forward(self, x):
        return torch.cat([0.5 - x, x - 0.5], 1) * self.scale
