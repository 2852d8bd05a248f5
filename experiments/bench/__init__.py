"""Speed tables: ``python -m experiments.bench <name> [flags]`` (``--help`` lists them).

One module per benchmark, each with its protocol in its docstring and its own ``--help``:

* :mod:`~experiments.bench.ops`: ``conv_reference`` vs lax conv vs four numpy loops, one layer;
* :mod:`~experiments.bench.train`: train/eval images/s through the real training path, compile
  time, input pipeline, peak RSS, Keras and PyTorch baselines (:mod:`~experiments.bench.baselines`);
* :mod:`~experiments.bench.layers`: where a train step's milliseconds go, conv shape by conv
  shape and part by part (:mod:`~experiments.bench.layers_trace`,
  :mod:`~experiments.bench.layers_timing`);
* :mod:`~experiments.bench.host`: how much of a train step is host work.

:mod:`~experiments.bench.common` holds what they share (timers, flags, the training-path case);
``__main__`` only dispatches. Measured results, each with its command and machine:
``visuals/bench/README.md``.
"""
