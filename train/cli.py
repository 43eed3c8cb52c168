"""`kdeploy train` arguments."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_train_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("train", help="train a recipe's Keras model",
                                 description="Train a recipe and write model.keras, metrics.json and validation.npz.")
    parser.add_argument("--recipe", required=True, help="recipe name (built-in: digits-cnn, tabular-mlp)")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--epochs", type=int, help="default: the recipe's")
    parser.add_argument("--batch-size", type=int, help="default: the recipe's")
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42); same seed, same model")
    parser.add_argument("--val-split", type=float, default=0.2, help="share held out for validation (default 0.2)")
    parser.add_argument("--data", type=Path, help="train on this .npz (arrays x, y) instead of the bundled data")
    parser.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    from kdeploy.train.trainer import TrainConfig, train

    config = TrainConfig(recipe=args.recipe, out_dir=args.out, epochs=args.epochs, batch_size=args.batch_size,
                         seed=args.seed, val_split=args.val_split, data=args.data)
    config.check()
    train(config)
    return 0
