"""Demo training script: ridge regression by gradient descent, standard library only.

Logs the loss per epoch, writes the model to ./outputs and a note to ./logs.
"""

import argparse
import json
import random

from prefect_mltrain import Run

parser = argparse.ArgumentParser()
parser.add_argument("--alpha", type=float, default=0.1)
parser.add_argument("--epochs", type=int, default=20)
parser.add_argument("--lr", type=float, default=0.05)
args = parser.parse_args()

run = Run.get_context()
rng = random.Random(0)
xs = [[rng.uniform(-1, 1) for _ in range(3)] for _ in range(200)]
true_w = [1.5, -2.0, 0.5]
ys = [sum(w * x for w, x in zip(true_w, row, strict=True)) + rng.gauss(0, 0.1) for row in xs]

w = [0.0, 0.0, 0.0]
for epoch in range(args.epochs):
    grad = [args.alpha * wi for wi in w]
    mse = 0.0
    for row, y in zip(xs, ys, strict=True):
        err = sum(wi * xi for wi, xi in zip(w, row, strict=True)) - y
        mse += err * err / len(xs)
        for i, xi in enumerate(row):
            grad[i] += 2 * err * xi / len(xs)
    w = [wi - args.lr * gi for wi, gi in zip(w, grad, strict=True)]
    run.log("mse", mse, step=epoch)
    print(f"epoch {epoch:3d}  mse {mse:.4f}")

run.log("alpha", args.alpha)
run.log_list("weights", w)
with open("outputs/model.json", "w") as f:
    json.dump({"weights": w, "alpha": args.alpha}, f)
with open("logs/notes.txt", "w") as f:
    f.write(f"trained {args.epochs} epochs\n")
print("model written to outputs/model.json")
