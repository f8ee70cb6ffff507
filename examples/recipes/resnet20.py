"""ResNet-20 for 32x32 colour images such as CIFAR-10 (He et al., 2016, section 4.2).

Three stages of three basic blocks (16, 32 and 64 channels), identity shortcuts that
subsample and zero-pad where the shape changes (option A), global average pooling:
about 0.27 million parameters. Trained with SGD and Nesterov momentum, weight decay on
the convolution and linear weights only, a cosine learning-rate decay, random crops with
4-pixel padding and horizontal flips, and label smoothing.
"""

import torch
import torch.nn.functional as F
from torch import nn

HYPERPARAMETERS = {
    "epochs": 30,
    "batch_size": 128,
    "optimizer": "sgd",
    "lr": 0.1,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 5e-4,
    "label_smoothing": 0.1,
    "lr_schedule": "cosine",
}

QUERY_POLICY = {"output": "label", "budget": 1_000_000}


class BasicBlock(nn.Module):
    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.stride = stride
        self.extra_channels = out_channels - in_channels

    def shortcut(self, x):
        if self.stride == 1 and self.extra_channels == 0:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        half = self.extra_channels // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra_channels - half))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    def __init__(self, in_channels, num_classes, blocks_per_stage=3):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        layers, channels = [], 16
        for stage, width in enumerate((16, 32, 64)):
            for block in range(blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(BasicBlock(channels, width, stride))
                channels = width
        self.blocks = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        x = self.blocks(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def build_model(schema):
    channels = schema.input_shape[0]
    return ResNet20(channels, schema.num_classes)


def configure_optimizer(model, hp):
    # No weight decay on batch-norm parameters and biases (the 1-dimensional ones).
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    return torch.optim.SGD(
        [
            {"params": decay, "weight_decay": hp["weight_decay"]},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=hp["lr"],
        momentum=hp["momentum"],
        nesterov=hp["nesterov"],
    )


def augment(x):
    # Random 32x32 crops of the image padded by 4 pixels, then a random horizontal flip.
    # Drawn from torch's generator, which the loop seeds and checkpoints.
    batch, _, height, width = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    top = torch.randint(0, 9, (batch, 1, 1))
    left = torch.randint(0, 9, (batch, 1, 1))
    rows = top + torch.arange(height).view(1, height, 1)
    cols = left + torch.arange(width).view(1, 1, width)
    index = torch.arange(batch).view(batch, 1, 1)
    crops = padded.permute(0, 2, 3, 1)[index, rows, cols].permute(0, 3, 1, 2)
    flip = torch.rand(batch) < 0.5
    return torch.where(flip.view(batch, 1, 1, 1), crops.flip(3), crops).contiguous()


def train_step(model, optimizer, x, y, hp):
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y, label_smoothing=hp["label_smoothing"])
    loss.backward()
    optimizer.step()
    return loss.detach()
