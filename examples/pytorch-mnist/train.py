"""A small CNN on MNIST-sized synthetic digits, with TensorBoard logs in ./logs.

The "digits" are generated on the fly (each class a fixed random 28x28 pattern plus
noise), so nothing is downloaded and the network really learns. Run by itself it trains
on one process; under a distributed configuration (``PyTorchConfiguration``: RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT are set) each rank trains on its shard and
gradients are averaged with DistributedDataParallel over gloo.
"""

import argparse
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from prefect_mltrain import Run

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--samples", type=int, default=6000)
parser.add_argument("--lr", type=float, default=0.05)
args = parser.parse_args()

world = int(os.environ.get("WORLD_SIZE", "1"))
rank = int(os.environ.get("RANK", "0"))
if world > 1:
    dist.init_process_group("gloo")
torch.manual_seed(0)
patterns = torch.randn(10, 1, 28, 28)
labels = torch.randint(0, 10, (args.samples,))
images = patterns[labels] + 0.8 * torch.randn(args.samples, 1, 28, 28)
n_test = args.samples // 10  # the last tenth is the test set; each rank trains on its shard
train_x, train_y = images[:-n_test][rank::world], labels[:-n_test][rank::world]
test_x, test_y = images[-n_test:], labels[-n_test:]

model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Flatten(), nn.Linear(16 * 7 * 7, 10))
net = nn.parallel.DistributedDataParallel(model) if world > 1 else model
optimizer = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9)
loss_fn = nn.CrossEntropyLoss()
run = Run.get_context()
writer = SummaryWriter("logs") if rank == 0 else None
step = 0
for epoch in range(args.epochs):
    for i in range(0, len(train_x), 64):
        optimizer.zero_grad()
        loss = loss_fn(net(train_x[i:i + 64]), train_y[i:i + 64])
        loss.backward()
        optimizer.step()
        if writer and step % 10 == 0:
            writer.add_scalar("train/loss", loss.item(), step)
        step += 1
    with torch.no_grad():
        accuracy = (model(test_x).argmax(1) == test_y).float().mean().item()
    if rank == 0:
        run.log("loss", loss.item())
        run.log("accuracy", accuracy)
        writer.add_scalar("test/accuracy", accuracy, epoch)
        print(f"epoch {epoch}: loss={loss.item():.4f} accuracy={accuracy:.3f}", flush=True)
if rank == 0:
    writer.close()
    os.makedirs("outputs", exist_ok=True)
    torch.save(model.state_dict(), "outputs/model.pt")
if world > 1:
    dist.destroy_process_group()
