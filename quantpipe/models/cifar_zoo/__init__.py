"""The chenyaofo/pytorch-cifar-models zoo's CIFAR-10/100 layouts (the BTC paper's models)."""
