"""gptlab.sweeps: Hydra multiruns: DDP ranks that join their sweep job (ddp_jobs.py) and the sweep's summary
(report.py, a Hydra callback that runs when a multirun ends).

May import: gptlab.errors, compat, Hydra, TensorBoard's event reader, matplotlib. Never gptlab.train (a sweep's
runs are read back from their folders).
"""
