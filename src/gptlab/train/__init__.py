"""gptlab.train: one training run, from a composed config to a fitted model.

Owns: the run's validated config (run_config.py), the run itself (run.py), the LightningModule (module.py),
optimizers and schedules (optim.py, muon.py), callbacks and the progress bar, TensorBoard extras, the non-finite
guard, precision, FLOPs and MFU, the experiment loggers (loggers.py: building them, their packages, their end), and
process-level settings (host memory, the profiler stand-in).

May import: every package below it (errors, compat, console, config, model, data, interop, checkpoints), Lightning,
Hydra.
Never gptlab.serve, evaluation, sweeps.
"""
