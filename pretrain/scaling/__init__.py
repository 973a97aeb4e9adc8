"""Scaling laws from run logs: Kaplan and Chinchilla fits (laws), IsoFLOP sweeps (sweep), the critical batch
size (bcrit), learning-rate and batch-size laws (hparams), and their figures (plots)."""
