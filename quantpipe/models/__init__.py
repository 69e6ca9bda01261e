"""Model registry: built-in CIFAR ResNets, torchvision models, small trained models, user files."""
