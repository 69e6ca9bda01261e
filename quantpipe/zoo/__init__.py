"""`quantpipe zoo`: every built-in trained model, and the checkpoints a user names, through
export → btc (paper rule and 4.5 effective bits) → ptq (auto) → eval, in one table."""
