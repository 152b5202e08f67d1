"""Top-1 accuracy of the CIFAR-10 ResNets on the shared test set."""
import numpy as np
import torch
from tqdm import tqdm

from lowbit.data import data_file
from lowbit.models.resnet_cifar import load_resnet_cifar

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
CHECKPOINTS = {20: "resnet20-12fca82f.th", 56: "resnet56-4bfd9763.th"}


def load_resnet(depth):
    return load_resnet_cifar(data_file("models", CHECKPOINTS[depth]), depth)


def test_set(limit=None):
    with np.load(data_file("images", "cifar10_test.npz")) as d:
        x, y = d["x"], d["y"]
    if limit is not None:
        x, y = x[:limit], y[:limit]
    x = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0
    return (x - MEAN) / STD, torch.from_numpy(y.astype(np.int64))


def batches(x, y, size=500):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


@torch.no_grad()
def top1(model, data, progress=False, desc="top-1"):
    correct = total = 0
    for xb, yb in tqdm(data, desc=desc, disable=not progress, leave=False):
        correct += int((model(xb).argmax(1) == yb).sum())
        total += len(yb)
    return 100.0 * correct / total
