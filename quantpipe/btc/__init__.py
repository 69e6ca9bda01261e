"""Block transform coding (BTC): mixed 4/8-bit block quantization of weights."""
