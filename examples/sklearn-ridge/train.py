"""Ridge regression on a synthetic dataset: logs the fit's metrics, saves the model."""

import argparse
import os
import pickle

from sklearn.datasets import make_regression
from sklearn.linear_model import Ridge
from sklearn.metrics import mean_squared_error, r2_score
from sklearn.model_selection import train_test_split

from prefect_mltrain import Run

parser = argparse.ArgumentParser()
parser.add_argument("--alpha", type=float, default=1.0)
parser.add_argument("--samples", type=int, default=2000)
args = parser.parse_args()

run = Run.get_context()
X, y = make_regression(n_samples=args.samples, n_features=20, noise=15.0, random_state=0)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0)
model = Ridge(alpha=args.alpha).fit(X_train, y_train)
predicted = model.predict(X_test)
run.log("alpha", args.alpha)
run.log("mse", mean_squared_error(y_test, predicted))
run.log("r2", r2_score(y_test, predicted))
os.makedirs("outputs", exist_ok=True)
with open("outputs/model.pkl", "wb") as f:
    pickle.dump(model, f)
print(f"alpha={args.alpha} r2={r2_score(y_test, predicted):.4f}")
