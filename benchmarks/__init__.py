"""lmscope's benchmarks, as a package: the suite that compares lmscope with Hugging Face
transformers, TransformerLens and nnsight (`python benchmarks/run.py` or `python -m benchmarks.run`),
and the single-purpose scripts beside it (big_load, harvest, hook_overhead, gpu_hooks, ...).

The suite's modules, from the bottom up:

- `spec`: what is compared (tools, models, workloads, labels, paths, `Settings`);
- `checkpoints`: each model written once as an offline Hugging Face hub cache;
- `timing`: the round-robin timing core; `probes`: RSS, machine description, cache bytes;
- `adapters/`: one module per tool (`hf`, `lmscope`, `tl3`, `tl4`, `nnsight`), each running every
  workload and owning its loads;
- `loads`: loads timed in fresh subprocesses; `worker`: one tool on one model, checked and timed;
- `orchestrate`: worker subprocesses in each tool's venv, results merged; `render`: docs/benchmarks.md;
- `run`: the command line.

Nothing is imported here, so a script of the package starts with only what it uses.
"""
